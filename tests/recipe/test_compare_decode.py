"""python -m whisper_finetuning.compare on two finished train.py runs (a tiny random Whisper,
tones) and a test manifest neither was decoded on: each run's selected checkpoint decodes it
as train.py's own test stage does, once."""

import json
import logging

import pytest
from conftest import read_jsonl, write_manifest
from recipe_runs import SENTENCES, copy_experiment, recipe_args, run_forked
from test_bad_input_more import tone, tone_corpus

from whisper_finetuning import compare
from whisper_finetuning.evaluation.selection import SELECTION_METRICS

SCORES = [key for m in SELECTION_METRICS for key in (m.lower(), f"{m.lower()}_ci95")]


def run_args(whisper_dir, corpus, folder, lr):
    args = recipe_args(whisper_dir, corpus, folder, folder.parent / "cache", epochs=1)
    return [a for a in args if not a.startswith("--lr=")] + [f"--lr={lr}"]


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory, random_whisper_dir):
    """Runs A and B, trained and tested on the tone corpus's test set; a third manifest,
    ``other``; and what train.py's test stage writes for A's selected checkpoint on it (A's
    command rerun with ``other`` added to its test sets, in a copy of A)."""
    root = tmp_path_factory.mktemp("compare_decode")
    corpus = tone_corpus(root / "corpus")
    rows = [
        {
            "ID": f"o{i}",
            "wav": tone(root / "corpus" / f"o{i}.wav", 1.5 + 0.2 * i, 700.0 + 60 * i),
            "spk_id": f"s{i}",
            "wrd": text,
            "duration": round(1.5 + 0.2 * i, 2),
        }
        for i, text in enumerate(SENTENCES[13:])
    ]
    other = write_manifest(root / "corpus" / "other.csv", rows)
    for name, lr in (("A", 0.002), ("B", 0.0005)):
        code, stderr = run_forked(run_args(random_whisper_dir, corpus, root / name, lr))
        assert code == 0, stderr[-3000:]
    reference = copy_experiment(root / "A", root / "A_reference", without=())
    args = run_args(random_whisper_dir, corpus, reference, 0.002)
    args = [a for a in args if not a.startswith("--test_csv=")]
    code, stderr = run_forked([*args, f"--test_csv=[{corpus['test']},{other}]"])
    assert code == 0, stderr[-3000:]
    return root, other, reference


def compared(root, other, caplog):
    """comparison.json of A and B on ``other``, and the comparison's log lines."""
    caplog.clear()
    out = root / "out"
    argv = [str(root / "A"), str(root / "B"), "--test_csv", str(other), "--output_folder", str(out)]
    with caplog.at_level(logging.INFO, logger="whisper_finetuning.analysis.comparison"):
        assert compare.main(argv) == 0
    return json.loads((out / "comparison.json").read_text()), caplog.messages


def test_compare_decodes_a_missing_test_set_as_train_py_does_and_only_once(finished_runs, caplog):
    root, other, reference = finished_runs
    a, b = root / "A", root / "B"
    kept = {name: (a / name).read_bytes() for name in ("run.json", "utterances_test.jsonl")}
    assert not (a / "utterances_other.jsonl").exists()
    result, messages = compared(root, other, caplog)
    assert list(result["test_sets"]) == ["other"]
    decoding = [m for m in messages if "decoding" in m]
    assert decoding == [
        f"{run} has no utterances of test set 'other': decoding {other} with its selected "
        "checkpoint (train.py's test stage)"
        for run in ("A", "B")
    ]
    assert "A: wrote utterances_other.jsonl (a later comparison reuses it)" in messages
    # A's numbers and transcripts are those train.py's test stage wrote for its checkpoint.
    expected = json.loads((reference / "summary_other.json").read_text())
    scores = result["test_sets"]["other"]["scores"]["A"]
    assert {key: scores[key] for key in SCORES} == {key: expected[key] for key in SCORES}
    assert scores["n_utterances"] == expected["n_utterances"] == 2
    assert scores["selected_epoch"] == expected["epoch"] == 1
    decoded, written_by_train_py = (
        read_jsonl(folder / "utterances_other.jsonl") for folder in (a, reference)
    )
    assert [u["hyp"] for u in decoded] == [u["hyp"] for u in written_by_train_py]
    assert decoded == written_by_train_py  # every field: references, errors, statistics
    assert scores["wer"] == pytest.approx(
        100 * sum(u["word_errors"] for u in decoded) / sum(u["words"] for u in decoded)
    )
    assert result["test_sets"]["other"]["scores"]["B"]["n_utterances"] == 2
    assert {name: (a / name).read_bytes() for name in kept} == kept  # the run's own, untouched
    # A second comparison reuses the utterance files: train.py does not start again.
    written = {run: (run / "utterances_other.jsonl").stat().st_mtime_ns for run in (a, b)}
    logs = {run: (run / "log.txt").stat().st_size for run in (a, b)}
    again, messages = compared(root, other, caplog)
    assert again["test_sets"] == result["test_sets"]
    assert not [m for m in messages if "decoding" in m]
    assert "A: test set 'other' was decoded earlier: reusing utterances_other.jsonl" in messages
    assert {run: (run / "utterances_other.jsonl").stat().st_mtime_ns for run in (a, b)} == written
    assert {run: (run / "log.txt").stat().st_size for run in (a, b)} == logs
