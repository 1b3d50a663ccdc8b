"""Bad input, one case per test: each gives one line (no traceback) and loses nothing.

Every run-level case starts from a finished one-epoch experiment and re-runs train.py on it
with one thing wrong; it must exit 1 with a single ``error: ...`` line on stderr, and every
file the experiment folder held before is still there, unchanged (SpeechBrain's per-start
records aside, see ``recipe_runs.assert_nothing_lost``). Cases with other data run in a copy
of that folder without its checkpoints (a run stopped before its first checkpoint): in the
finished folder itself, other data is refused before it is looked at
(``test_bad_input_more``).
"""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import sine, write_manifest
from recipe_runs import (
    assert_nothing_lost,
    copy_experiment,
    file_hashes,
    make_corpus,
    one_line_error,
    recipe_args,
    run_forked,
)

from whisper_finetuning.data import manifests as dataio
from whisper_finetuning.data.audio import read_audio
from whisper_finetuning.model.asr import WhisperASR
from whisper_finetuning.training.config import HparamsError, load_hparams


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, random_whisper_dir):
    """A finished one-epoch run; its corpus has stereo 44.1 kHz, 8 kHz and 48 kHz files."""
    root = tmp_path_factory.mktemp("bad_input")
    corpus = make_corpus(root / "corpus")
    args = recipe_args(random_whisper_dir, corpus, root / "exp", root / "cache", epochs=1)
    code, stderr = run_forked(args)
    assert code == 0, stderr[-3000:]
    return args, root / "exp", corpus


@pytest.fixture(scope="module")
def unstarted(experiment, tmp_path_factory):
    """The finished experiment's folder without its checkpoints."""
    return copy_experiment(experiment[1], tmp_path_factory.mktemp("unstarted") / "exp")


def fails_cleanly(experiment, *changes, folder=None):
    """Re-run the experiment (in ``folder`` if given) with ``changes`` (``--key=value``);
    returns the error line."""
    args, exp, _ = experiment
    if folder is not None:
        exp, changes = folder, (*changes, f"--output_folder={folder}")
    keys = {change.split("=", 1)[0] for change in changes}
    before = file_hashes(exp)
    code, stderr = run_forked([a for a in args if a.split("=", 1)[0] not in keys] + [*changes])
    assert code == 1, stderr[-3000:]
    message = one_line_error(stderr)
    assert_nothing_lost(before, exp)
    return message


def with_bad_row(experiment, unstarted, tmp_path, wav, text="hello there"):
    """The training manifest plus one row ``bad``; returns (data checks' line, the row's line).

    With ``data_checks: error`` (the default) the data checks stop the run first; with
    ``--data_checks=warn`` and ``--on_bad_row=error`` the recipe names the row.
    """
    _, exp, corpus = experiment
    train = dataio.load_manifest(corpus["train"], corpus["train"].parent).data
    rows = [{"ID": utt_id, **row} for utt_id, row in list(train.items())[:2]]
    rows.append({"ID": "bad", "duration": 1.0, "wav": wav, "spk_id": "s9", "wrd": text})
    manifest = write_manifest(tmp_path / "bad.csv", rows)
    checks = fails_cleanly(
        experiment, f"--train_csv={manifest}", "--on_bad_row=error", folder=unstarted
    )
    row = fails_cleanly(
        experiment,
        f"--train_csv={manifest}",
        "--on_bad_row=error",
        "--data_checks=warn",
        folder=unstarted,
    )
    return checks, row


def checks_error(folder, first):
    """The data checks' line when ``first`` is their first error."""
    report = folder / "data_report.md"
    return f"error: data checks found {{}} error(s), first: {first}; see {report} " + (
        "(--data_checks=warn to train anyway)"
    )


def assert_row_refused(folder, messages, wav, check, why):
    checks, row = messages
    assert checks in {checks_error(folder, check).format(n) for n in (1, 2)}
    assert row == (
        f"error: train: row bad ({wav}): {why} (1 bad rows; set on_bad_row=skip to skip them)"
    )


def test_missing_audio(experiment, unstarted, tmp_path):
    wav = tmp_path / "absent.wav"
    messages = with_bad_row(experiment, unstarted, tmp_path, wav)
    unreadable = "1 rows have missing, empty or unreadable audio"
    assert_row_refused(unstarted, messages, wav, unreadable, "missing or unreadable audio")


def test_corrupt_audio(experiment, unstarted, tmp_path):
    wav = tmp_path / "corrupt.wav"
    wav.write_bytes(b"RIFF not really a wav")
    messages = with_bad_row(experiment, unstarted, tmp_path, wav)
    unreadable = "1 rows have missing, empty or unreadable audio"
    assert_row_refused(unstarted, messages, wav, unreadable, "missing or unreadable audio")


def test_empty_audio(experiment, unstarted, tmp_path):
    wav = tmp_path / "empty.wav"
    sf.write(wav, np.zeros(0, dtype=np.float32), 16000)
    messages = with_bad_row(experiment, unstarted, tmp_path, wav)
    unreadable = "1 rows have missing, empty or unreadable audio"
    assert_row_refused(unstarted, messages, wav, unreadable, "empty audio")


def test_over_long_label(experiment, unstarted, tmp_path):
    wav = sine(tmp_path / "a.wav", 1.0)
    messages = with_bad_row(experiment, unstarted, tmp_path, wav, "word " * 500)
    check = (
        "1 transcripts need more than the decoder's 448 positions; they cannot be trained on "
        "without truncation"
    )
    why = "label of 503 tokens exceeds the decoder's 448"
    assert_row_refused(unstarted, messages, wav, check, why)


def test_audio_over_30_seconds(experiment, unstarted, tmp_path):
    wav = sine(tmp_path / "long.wav", 31.0)
    messages = with_bad_row(experiment, unstarted, tmp_path, wav)
    check = (
        "1 rows have audio over Whisper's 30 s window: training and validation need clips of "
        "at most 30 s (a test set's longer rows are decoded long-form)"
    )
    assert_row_refused(
        unstarted, messages, wav, check, "audio of 31.0 s exceeds Whisper's 30 s window"
    )


def test_stereo_and_other_rates_are_converted_and_train(experiment):
    _, exp, corpus = experiment
    # u0 is stereo 44.1 kHz, u1 8 kHz, u2 48 kHz (recipe_runs.make_corpus): no message, trained.
    trained = {json.loads(line)["id"] for line in (exp / "log" / "train_utterances.jsonl").open()}
    assert {"u0", "u1", "u2"} <= trained
    assert sf.info(str(corpus["train"].parent / "u0.wav")).channels == 2


@pytest.mark.parametrize("rate, channels", [(8000, 1), (44100, 2), (48000, 1), (16000, 2)])
def test_audio_is_read_as_16k_mono(tmp_path, rate, channels):
    wav = read_audio(sine(tmp_path / "a.wav", 0.5, rate=rate, channels=channels))
    assert wav.dim() == 1 and abs(len(wav) - 8000) <= 1
    reference = read_audio(sine(tmp_path / "ref.wav", 0.5))
    n = min(len(wav), len(reference))
    # Same tone after resampling: the spectra peak at the same frequency bin.
    assert torch.fft.rfft(wav[:n]).abs().argmax() == torch.fft.rfft(reference[:n]).abs().argmax()


def test_manifest_missing_a_column(experiment, unstarted, tmp_path):
    path = write_manifest(tmp_path / "m.csv", [], columns=("ID", "duration", "wav"))
    message = fails_cleanly(experiment, f"--train_csv={path}", folder=unstarted)
    first = f"train: manifest {path} lacks column(s) wrd"
    assert message == checks_error(unstarted, first).format(1)
    message = fails_cleanly(
        experiment, f"--train_csv={path}", "--data_checks=off", folder=unstarted
    )
    assert message == f"error: manifest {path} lacks column(s) wrd"


def test_unreadable_manifest(experiment, unstarted, tmp_path):
    message = fails_cleanly(experiment, f"--valid_csv={tmp_path}", folder=unstarted)
    first = f"valid: cannot read manifest {tmp_path}: Is a directory"
    assert message == checks_error(unstarted, first).format(1)
    message = fails_cleanly(
        experiment, f"--valid_csv={tmp_path}", "--data_checks=off", folder=unstarted
    )
    assert message == f"error: cannot read manifest {tmp_path}: Is a directory"


def test_missing_long_form_manifest_is_refused_before_training(experiment, unstarted, tmp_path):
    missing = tmp_path / "longform_test.csv"
    message = fails_cleanly(
        experiment, f"--longform_test_csv=[{missing}]", "--data_checks=off", folder=unstarted
    )
    assert message == (
        f"error: long-form test set: cannot read manifest {missing}: No such file or directory"
    )


def test_unknown_hyperparameter(experiment):
    message = fails_cleanly(experiment, "--learning_rate=0.1")
    assert message == (
        "error: unknown hyperparameter 'learning_rate': hparams/whisper_small.yaml has no such key"
    )


def malformed_copy(folder):
    """The main yaml with its learning rate's list left open."""
    bad = folder / "bad.yaml"
    bad.write_text(
        Path("hparams/whisper_small.yaml").read_text().replace("lr: 0.00001", "lr: [1, 2")
    )
    return bad


def test_a_key_given_twice(experiment):
    message = fails_cleanly(experiment, "--lr=0.0001", "--lr=0.00001")
    assert message == "error: command-line overrides: 'lr' is given twice"


def test_malformed_yaml(experiment, tmp_path):
    bad = malformed_copy(tmp_path)
    args, exp, _ = experiment
    before = file_hashes(exp)
    code, stderr = run_forked([bad, *args[1:]])
    assert code == 1
    assert one_line_error(stderr).startswith(f"error: {bad}: malformed YAML: ")
    assert_nothing_lost(before, exp)


def test_fp16_on_cpu_and_a_missing_model(experiment):
    message = fails_cleanly(experiment, "--precision=fp16")
    assert message == "error: precision fp16 needs a CUDA GPU; use --precision=bf16 or fp32 on CPU"
    message = fails_cleanly(experiment, "--whisper_hub=/no/such/model")
    assert message == (
        "error: whisper_hub must be bundled:tiny.en, bundled:base, a Hugging Face Hub name or a "
        "local model folder, not '/no/such/model' (no such folder)"
    )


@pytest.mark.slow
def test_8bit_adamw_on_cpu_and_an_adapter_with_trainable_patterns(experiment):
    message = fails_cleanly(experiment, "--adamw_8bit=True")
    assert message == (
        "error: adamw_8bit needs a CUDA GPU (bitsandbytes); set adamw_8bit: False on CPU"
    )
    message = fails_cleanly(experiment, "--adapter=lora", "--trainable_patterns=[encoder_attn]")
    assert message == (
        "error: with an adapter only adapter weights train: keep trainable_patterns: [], "
        "trainable_encoder_layers: 0 and freeze_encoder: True"
    )


def test_checkpoint_folder_of_another_model(experiment, random_multilingual_dir, tmp_path):
    _, exp, _ = experiment
    other_model = (f"--whisper_hub={random_multilingual_dir}", "--language=german")
    message = fails_cleanly(experiment, *other_model)
    assert message == (
        f"error: {exp} holds a checkpoint of a run with whisper_hub: "
        f'"{experiment[0][1].split("=", 1)[1]}", not "{random_multilingual_dir}" (run.json); '
        "use a new --output_folder (with "
        f"--init_from={exp} to start from its checkpoint)"
    )
    # A folder whose run.json predates the recorded settings: the checkpoint itself misfits.
    older = copy_experiment(exp, tmp_path / "exp", without=("run.json",))
    (checkpoint,) = (older / "save").glob("CKPT+*")
    message = fails_cleanly(experiment, *other_model, folder=older)
    assert message == (
        f"error: cannot resume from {checkpoint}: checkpoint {checkpoint / 'whisper.ckpt'} does "
        "not fit this model (e.g. model.decoder.embed_tokens.weight); it belongs to another "
        "model or run: use another output_folder or move it away"
    )


# ------------------------------------------------- the same checks, as library calls ------


def test_unknown_key_and_malformed_yaml_raise_hparams_errors(tmp_path):
    with pytest.raises(HparamsError, match="unknown hyperparameter 'lrr'"):
        load_hparams("hparams/whisper_small.yaml", "lrr: 0.1\ndata_folder: x")
    with pytest.raises(HparamsError, match="malformed YAML"):
        load_hparams(malformed_copy(tmp_path), "data_folder: x")
    with pytest.raises(HparamsError, match="hyperparameter file not found"):
        load_hparams(tmp_path / "nowhere.yaml")


@pytest.fixture(scope="module")
def model(random_whisper_dir):
    return WhisperASR(str(random_whisper_dir))


@pytest.fixture
def bad_rows(tmp_path):
    """One good row and one row per kind of problem."""
    rows = [
        {"ID": "good", "wav": sine(tmp_path / "good.wav", 1.0), "wrd": "hello there"},
        {"ID": "missing", "wav": tmp_path / "absent.wav", "wrd": "hello"},
        {"ID": "nonspeech", "wav": sine(tmp_path / "e.wav", 1.0), "wrd": "   "},
        {"ID": "long_label", "wav": sine(tmp_path / "l.wav", 1.0), "wrd": "word " * 500},
        {"ID": "long_audio", "wav": sine(tmp_path / "la.wav", 31.0), "wrd": "too long"},
        {"ID": "corrupt", "wav": tmp_path / "corrupt.wav", "wrd": "hello"},
    ]
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF not really a wav")
    for row in rows:
        row["duration"] = 1.0
    return write_manifest(tmp_path / "rows.csv", rows)


def test_bad_rows_are_skipped_with_counted_reasons(bad_rows, model, caplog):
    dataset = dataio.load_manifest(bad_rows, bad_rows.parent)
    with caplog.at_level(logging.WARNING):
        kept = dataio.check_rows(dataset, "train", model, "skip")
    assert kept.data_ids == ["good", "nonspeech"]  # an empty transcript: a non-speech row
    log = caplog.text
    assert "skipped 2 row(s) with missing or unreadable audio" in log
    assert "transcript" not in log
    assert "exceeds the decoder's 448" in log
    assert "exceeds Whisper's 30 s window" in log
