"""Scoring: WER against jiwer, per-group numbers, interval coverage, normalisers."""

import json
import random

import jiwer
import pytest
from transformers import WhisperTokenizer

from local import evaluation
from local.evaluation import Scorer, text_normalizer

REFS = ["the cat sat on the mat", "hello world", "it is half past seven", "good morning to you"]
HYPS = ["the cat sat on a mat", "hello word", "it is half past seven", "good morning"]


def test_wer_and_cer_match_jiwer_and_the_alignment_file(tmp_path):
    scorer = Scorer(str.strip, ["dialect"])
    groups = {"dialect": ["a", "a", "b", "b"]}
    scorer.append(["u1", "u2", "u3", "u4"], HYPS, REFS, groups)
    summary = scorer.write(tmp_path, "test", epoch=3)
    assert summary["wer"] == pytest.approx(100 * jiwer.wer(REFS, HYPS))
    # SpeechBrain's CER counts word boundaries as characters, as jiwer does.
    assert summary["cer"] == pytest.approx(100 * jiwer.cer(REFS, HYPS))
    assert summary["n_utterances"] == 4 and summary["epoch"] == 3
    headline = (tmp_path / "wer_test.txt").read_text().splitlines()[0]
    assert headline.startswith(f"%WER {summary['wer']:.2f}")
    assert json.loads((tmp_path / "summary_test.json").read_text()) == summary
    for value, members in (("a", [0, 1]), ("b", [2, 3])):
        expected = 100 * jiwer.wer([REFS[i] for i in members], [HYPS[i] for i in members])
        assert summary["per_group"]["dialect"][value]["wer"] == pytest.approx(expected)
        assert summary["per_group"]["dialect"][value]["n"] == 2
    lo, hi = summary["wer_ci95"]
    assert lo <= summary["wer"] <= hi


def test_bootstrap_interval_covers_the_truth_at_about_its_rate():
    """Simulated corpora with a known true WER: the 95% interval covers it ~95% of the time."""
    rng = random.Random(1)
    true_rate, covered, trials = 0.2, 0, 120
    for _ in range(trials):
        scorer = Scorer(str.strip)
        refs, hyps = [], []
        for _ in range(60):
            words = [f"w{rng.randrange(50)}" for _ in range(10)]
            hyp = [w if rng.random() > true_rate else "x" for w in words]
            refs.append(" ".join(words))
            hyps.append(" ".join(hyp))
        scorer.append([f"u{i}" for i in range(60)], hyps, refs)
        lo, hi = scorer.summary()["wer_ci95"]
        covered += lo <= 100 * true_rate <= hi
    assert 0.88 <= covered / trials <= 0.99


def test_english_normaliser_uses_the_spelling_map(tiny_en_dir):
    tokenizer = WhisperTokenizer.from_pretrained(tiny_en_dir)
    english = text_normalizer("auto", tokenizer, english=True)
    assert english("The Colour, Mr. Smith!").split() == ["the", "color", "mister", "smith"]
    basic = text_normalizer("auto", tokenizer, english=False)
    assert basic("The Colour, Mr. Smith!").split() == ["the", "colour", "mr", "smith"]
    with pytest.raises(ValueError, match="unknown normalizer"):
        text_normalizer("fancy", tokenizer, english=True)


def test_comparison_table_and_json(tmp_path):
    for folder, hyps in ((tmp_path / "zero_shot", HYPS), (tmp_path, REFS)):
        scorer = Scorer(str.strip, ["dialect"])
        scorer.append(["u1", "u2", "u3", "u4"], hyps, REFS, {"dialect": ["a", "a", "b", "b"]})
        scorer.write(folder, "test")
    results = evaluation.write_comparison(tmp_path, "test")
    saved = json.loads((tmp_path / "demo_results.json").read_text())
    assert saved == results
    assert saved["fine_tuned"]["overall"]["wer"] == 0.0
    assert saved["zero_shot"]["per_dialect"]["a"]["wer"] == pytest.approx(
        100 * jiwer.wer(REFS[:2], HYPS[:2])
    )
    assert "relative WER reduction: 100.0%" in (tmp_path / "demo_results.txt").read_text()
