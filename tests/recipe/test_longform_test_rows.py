"""A test set's rows over 30 s are decoded long-form, not refused: each equals longform.py's
decoding of its audio alone, the shorter rows equal the batched test search's output, and all
are scored together (``n_longform``); train and valid still skip audio over 30 s. Tiny random
Whisper, espeak-ng speech."""

import json
import logging

import numpy as np
import pytest
import soundfile as sf
from conftest import read_jsonl, sine, write_manifest
from recipe_runs import (
    SENTENCES,
    make_brain,
    make_corpus,
    manifest_hparams,
    recipe_args,
    run_forked,
)

from whisper_finetuning.data import checks
from whisper_finetuning.data import manifests as dataio
from whisper_finetuning.data.audio import read_audio
from whisper_finetuning.decoding import longform
from whisper_finetuning.training import runs

LONG_SECONDS = 35.0


def long_speech(folder, name, order):
    """A recording of the corpus's sentences in ``order`` with 1 s pauses, cut to 35 s."""
    gap = np.zeros(16000, dtype=np.float32)
    clips = [read_audio(folder / f"u{i}.wav").numpy() for i in order]
    audio = np.concatenate([part for clip in clips for part in (clip, gap)] * 3)
    sf.write(folder / f"{name}.wav", audio[: int(LONG_SECONDS * 16000)], 16000)
    return folder / f"{name}.wav"


def row(utt_id, wav, text, seconds=LONG_SECONDS):
    """A manifest row of a speaker every split has (the corpus is split by sentence)."""
    return {"ID": utt_id, "duration": seconds, "wav": wav, "spk_id": "s0", "wrd": text}


def with_rows(manifest, path, *rows):
    """A copy of ``manifest`` at ``path`` with ``rows`` appended."""
    kept = dataio.load_manifest(manifest, manifest.parent).data
    return write_manifest(path, [{"ID": u, **r} for u, r in kept.items()] + list(rows))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The recipe corpus with a 35 s row in train and valid (a tone), and in test a 35 s
    recording of sentences and a 33 s silent non-speech row; a test set of one long row."""
    folder = tmp_path_factory.mktemp("corpus")
    plain = make_corpus(folder)
    long_test = long_speech(folder, "test_long", range(len(SENTENCES)))
    silence = folder / "test_silence.wav"
    sf.write(silence, np.zeros(33 * 16000, dtype=np.float32), 16000)
    (folder / "with_long").mkdir()
    return {
        "plain": plain,
        "train": with_rows(
            plain["train"],
            folder / "with_long" / "train.csv",
            row("train_long", sine(folder / "train_long.wav", LONG_SECONDS), "a tone to train on"),
        ),
        "valid": with_rows(
            plain["valid"],
            folder / "with_long" / "valid.csv",
            row("valid_long", sine(folder / "valid_long.wav", 34.0), "a tone to check", 34.0),
        ),
        "test": with_rows(
            plain["test"],
            folder / "with_long" / "test.csv",
            row("test_long", long_test, " ".join(SENTENCES)),
            row("test_silence", silence, "", 33.0),
        ),
        "only_long": write_manifest(
            folder / "only_long.csv",
            [row("only_long", long_speech(folder, "only_long", range(14, -1, -1)), "backwards")],
        ),
    }


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, random_whisper_dir, corpus):
    """A one-epoch run with zero-shot decoding of both test sets (no encoder cache: the
    references below decode from the audio)."""
    root = tmp_path_factory.mktemp("longform_rows")
    manifests = {name: corpus[name] for name in ("train", "valid", "test")}
    args = recipe_args(random_whisper_dir, manifests, root / "exp", root / "cache", epochs=1)
    args = [a for a in args if not a.startswith("--test_csv=")]
    args += [
        f"--test_csv=[{corpus['test']},{corpus['only_long']}]",
        "--zero_shot_eval=True",
        "--encoder_cache=False",
    ]
    code, stderr = run_forked(args)
    assert code == 0, stderr[-3000:]
    return root / "exp"


def test_train_and_valid_skip_audio_over_30_s_and_the_report_says_why(experiment):
    log = (experiment / "log.txt").read_text()
    for split, seconds in (("train", 35.0), ("valid", 34.0)):
        assert (
            f"{split}: skipped 1 row(s) with audio of {seconds} s exceeds Whisper's 30 s "
            f"window (e.g. {split}_long)"
        ) in log
    findings = {f["kind"]: f for f in json.loads((experiment / "data_report.json").read_text())[
        "findings"
    ]}  # fmt: skip
    too_long = findings["audio_too_long"]
    assert (too_long["severity"], too_long["n_rows"]) == ("error", 2)
    assert [(r["split"], r["id"]) for r in too_long["rows"]] == [
        ("train", "train_long"),
        ("valid", "valid_long"),
    ]
    assert "training and validation need clips of at most 30 s" in too_long["message"]
    test_rows = findings["longform_test_rows"]
    assert test_rows["severity"] == "info"
    assert [(r["split"], r["id"], r["value"]) for r in test_rows["rows"]] == [
        ("test", "test_long", 35.0),
        ("test", "test_silence", 33.0),
        ("only_long", "only_long", 35.0),
    ]
    trained = {line["id"] for line in read_jsonl(experiment / "log" / "train_utterances.jsonl")}
    assert "train_long" not in trained and len(trained) == 8


def test_test_rows_over_30_s_are_decoded_long_form_and_scored_with_the_rest(
    experiment, random_whisper_dir, corpus, tmp_path
):
    hparams = manifest_hparams(
        random_whisper_dir,
        {**corpus["plain"], "test": corpus["plain"]["test"]},  # the short test rows alone
        tmp_path / "exp",
        decode_max_tokens=8,
        test_beam_size=2,
        test_batch_size=2,
    )  # the run's settings (recipe_args), its model as it came: zero-shot
    whisper = hparams["whisper"]
    test = dataio.resolve_languages(
        dataio.load_manifest(corpus["test"], corpus["test"].parent), "test", whisper
    ).data
    only_long = dataio.resolve_languages(
        dataio.load_manifest(corpus["only_long"], corpus["test"].parent), "only_long", whisper
    ).data
    settings = longform.settings(hparams)

    def alone(row):
        """longform.py's decoding of one recording alone: its transcript and segments."""
        ((hypothesis, extra),) = longform.decode_rows(whisper, [row], **settings)
        return longform.hypothesis_text(hypothesis), extra["segments"], extra["windows"]

    zero_shot = experiment / "zero_shot"
    summary = json.loads((zero_shot / "summary_test.json").read_text())
    assert summary["n_longform"] == 2  # the speech row and the non-speech one
    assert summary["n_utterances"] == 3 and summary["nonspeech"]["n"] == 1
    scored = {u["id"]: u for u in read_jsonl(zero_shot / "utterances_test.jsonl")}
    assert set(scored) == {"u13", "u14", "test_long"}
    long_row = scored["test_long"]
    assert long_row["longform"] is True and long_row["windows"] >= 2  # 35 s: two windows
    assert (long_row["hyp"], long_row["segments"], long_row["windows"]) == alone(test["test_long"])
    (silent,) = read_jsonl(zero_shot / "nonspeech_test.jsonl")
    assert silent["id"] == "test_silence" and silent["longform"] is True
    assert (silent["hyp"], silent["segments"], silent["windows"]) == alone(test["test_silence"])
    # The short rows: what the batched test search gives without the long rows.
    datasets = checks.before_training(
        {**hparams, "data_checks": "off"},
        whisper,
        {"train": corpus["plain"]["train"], "test": corpus["plain"]["test"]},
        None,
        "skip",
    )
    import train

    datasets, _, _ = train.dataio_prepare(hparams, datasets, whisper)
    brain = make_brain(hparams, checkpointer=None)
    folder = tmp_path / "short_only"
    loader_kwargs = hparams["test_loader_kwargs"]
    runs.decode_test_sets(brain, {"test": datasets["test"]}, hparams, str(folder), loader_kwargs)
    short = read_jsonl(folder / "utterances_test.jsonl")
    assert [(u["id"], u["hyp"]) for u in short] == [(i, scored[i]["hyp"]) for i in ("u13", "u14")]
    assert all("longform" not in scored[i] for i in ("u13", "u14"))
    # One WER over all three speech rows: the short rows' and the long row's word errors.
    errors = sum(scored[i]["word_errors"] for i in scored)
    words = sum(scored[i]["words"] for i in scored)
    assert summary["wer"] == pytest.approx(100 * errors / words)
    # A test set of long rows only: nothing for the batched search, its row long-form.
    summary = json.loads((zero_shot / "summary_only_long.json").read_text())
    assert (summary["n_utterances"], summary["n_longform"]) == (1, 1)
    (backwards,) = read_jsonl(zero_shot / "utterances_only_long.jsonl")
    assert (backwards["hyp"], backwards["segments"], backwards["windows"]) == alone(
        only_long["only_long"]
    )
    # The fine-tuned pass decodes them the same way, with the kept checkpoint.
    fine_tuned = json.loads((experiment / "summary_test.json").read_text())
    assert fine_tuned["n_longform"] == 2 and fine_tuned["n_utterances"] == 3
    assert read_jsonl(experiment / "utterances_test.jsonl")[-1]["id"] == "test_long"


def test_check_rows_keeps_a_test_set_s_long_rows_and_skips_train_s(
    corpus, random_whisper_dir, caplog
):
    from whisper_finetuning.model.asr import WhisperASR

    model = WhisperASR(str(random_whisper_dir))
    for name, manifest, long_id in (
        ("train", corpus["train"], "train_long"),
        ("test", corpus["test"], "test_long"),
    ):
        dataset = dataio.load_manifest(manifest, manifest.parent)
        with caplog.at_level(logging.WARNING):
            kept = dataio.check_rows(dataset, name, model, "skip")
        assert (long_id in kept.data_ids) == (name == "test")
    assert caplog.text.count("skipped 1 row(s) with audio of 35.0 s") == 1
    with pytest.raises(dataio.DataError, match="row train_long .*: audio of 35.0 s exceeds"):
        dataio.check_rows(
            dataio.load_manifest(corpus["train"], corpus["train"].parent), "train", model, "error"
        )
    # A test row over 30 s may hold more than the decoder's 448 positions; a short one may not.
    words = "word " * 500
    lengthy = write_manifest(
        corpus["test"].parent / "lengthy.csv",
        [
            row("lengthy_long", corpus["only_long"].parent / "only_long.wav", words),
            row("lengthy_short", corpus["only_long"].parent / "u0.wav", words, 2.0),
        ],
    )
    kept = dataio.check_rows(dataio.load_manifest(lengthy, lengthy.parent), "test", model, "skip")
    assert kept.data_ids == ["lengthy_long"]
    datasets, taken = dataio.split_longform(
        {
            "train": dataio.load_manifest(corpus["plain"]["train"], corpus["train"].parent),
            "test": dataio.load_manifest(corpus["test"], corpus["test"].parent),
        }
    )
    assert {name: list(rows) for name, rows in taken.items()} == {
        "test": ["test_long", "test_silence"]
    }
    assert datasets["test"].data_ids == ["u13", "u14"]
