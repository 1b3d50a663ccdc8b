"""More bad input, one case per test: every setting checked before any work, non-finite and
silent audio, references with no word, reruns on other data or settings, exports of an
unvalidated checkpoint, manifest format problems.

Each case asserts the exact ``error: ...`` line (or the counted skip with the row's ID) and
that nothing the experiment folder held changed. The corpus is tones (no espeak-ng): the
model is a tiny random one, so what it hears does not matter.
"""

import hashlib
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import read_jsonl, write_manifest
from recipe_runs import (
    SENTENCES,
    assert_nothing_lost,
    copy_experiment,
    file_hashes,
    killed,
    one_line_error,
    recipe_args,
    run_forked,
)
from transformers import WhisperForConditionalGeneration
from transformers.models.whisper.english_normalizer import BasicTextNormalizer

from whisper_finetuning import export_hf
from whisper_finetuning.data import checks as data_checks
from whisper_finetuning.data.audio import AudioError, read_audio
from whisper_finetuning.evaluation import scoring
from whisper_finetuning.training import run_lock
from whisper_finetuning.training.checkpointing import CRASH_ENV
from whisper_finetuning.training.log import Calibration

CHECKS_HINT = "(--data_checks=warn to train anyway)"


def tone(path, seconds, frequency=440.0, level=0.1, rate=16000):
    """A tone of ``seconds`` at ``level`` (16-bit PCM)."""
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (level * np.sin(2 * np.pi * frequency * t)).astype(np.float32), rate)
    return path


def float_wav(path, samples):
    """A 32-bit float wav holding ``samples`` as they are (NaN and inf included)."""
    sf.write(path, np.asarray(samples, dtype=np.float32), 16000, subtype="FLOAT")
    return path


def tone_corpus(folder):
    """8 train, 3 valid, 2 test rows of tones with the recipe tests' sentences; manifests."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "ID": f"u{i}",
            "wav": tone(folder / f"u{i}.wav", 1.0 + 0.1 * i, 200.0 + 40 * i),
            "spk_id": f"s{i % 3}",
            "wrd": text,
            "duration": round(1.0 + 0.1 * i, 2),
        }
        for i, text in enumerate(SENTENCES[:13])
    ]
    splits = {"train": rows[:8], "valid": rows[8:11], "test": rows[11:]}
    return {name: write_manifest(folder / f"{name}.csv", r) for name, r in splits.items()}


def rows_of(manifest):
    """A manifest's rows as dicts."""
    import csv

    with open(manifest, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, random_whisper_dir):
    """A finished one-epoch run: (its arguments, its folder, its manifests)."""
    root = tmp_path_factory.mktemp("more_bad_input")
    corpus = tone_corpus(root / "corpus")
    args = recipe_args(random_whisper_dir, corpus, root / "exp", root / "cache", epochs=1)
    code, stderr = run_forked(args)
    assert code == 0, stderr[-3000:]
    return args, root / "exp", corpus


@pytest.fixture(scope="module")
def unstarted(finished, tmp_path_factory):
    """The finished run's folder without its checkpoints: other data may be tried here."""
    return copy_experiment(finished[1], tmp_path_factory.mktemp("unstarted") / "exp")


def rerun(finished, *changes, folder=None, env=None):
    """Rerun the finished run's command with ``changes`` (in ``folder`` if given)."""
    args, _, _ = finished
    if folder is not None:
        changes = (*changes, f"--output_folder={folder}")
    keys = {change.split("=", 1)[0] for change in changes}
    return run_forked([a for a in args if a.split("=", 1)[0] not in keys] + [*changes], env)


def refused(finished, *changes, folder=None):
    """The one error line of a rerun with ``changes``. The finished folder's files are all
    unchanged, its provenance files and log.txt too; in a copy without checkpoints (a run
    that trains), nothing is lost but the per-start records."""
    exp = folder or finished[1]
    before = unlocked_hashes(exp)
    code, stderr = rerun(finished, *changes, folder=folder)
    assert code == 1, stderr[-3000:]
    message = one_line_error(stderr)
    if folder is None:
        assert unlocked_hashes(exp) == before
    else:
        assert_nothing_lost(before, exp)
    return message


def unlocked_hashes(folder):
    """``file_hashes`` but the lock a forked run leaves (``python train.py`` removes it)."""
    return {k: v for k, v in file_hashes(folder).items() if k != run_lock.LOCK_FILE}


# ------------------------------------------------------- every setting, before any work --

BAD_SETTINGS = [
    ("--batch_size=0", "batch_size must be an integer >= 1, not 0"),
    ("--batch_size=-2", "batch_size must be an integer >= 1, not -2"),
    ("--batch_size=2.5", "batch_size must be an integer >= 1, not 2.5"),
    ("--test_batch_size=0", "test_batch_size must be an integer >= 1, not 0"),
    ("--lr=0", "lr must be a number > 0, not 0"),
    ("--lr=-0.001", "lr must be a number > 0, not -0.001"),
    ("--warmup_steps=0", "warmup_steps must be an integer >= 1, not 0"),
    ("--grad_accumulation_factor=0", "grad_accumulation_factor must be an integer >= 1, not 0"),
    ("--max_grad_norm=-1", "max_grad_norm must be a number > 0, not -1"),
    ("--label_smoothing=1.5", "label_smoothing must be a number from 0 to 1, not 1.5"),
    ("--test_beam_size=0", "test_beam_size must be an integer >= 1, not 0"),
    ("--number_of_epochs=0", "number_of_epochs must be an integer >= 1, not 0"),
    ("--decode_max_tokens=0", "decode_max_tokens must be an integer from 1 to 448 or null, not 0"),
    ("--sorting=shuffled", "sorting must be one of random, ascending, descending, not 'shuffled'"),
    ("--on_bad_row=drop", "on_bad_row must be one of skip, error, not 'drop'"),
    ("--data_checks=maybe", "data_checks must be one of error, warn, off, not 'maybe'"),
    ("--encoder_cache=maybe", "encoder_cache must be one of auto, True, False, not 'maybe'"),
    ("--normalizer=fancy", "normalizer must be one of auto, english, basic, none, not 'fancy'"),
    ("--augment=maybe", "augment must be True or False, not 'maybe'"),
    (
        "--encoder_window_seconds=31",
        "encoder_window_seconds must be an integer from 1 to 30, not 31",
    ),
    ("--test_csv=[]", "test_csv must be a list of manifests, not [] (no manifest)"),
    (
        "--init_from=/no/such/run",
        "init_from must be the output folder of a run with a validated checkpoint or null, not "
        "'/no/such/run' (no checkpoint with a valid WER in its save folder)",
    ),
    (
        "--whisper_hub=bundled:small",
        "whisper_hub must be bundled:tiny.en, bundled:base, a Hugging Face Hub name or a local "
        "model folder, not 'bundled:small' (no such bundled model)",
    ),
    ("--selection_metric=bleu", "selection_metric must be one of WER, CER, BLEU, chrF, not 'bleu'"),
]


@pytest.mark.parametrize("change, message", BAD_SETTINGS, ids=[c for c, _ in BAD_SETTINGS])
def test_bad_setting_is_one_line_and_changes_nothing(finished, change, message):
    assert refused(finished, change) == f"error: {message}"


def test_bad_setting_stops_before_the_output_folder_exists(finished, tmp_path):
    code, stderr = rerun(finished, "--number_of_epochs=0", folder=tmp_path / "new")
    assert code == 1
    assert one_line_error(stderr) == "error: number_of_epochs must be an integer >= 1, not 0"
    assert not (tmp_path / "new").exists()


def test_a_model_folder_without_a_model(finished, tmp_path):
    message = refused(finished, f"--whisper_hub={tmp_path}")
    assert message == (
        "error: whisper_hub must be bundled:tiny.en, bundled:base, a Hugging Face Hub name or a "
        f"local model folder, not '{tmp_path}' (a folder without config.json)"
    )


def test_settings_an_english_only_model_cannot_follow(finished, random_whisper_dir):
    """Translation, or a language other than English, on a .en checkpoint: found from its
    config.json before the model is built."""
    assert refused(finished, "--task=translate") == (
        f"error: task translate needs a multilingual checkpoint; {random_whisper_dir} is "
        "English-only (.en)"
    )
    assert refused(finished, "--language=de") == (
        "error: language de: an English-only (.en) checkpoint cannot transcribe it: use a "
        "multilingual one (e.g. --whisper_hub=bundled:base)"
    )


# ----------------------------------------------------------------------- audio samples --


def test_read_audio_refuses_non_finite_samples(tmp_path):
    wav = float_wav(tmp_path / "nan.wav", [0.1, np.nan, 0.2, np.inf])
    with pytest.raises(AudioError) as error:
        read_audio(wav)
    assert str(error.value) == f"audio {wav} has non-finite samples (NaN or inf)"


def test_calibration_leaves_non_finite_confidences_out():
    confidence = torch.tensor([0.9, float("nan"), 0.2, 0.55])
    correct = torch.tensor([True, True, False, True])
    with_nan, finite_only = Calibration(), Calibration()
    with_nan.append(confidence, correct)
    keep = torch.tensor([True, False, True, True])
    finite_only.append(confidence[keep], correct[keep])
    assert with_nan.count.sum() == 3
    assert with_nan.ece() == finite_only.ece() == pytest.approx((0.1 + 0.2 + 0.45) / 3)


def test_data_checks_report_non_finite_silent_and_clipped_clips(tmp_path):
    rng = np.random.default_rng(0)
    noisy = rng.uniform(-0.5, 0.5, 16000)
    clipped = np.clip(3 * noisy, -1, 1)  # about 1/3 of its samples at full scale
    rows = [
        {"ID": "good", "wav": tone(tmp_path / "good.wav", 1.0), "wrd": "the cat sat down"},
        {"ID": "nan", "wav": float_wav(tmp_path / "nan.wav", [*noisy[:-1], np.nan])},
        {"ID": "silent", "wav": float_wav(tmp_path / "silent.wav", np.zeros(16000))},
        {"ID": "clipped", "wav": float_wav(tmp_path / "clipped.wav", clipped)},
    ]
    for row in rows:
        row.update(duration=1.0, spk_id="s1", wrd=row.get("wrd", "open the window"))
    manifest = write_manifest(tmp_path / "train.csv", rows)
    valid = write_manifest(tmp_path / "valid.csv", rows[:1])
    findings = data_checks.run_checks({"train": manifest, "valid": valid}, tmp_path)
    found = {f["kind"]: f for f in findings}
    share = round(float(np.mean(np.abs(clipped) >= 0.999)), 4)
    assert found["non_finite_audio"]["severity"] == "error"
    assert found["non_finite_audio"]["message"] == (
        "1 rows' clips have NaN or infinite samples (value: how many)"
    )
    assert found["non_finite_audio"]["rows"] == [{"split": "train", "id": "nan", "value": 1}]
    assert found["silent_audio"]["message"] == "1 rows' clips are silent (every sample is 0)"
    assert found["silent_audio"]["rows"] == [{"split": "train", "id": "silent"}]
    assert found["clipped_audio"]["message"] == (
        "1 rows' clips are clipped (over 1% of samples at |x| >= 0.999; value: share)"
    )
    assert found["clipped_audio"]["rows"] == [{"split": "train", "id": "clipped", "value": share}]
    assert 0.3 < share < 0.37


def test_non_finite_clips_are_skipped_with_their_ids(finished, tmp_path):
    """Train and valid each hold one NaN clip: both skipped and counted; the run finishes."""
    _, _, corpus = finished
    train, valid = rows_of(corpus["train"]), rows_of(corpus["valid"])
    half_nan = [0.1] * 8000 + [np.nan] * 8000
    train.append({**train[0], "ID": "nan_train", "wav": float_wav(tmp_path / "t.wav", half_nan)})
    half_nan[0] = 0.2  # another file: the same one in two splits would be a leak
    valid.append({**valid[0], "ID": "nan_valid", "wav": float_wav(tmp_path / "v.wav", half_nan)})
    exp = tmp_path / "exp"
    code, stderr = rerun(
        finished,
        f"--train_csv={write_manifest(tmp_path / 'train.csv', train)}",
        f"--valid_csv={write_manifest(tmp_path / 'valid.csv', valid)}",
        folder=exp,
    )
    assert code == 0, stderr[-3000:]
    log = (exp / "log.txt").read_text()
    reason = "non-finite samples (NaN or inf)"
    assert f"train: skipped 1 row(s) with {reason} (e.g. nan_train)" in log
    assert f"valid: skipped 1 row(s) with {reason} (e.g. nan_valid)" in log
    report = json.loads((exp / "data_report.json").read_text())
    (finding,) = [f for f in report["findings"] if f["kind"] == "non_finite_audio"]
    assert finding["rows"] == [
        {"split": "train", "id": "nan_train", "value": 8000},
        {"split": "valid", "id": "nan_valid", "value": 8000},
    ]
    summary = json.loads((exp / "valid" / "summary_epoch1.json").read_text())
    assert summary["n_utterances"] == 3 and summary["wer"] is not None
    trained = {r["id"] for r in read_jsonl(exp / "log" / "train_utterances.jsonl")}
    assert trained == {f"u{i}" for i in range(8)}
    steps = read_jsonl(exp / "log" / "steps.jsonl")
    assert all(step["loss"] is not None for step in steps)  # no batch lost to a NaN


def test_a_non_finite_clip_with_on_bad_row_error(finished, unstarted, tmp_path):
    _, _, corpus = finished
    bad = float_wav(tmp_path / "nan.wav", [0.1] * 8000 + [np.nan])
    train = rows_of(corpus["train"])  # all of them: its speakers decide the speaker checks
    train.append({**train[0], "ID": "nan", "wav": bad})
    manifest = write_manifest(tmp_path / "train.csv", train)
    message = refused(finished, f"--train_csv={manifest}", "--on_bad_row=error", folder=unstarted)
    assert message == (
        "error: data checks found 1 error(s), first: 1 rows' clips have NaN or infinite "
        f"samples (value: how many); see {unstarted / 'data_report.md'} {CHECKS_HINT}"
    )
    message = refused(
        finished,
        f"--train_csv={manifest}",
        "--on_bad_row=error",
        "--data_checks=warn",
        folder=unstarted,
    )
    assert message == (
        f"error: train: row nan ({bad}): non-finite samples (NaN or inf) (1 bad rows; set "
        "on_bad_row=skip to skip them)"
    )


# ---------------------------------------------------------- references with no word --


def test_references_with_no_word_are_left_out_of_wer_and_counted():
    scorer = scoring.Scorer(scoring.text_normalizer("english", None, True), ["dialect"])
    scorer.append(
        ["a", "b", "c", "d"],
        ["the cat sat", "one two three four", "dogs", "a b"],
        ["the cat sat", "?!...", "the dog", "..."],
        {"dialect": ["north", "south", "north", "south"]},
    )
    summary = scorer.summary()
    assert summary["wer"] == pytest.approx(100 * 2 / 5)  # 'the dog' -> 'dogs': 2 errors
    assert summary["n_utterances"] == 2
    assert summary["n_unscorable"] == 2 and summary["unscorable_ids"] == ["b", "d"]
    south = summary["per_group"]["dialect"]["south"]
    assert south == {
        "wer": None,
        "cer": None,
        "bleu": None,
        "chrf": None,
        "ci95": None,
        "cer_ci95": None,
        "bleu_ci95": None,
        "chrf_ci95": None,
        "n": 0,
        "words": 0,
        "n_unscorable": 2,
        "nonspeech": {
            "n": 0,
            "n_with_words": 0,
            "hallucination_rate": None,
            "hallucination_rate_ci95": None,
            "words_per_minute": None,
        },
        "repeated_ngram_rate": None,
        "insertion_rate": None,
    }
    assert summary["per_group"]["dialect"]["north"]["words"] == 5
    text = scoring.format_summary({**summary, "model": None}, "test")
    no = "no reference words"
    assert f"| south | {no} | - | {no} | {no} | - | {no} | - | 0 |" in text
    assert "n=2, 2 reference(s) with no word left out" in text


def test_a_set_of_only_such_references_has_no_wer():
    scorer = scoring.Scorer(BasicTextNormalizer())
    scorer.append(["a"], ["hello there"], ["?!..."])
    summary = scorer.summary()
    assert summary["wer"] is None and summary["cer"] is None and summary["wer_ci95"] is None
    assert scoring.format_headline(summary) == (
        "WER, CER, BLEU and chrF undefined (no reference words), n=0, 1 reference(s) with no word "
        "left out"
    )


def test_data_checks_report_references_with_no_word(tmp_path):
    wav = tone(tmp_path / "a.wav", 1.0)
    train = [{"ID": "t1", "wav": wav, "wrd": "open the window"}]
    valid = [{"ID": "v1", "wav": wav, "wrd": "?!..."}, {"ID": "v2", "wav": wav, "wrd": "-"}]
    for row in (*train, *valid):
        row.update(duration=1.0, spk_id="s1")
    manifests = {
        "train": write_manifest(tmp_path / "train.csv", train),
        "valid": write_manifest(tmp_path / "valid.csv", valid),
    }
    findings = data_checks.run_checks(manifests, tmp_path)
    found = [f for f in findings if f["kind"] == "unscorable_reference"]
    assert [(f["severity"], f["message"]) for f in found] == [
        (
            "error",
            "valid: no transcript has a word once normalised: its WER is undefined and cannot "
            "choose a checkpoint",
        ),
        (
            "warning",
            "2 transcripts have no word once normalised (no letter or digit): left out of WER "
            "and counted (n_unscorable) in the summaries",
        ),
    ]
    assert found[1]["rows"] == [
        {"split": "valid", "id": "v1", "value": "?!..."},
        {"split": "valid", "id": "v2", "value": "-"},
    ]


# -------------------------------------------------------- reruns on a finished folder --


def test_a_rerun_on_another_train_manifest_is_refused(finished, tmp_path):
    _, exp, corpus = finished
    other = write_manifest(tmp_path / "train.csv", rows_of(corpus["train"])[1:])
    assert refused(finished, f"--train_csv={other}") == (
        f"error: {exp} holds a checkpoint of a run with another train manifest (run.json "
        "records each manifest's content); use a new --output_folder (with "
        f"--init_from={exp} to start from its checkpoint)"
    )


def test_a_rerun_with_other_settings_is_refused(finished):
    _, exp, _ = finished
    assert refused(finished, "--lr=0.001") == (
        f"error: {exp} holds a checkpoint of a run with lr: 0.002, not 0.001 (run.json); "
        "use a new --output_folder (with "
        f"--init_from={exp} to start from its checkpoint)"
    )
    assert refused(finished, "--grad_accumulation_factor=2") == (
        f"error: {exp} holds a checkpoint of a run with grad_accumulation_factor: 1, not 2 "
        "(run.json); use a new --output_folder (with "
        f"--init_from={exp} to start from its checkpoint)"
    )


def test_a_rerun_that_does_not_train_leaves_the_provenance_files(finished):
    _, exp, corpus = finished
    provenance_files = ("run.json", "hyperparams.yaml", "data_report.json", "data_report.md")
    before = {name: (exp / name).read_bytes() for name in provenance_files}
    run_info = json.loads(before["run.json"])
    assert run_info["manifest_sha256"] == {
        name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in corpus.items()
    }
    assert run_info["settings"]["lr"] == 0.002 and "num_workers" not in run_info["settings"]
    code, stderr = rerun(finished, "--test_batch_size=1")  # a setting a rerun may change
    assert code == 0, stderr[-3000:]
    assert {name: (exp / name).read_bytes() for name in provenance_files} == before


def test_init_from_continues_a_finished_run_on_other_data_in_a_new_folder(
    finished, tmp_path, random_whisper_dir
):
    _, exp, corpus = finished
    other = write_manifest(tmp_path / "train.csv", rows_of(corpus["train"])[1:])
    new = tmp_path / "new"
    # A rate so small that the new run's weights stay those it started from.
    code, stderr = rerun(
        finished, f"--train_csv={other}", f"--init_from={exp}", "--lr=1e-12", folder=new
    )
    assert code == 0, stderr[-3000:]
    (source,) = (exp / "save").glob("CKPT+*")
    (epoch,) = read_jsonl(exp / "epochs.jsonl")
    assert (
        f"starting from {source.name} (epoch 1, valid WER {epoch['WER']:.2f}%) of {exp}"
        in (new / "log.txt").read_text()
    )
    (kept,) = (new / "save").glob("CKPT+*")
    started, ended = (torch.load(c / "whisper.ckpt") for c in (source, kept))
    assert started.keys() == ended.keys()
    assert all(torch.allclose(started[k], ended[k], atol=1e-6) for k in started)
    untrained = WhisperForConditionalGeneration.from_pretrained(random_whisper_dir)
    name = "model.decoder.layers.0.fc1.weight"
    assert not torch.allclose(started[name], untrained.state_dict()[name], atol=1e-3)
    assert json.loads((new / "run.json").read_text())["settings"]["init_from"] == str(exp)


# -------------------------------------------------------------------------- exports --


def test_export_names_the_checkpoint_it_takes(finished, tmp_path, capsys):
    _, exp, _ = finished
    (checkpoint,) = (exp / "save").glob("CKPT+*")
    (epoch,) = read_jsonl(exp / "epochs.jsonl")
    assert export_hf.main([str(exp), str(tmp_path / "hf")]) == 0
    assert capsys.readouterr().out == (
        f"exported {checkpoint.name} (epoch 1, valid WER {epoch['WER']:.2f}%) to "
        f"{tmp_path / 'hf'}\n"
    )


def test_export_refuses_an_unvalidated_checkpoint(finished, tmp_path, capsys):
    exp = tmp_path / "exp"
    code, _ = rerun(finished, folder=exp, env={CRASH_ENV: "valid_batch:1"})
    assert killed(code)  # in its first validation, after intra-epoch checkpoints
    (checkpoint,) = (exp / "save").glob("CKPT+*")
    before = unlocked_hashes(exp)
    assert export_hf.main([str(exp), str(tmp_path / "hf")]) == 1
    assert one_line_error(capsys.readouterr().err) == (
        f"error: {exp / 'save'} holds only {checkpoint.name}, an intra-epoch checkpoint taken "
        "before any validation (no valid WER): train through an epoch, or pass "
        "--allow_unvalidated to export it anyway"
    )
    assert not (tmp_path / "hf").exists() and unlocked_hashes(exp) == before
    assert export_hf.main([str(exp), str(tmp_path / "hf"), "--allow_unvalidated"]) == 0
    assert capsys.readouterr().out == (
        f"exported {checkpoint.name} (intra-epoch, not validated) to {tmp_path / 'hf'}\n"
    )
    assert unlocked_hashes(exp) == before


# ------------------------------------------------------------------ manifest format --

HEADER = "ID,duration,wav,spk_id,wrd"


def manifest_cases(wav):
    """(name, manifest text, the problem after ``manifest PATH``)."""
    row = f"u1,1.0,{wav},s1,open the window"
    return [
        (
            "bom",
            f"\ufeff{HEADER}\n{row}\n",
            ", line 1, column 1: found '\\ufeffID' where 'ID' was expected (a byte-order "
            "mark: save it as UTF-8 without BOM)",
        ),
        (
            "lower_case_id",
            f"id,duration,wav,spk_id,wrd\n{row}\n",
            ", line 1, column 1: found 'id' where 'ID' was expected",
        ),
        ("header_only", f"{HEADER}\n", " has a header but no rows"),
        ("empty", "", " is empty: line 1 must be its header"),
        (
            "duration",
            f"{HEADER}\n{row}\nu2,abc,{wav},s1,hello\n",
            ", line 3, column 2 (duration): found 'abc' where a number of seconds was expected",
        ),
        ("fields", f"{HEADER}\n{row}\nu2,1.0,{wav}\n", ", line 3: 3 fields, the header has 5"),
        (
            "dollar",
            f"{HEADER}\n{row}\nu2,1.0,$data_dir/a.wav,s1,hello\n",
            ", line 3, column 3 (wav): found $data_dir in '$data_dir/a.wav'; only $data_root "
            "is replaced (by data_folder)",
        ),
        ("empty_id", f"{HEADER}\n{row}\n,1.0,{wav},s1,hello\n", ", line 3, column 1 (ID): empty"),
    ]


MANIFEST_CASES = [name for name, _, _ in manifest_cases("x")]


@pytest.mark.parametrize("case", MANIFEST_CASES)
def test_manifest_format_problem_is_named_precisely(finished, unstarted, tmp_path, case):
    wav = tone(tmp_path / "a.wav", 1.0)
    _, text, problem = next(c for c in manifest_cases(wav) if c[0] == case)
    path = tmp_path / "train.csv"
    path.write_text(text, encoding="utf-8")
    message = refused(finished, f"--train_csv={path}", folder=unstarted)
    assert message == (
        f"error: data checks found 1 error(s), first: train: manifest {path}{problem}; see "
        f"{unstarted / 'data_report.md'} {CHECKS_HINT}"
    )
    message = refused(finished, f"--train_csv={path}", "--data_checks=off", folder=unstarted)
    assert message == f"error: manifest {path}{problem}"
