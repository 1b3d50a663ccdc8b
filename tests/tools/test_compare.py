"""python -m whisper_finetuning.compare on scripted run folders: paired differences, their
bootstrap p-values and Holm's correction against hand-computed values, verdicts, per group,
the curves, and one-line refusals."""

import json
from pathlib import Path

import pytest

from whisper_finetuning import compare
from whisper_finetuning.analysis.diagnosis.stats import holm
from whisper_finetuning.evaluation.metrics import SACREBLEU_BLEU, SACREBLEU_CHRF, metric

SPEAKERS = ["s1", "s1", "s2", "s2", "s3", "s3"]
DIALECTS = {"s1": "north", "s2": "north", "s3": "south"}
REFERENCE = "one two three four five"
# Word errors per utterance (5 words each): A none, B one each, C none for s1, two for s2, s3.
ERRORS = {"A": [0, 0, 0, 0, 0, 0], "B": [1, 1, 1, 1, 1, 1], "C": [0, 0, 2, 2, 2, 2]}
# Monte Carlo error of a bootstrap p-value from 2000 resamples: sd <= 2 x 0.011.
P_TOLERANCE = 0.06


def hypothesis(errors):
    words = REFERENCE.split()
    return " ".join(["wrong"] * errors + words[errors:])


def utterance(index, errors):
    hyp = hypothesis(errors)
    return {
        "id": f"u{index}",
        "ref": REFERENCE,
        "hyp": hyp,
        "word_errors": errors,
        "words": 5,
        "char_errors": 2 * errors,
        "chars": 20,
        "bleu_stats": SACREBLEU_BLEU._extract_corpus_statistics([hyp], [[REFERENCE]])[0],
        "chrf_stats": SACREBLEU_CHRF._extract_corpus_statistics([hyp], [[REFERENCE]])[0],
        "spk_id": SPEAKERS[index],
        "dialect": DIALECTS[SPEAKERS[index]],
    }


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_run(
    root, name, errors, test_name="test", finished=True, epochs=((9.0, 30.0),), test_sha256=None
):
    """A finished run folder as train.py leaves it, with scripted test utterances (no
    checkpoint or settings: nothing to decode with); ``test_sha256``: the test manifest's
    content hash run.json records."""
    folder = root / name
    (folder / "save").mkdir(parents=True)
    info = {
        "selection_metric": "WER",
        "group_columns": ["spk_id", "dialect"],
        "test_csv": [str(root / f"{test_name}.csv")],
    }
    if test_sha256:
        info["manifest_sha256"] = {test_name: test_sha256}
    (folder / "run.json").write_text(json.dumps(info))
    if finished:
        (folder / "save" / "fit_done.json").write_text('{"epochs": 2}')
    write_jsonl(
        folder / "epochs.jsonl",
        [{"epoch": e, "loss": loss, "WER": wer} for e, (loss, wer) in enumerate(epochs, 1)],
    )
    utterances = [utterance(i, e) for i, e in enumerate(errors)]
    write_jsonl(folder / f"utterances_{test_name}.jsonl", utterances)
    summary = {k: metric(utterances, k) for k in ("wer", "cer", "bleu", "chrf")}
    summary.update({f"{k}_ci95": [0.0, 1.0] for k in ("wer", "cer", "bleu", "chrf")})
    summary.update(epoch=len(epochs), n_utterances=len(utterances), unscorable_ids=[])
    (folder / f"summary_{test_name}.json").write_text(json.dumps(summary))
    return folder


@pytest.fixture
def three_runs(tmp_path):
    for name, errors in ERRORS.items():
        make_run(tmp_path, name, errors, epochs=((9.0, 40.0), (8.0, 30.0 + len(name))))
    return tmp_path


def compared(root, *names, argv=()):
    out = root / "out"
    assert compare.main([*(str(root / n) for n in names), "--output_folder", str(out), *argv]) == 0
    return json.loads((out / "comparison.json").read_text()), out


def pairs_by_name(rows):
    return {(r["a"], r["b"]): r for r in rows}


def test_paired_differences_p_values_and_holm_equal_hand_computed_values(three_runs):
    result, out = compared(three_runs, "A", "B", "C")
    test = result["test_sets"]["test"]
    assert test["blocked_by"] == "spk_id"
    wer = pairs_by_name(test["overall"]["WER"])
    # A - B: every speaker block holds 0 vs 2 errors in 10 words, so every resample is -20.
    assert wer["A", "B"]["difference"] == pytest.approx(-20.0)
    assert wer["A", "B"]["ci95"] == pytest.approx([-20.0, -20.0])
    assert wer["A", "B"]["p"] == 0.0
    # A - C = (0 - 8) / 30; a resample is 0 only when it draws s1 three times: p = 2 x 1/27.
    assert wer["A", "C"]["difference"] == pytest.approx(-800 / 30)
    assert wer["A", "C"]["p"] == pytest.approx(2 / 27, abs=P_TOLERANCE)
    # B - C = (6 - 8) / 30; per block +2, -2, -2 errors: > 0 when s1 is drawn twice or more
    # (7/27 of the resamples), never 0: p = 2 x 7/27.
    assert wer["B", "C"]["difference"] == pytest.approx(-200 / 30)
    assert wer["B", "C"]["p"] == pytest.approx(14 / 27, abs=P_TOLERANCE)
    # Holm over the three pairs: p sorted 0 < p(A,C) < p(B,C) times 3, 2, 1, non-decreasing.
    assert wer["A", "B"]["p_holm"] == 0.0
    assert wer["A", "C"]["p_holm"] == pytest.approx(2 * wer["A", "C"]["p"])
    assert wer["B", "C"]["p_holm"] == pytest.approx(max(wer["B", "C"]["p"], 2 * wer["A", "C"]["p"]))
    assert [r["verdict"] for r in test["overall"]["WER"]] == [
        "A beats B beyond noise",
        "no difference shown",  # A - C's raw p is below 0.05 only before the correction
        "no difference shown",
    ]
    cer = pairs_by_name(test["overall"]["CER"])
    assert cer["A", "B"]["difference"] == pytest.approx(-100 * 12 / 120)
    assert cer["B", "C"]["difference"] == pytest.approx(-100 * 4 / 120)
    bleu = pairs_by_name(test["overall"]["BLEU"])
    assert bleu["A", "B"]["difference"] == pytest.approx(
        test["scores"]["A"]["bleu"] - test["scores"]["B"]["bleu"]
    )
    assert bleu["A", "B"]["verdict"] == "A beats B beyond noise"  # higher BLEU is better
    markdown = (out / "comparison.md").read_text()
    assert "| A - B | -20.00 | -20.00 to -20.00 | 0.0000 | 0.0000 | A beats B beyond noise |" in (
        markdown
    )


def test_groups_are_compared_and_corrected_on_their_own(three_runs):
    result, _ = compared(three_runs, "A", "B", "C")
    per_group = result["test_sets"]["test"]["per_group"]
    south = pairs_by_name(per_group["dialect"]["south"])  # one speaker: no interval
    assert south["A", "B"]["difference"] == pytest.approx(-20.0)
    assert south["A", "B"]["p"] is None and south["A", "B"]["ci95"] == [None, None]
    assert south["A", "B"]["verdict"] == "no difference shown"
    north = pairs_by_name(per_group["dialect"]["north"])  # s1 and s2: B - C is +2, -2 errors
    assert north["B", "C"]["difference"] == 0.0
    assert north["B", "C"]["verdict"] == "no difference shown"
    # Per speaker, the utterances are the blocks: B - C on s2 is -20 in each of its two.
    s2 = pairs_by_name(per_group["spk_id"]["s2"])
    assert s2["B", "C"]["difference"] == pytest.approx(-20.0)
    assert s2["B", "C"]["ci95"] == pytest.approx([-20.0, -20.0])
    assert s2["A", "B"]["p_holm"] == 0.0 and s2["B", "C"]["verdict"] == "B beats C beyond noise"


def test_holm_matches_the_textbook_example():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.2]) == pytest.approx([0.5, 0.4])


def test_curves_are_the_runs_valid_records_and_plotted(three_runs):
    result, out = compared(three_runs, "A", "B")
    assert result["curves"]["A"] == [
        {"epoch": 1, "loss": 9.0, "WER": 40.0},
        {"epoch": 2, "loss": 8.0, "WER": 31.0},
    ]
    assert (out / "comparison_curves.png").stat().st_size > 1000
    assert result["test_sets"]["test"]["scores"]["A"]["selected_epoch"] == 2


def refusal(capsys, root, *argv):
    with pytest.raises(SystemExit) as stop:
        compare.main([*map(str, argv), "--output_folder", str(root / "out")])
    return stop.value.code


def test_refusals_are_one_line_and_keep_an_earlier_comparison(tmp_path, capsys):
    a = make_run(tmp_path, "A", ERRORS["A"])
    b = make_run(tmp_path, "B", ERRORS["B"])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "comparison.md").write_text("earlier")
    assert refusal(capsys, tmp_path, a) == "error: a comparison needs at least two runs, got 1"
    unfinished = make_run(tmp_path, "U", ERRORS["B"], finished=False)
    assert refusal(capsys, tmp_path, a, unfinished) == (
        f"error: {unfinished} is unfinished: training has not ended (no save/fit_done.json)"
    )
    hashed = make_run(tmp_path, "H1", ERRORS["A"], test_sha256="1" * 64)
    rehashed = make_run(tmp_path, "H2", ERRORS["B"], test_sha256="2" * 64)
    assert refusal(capsys, tmp_path, hashed, rehashed) == (
        "error: the runs' test sets differ: H1 and H2 were tested on other manifests named "
        "'test' (run.json manifest_sha256)"
    )
    other = make_run(tmp_path, "O", ERRORS["B"], test_name="other")
    assert refusal(capsys, tmp_path, a, other) == (
        f"error: test manifest {tmp_path / 'other.csv'} not found: A cannot decode it"
    )
    (tmp_path / "other.csv").write_text("ID,wav\n" + "".join(f"u{i},x.wav\n" for i in range(6)))
    assert refusal(capsys, tmp_path, a, other) == (
        "error: A has no checkpoint in save/ to decode test set 'other'"
    )
    (a / "save" / "CKPT+2026-12-06+00-00-00+00").mkdir()
    assert refusal(capsys, tmp_path, a, other) == (
        f"error: {a} has no hyperparams.yaml: its checkpoint cannot be decoded"
    )
    (a / "hyperparams.yaml").write_text("output_folder: elsewhere/A\n")
    assert refusal(capsys, tmp_path, a, other) == (
        f"error: {a / 'hyperparams.yaml'} names output_folder elsewhere/A, which is not {a} "
        "from here: decode from the directory the run was started in, where it was trained"
    )
    changed = make_run(tmp_path, "D", ERRORS["B"])
    rows = (changed / "utterances_test.jsonl").read_text().replace("five", "six", 1)
    (changed / "utterances_test.jsonl").write_text(rows)
    assert refusal(capsys, tmp_path, a, changed) == (
        "error: test set 'test' differs between A and D (other utterances or references)"
    )
    assert refusal(capsys, tmp_path, a, b, "--test_csv", tmp_path / "elsewhere.csv") == (
        f"error: test manifest {tmp_path / 'elsewhere.csv'} not found"
    )
    assert refusal(capsys, tmp_path, a, tmp_path / "A") == "error: a run folder is given twice"
    assert (tmp_path / "out" / "comparison.md").read_text() == "earlier"


def test_a_test_manifest_must_hold_the_decoded_utterances(tmp_path, capsys):
    a = make_run(tmp_path, "A", ERRORS["A"])
    b = make_run(tmp_path, "B", ERRORS["B"])
    manifest = tmp_path / "test.csv"
    manifest.write_text("ID,wav\n" + "".join(f"u{i},x.wav\n" for i in range(6)))
    result, _ = compared(tmp_path, "A", "B", argv=["--test_csv", str(manifest)])
    assert list(result["test_sets"]) == ["test"]
    manifest.write_text("ID,wav\nu0,x.wav\n")
    assert refusal(capsys, tmp_path, a, b, "--test_csv", manifest) == (
        f"error: A's test set 'test' holds other utterances than {manifest}"
    )
    assert Path(tmp_path / "out" / "comparison.json").exists()


def test_non_speech_rows_are_compared_clip_by_clip_with_mcnemar(tmp_path):
    """Words on 5 non-speech clips: A on n0-n3, B on n3 alone; a --test_csv manifest lists the
    speech and the non-speech rows."""
    written = {"A": [3, 1, 2, 4, 0], "B": [0, 0, 0, 2, 0]}
    for name, words in written.items():
        folder = make_run(tmp_path, name, ERRORS[name])
        write_jsonl(
            folder / "nonspeech_test.jsonl",
            [
                {"id": f"n{i}", "ref": "", "hyp": "x " * w, "hyp_words": w}
                for i, w in enumerate(words)
            ],
        )
    ids = [f"u{i}" for i in range(6)] + [f"n{i}" for i in range(5)]
    (tmp_path / "test.csv").write_text("ID,wav\n" + "".join(f"{i},x.wav\n" for i in ids))
    result, out = compared(tmp_path, "A", "B", argv=["--test_csv", str(tmp_path / "test.csv")])
    nonspeech = result["test_sets"]["test"]["nonspeech"]
    assert nonspeech["n"] == 5 and nonspeech["with_words"] == {"A": 4, "B": 1}
    # Discordant clips: 3 with words from A alone, none from B alone: p = 2 x 0.5^3.
    assert nonspeech["pairs"] == [{"a": "A", "b": "B", "only_a": 3, "only_b": 0, "p": 0.25}]
    assert "| A - B | 3 | 0 | 0.2500 |" in (out / "comparison.md").read_text()
    # Another run that decoded other non-speech rows is refused.
    write_jsonl(tmp_path / "B" / "nonspeech_test.jsonl", [{"id": "n0", "hyp_words": 0}])
    with pytest.raises(SystemExit) as stop:
        compare.main([str(tmp_path / "A"), str(tmp_path / "B"), "--output_folder", str(out)])
    assert stop.value.code == (
        "error: test set 'test' differs between A and B (other utterances or references)"
    )


def test_speakers_come_from_the_manifest_when_the_utterances_lack_them(tmp_path):
    """The recipe's utterance files record spk_id only as a group column: the blocks are then
    the --test_csv manifest's speakers, and give the same numbers as recorded speakers."""
    for name in ("A", "C"):
        folder = make_run(tmp_path, name, ERRORS[name])
        path = folder / "utterances_test.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        write_jsonl(path, [{k: v for k, v in r.items() if k != "spk_id"} for r in rows])
    lines = "".join(f"u{i},x.wav,{speaker}\n" for i, speaker in enumerate(SPEAKERS))
    (tmp_path / "test.csv").write_text("ID,wav,spk_id\n" + lines)
    result, _ = compared(tmp_path, "A", "C", argv=["--test_csv", str(tmp_path / "test.csv")])
    test = result["test_sets"]["test"]
    assert test["blocked_by"] == "spk_id"
    (wer,) = test["overall"]["WER"]
    assert wer["difference"] == pytest.approx(-800 / 30)
    assert wer["p"] == pytest.approx(2 / 27, abs=P_TOLERANCE)  # three speaker blocks
