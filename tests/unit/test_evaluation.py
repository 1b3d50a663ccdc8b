"""Scoring: WER against jiwer, per-group numbers, interval coverage, normalisers."""

import json
import random

import jiwer
import pytest
import sacrebleu
from transformers import WhisperTokenizer
from transformers.models.whisper.english_normalizer import BasicTextNormalizer

from whisper_finetuning.evaluation import scoring as evaluation
from whisper_finetuning.evaluation import selection
from whisper_finetuning.evaluation.scoring import Scorer, text_normalizer
from whisper_finetuning.training import hparam_rules

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


def _edits(score):
    """Errors and reference length of one utterance, counted from its alignment."""
    return sum(op != "=" for op, _, _ in score["alignment"]), len(score["ref_tokens"])


def test_per_group_and_per_duration_equal_a_recomputation_from_the_alignments(tmp_path):
    rng = random.Random(7)
    vocabulary = [f"w{i}" for i in range(8)]
    ids, refs, hyps, dialects, speakers, durations = [], [], [], [], [], []
    for i in range(60):
        ref = [rng.choice(vocabulary) for _ in range(rng.randint(1, 12))]
        hyp = [w for w in ref if rng.random() > 0.1]
        hyp = [rng.choice(vocabulary) if rng.random() < 0.15 else w for w in hyp]
        hyp += ["extra"] * (rng.random() < 0.2)
        ids.append(f"u{i}")
        refs.append(" ".join(ref))
        hyps.append(" ".join(hyp))
        dialects.append(rng.choice("abc"))
        speakers.append(f"s{i % 6}")
        durations.append(rng.uniform(0.5, 35))
    scorer = Scorer(str.strip, ["dialect"])
    groups = {"dialect": dialects, "spk_id": speakers}
    for start in range(0, 60, 16):  # in batches, as training appends them
        batch = slice(start, start + 16)
        scorer.append(
            ids[batch],
            hyps[batch],
            refs[batch],
            {k: v[batch] for k, v in groups.items()},
            durations[batch],
        )
    summary = scorer.write(tmp_path, "valid")
    words = {s["key"]: _edits(s) for s in scorer.wer.scores}
    chars = {s["key"]: _edits(s) for s in scorer.cer.scores}

    def recomputed(members):
        wer = 100 * sum(words[i][0] for i in members) / sum(words[i][1] for i in members)
        cer = 100 * sum(chars[i][0] for i in members) / sum(chars[i][1] for i in members)
        return wer, cer, len(members)

    for value in "abc":
        members = [i for i, d in zip(ids, dialects, strict=True) if d == value]
        got = summary["per_group"]["dialect"][value]
        assert (got["wer"], got["cer"], got["n"]) == pytest.approx(recomputed(members))
        assert got["ci95"][0] <= got["wer"] <= got["ci95"][1]
    edges = [0, 2, 5, 10, 20, 30, float("inf")]
    labels = ["<2s", "2-5s", "5-10s", "10-20s", "20-30s", ">30s"]
    expected = {}
    for label, lo, hi in zip(labels, edges[:-1], edges[1:], strict=True):
        members = [i for i, d in zip(ids, durations, strict=True) if lo <= d < hi]
        if members:
            expected[label] = recomputed(members)
    assert list(summary["per_duration"]) == list(expected)
    for label, numbers in expected.items():
        got = summary["per_duration"][label]
        assert (got["wer"], got["cer"], got["n"]) == pytest.approx(numbers)
    utterances = [json.loads(line) for line in (tmp_path / "utterances_valid.jsonl").open()]
    assert [u["duration"] for u in utterances] == durations
    markdown = (tmp_path / "summary_valid.md").read_text()
    assert evaluation.format_headline(summary) in markdown
    a = summary["per_group"]["dialect"]["a"]
    interval = f"{a['ci95'][0]:.2f}-{a['ci95'][1]:.2f}"
    assert f"| a | {a['wer']:.2f} | {interval} | {a['cer']:.2f} | {a['bleu']:.2f} |" in markdown


def test_top_errors_count_the_normalised_alignments():
    scorer = Scorer(evaluation.BasicTextNormalizer())
    refs = ["The cat sat on the mat.", "hello world", "good morning to you", "the dog", "yes"]
    hyps = ["a cat sat on a mat", "Hello, word!", "good morning", "a dog", "yes yes"]
    scorer.append([f"u{i}" for i in range(5)], hyps, refs)
    assert scorer.summary()["top_errors"] == {
        "substitutions": [["the", "a", 3], ["world", "word", 1]],
        "insertions": [["yes", 1]],
        "deletions": [["to", 1], ["you", 1]],
    }


def test_headline_format():
    summary = {
        "wer": 11.654,
        "cer": 5.581,
        "wer_ci95": [9.5, 13.9],
        "cer_ci95": [4.25, 7.0],
        "bleu": 71.204,
        "bleu_ci95": [65.0, 77.5],
        "chrf": 83.1,
        "chrf_ci95": [80.0, 86.25],
        "n_utterances": 200,
    }
    assert evaluation.format_headline(summary) == (
        "WER 11.65% (95% CI 9.50-13.90), CER 5.58% (95% CI 4.25-7.00), "
        "BLEU 71.20 (95% CI 65.00-77.50), chrF 83.10 (95% CI 80.00-86.25), n=200"
    )
    summary["loop_stopped"] = 2
    assert evaluation.format_headline(summary).endswith("n=200, 2 repetition loop(s) stopped")


def test_summary_counts_the_loop_stopped_hypotheses(tmp_path):
    scorer = Scorer(str.strip)
    looped = [False, True, False, True]
    scorer.append(["u1", "u2", "u3", "u4"], HYPS, REFS, extra={"loop_stopped": looped})
    assert scorer.write(tmp_path, "valid")["loop_stopped"] == 2
    records = [json.loads(line) for line in open(tmp_path / "utterances_valid.jsonl")]
    assert [r["loop_stopped"] for r in records] == looped


def test_small_valid_warning_gives_the_utterances_needed():
    summary = {"wer_ci95": [10.0, 14.0], "n_utterances": 100}  # half-width 2 points
    message = evaluation.small_valid_warning([12.0, 12.5, 12.25], summary)
    # Spread 0.5 points: 100 x (2 / 0.5)^2 = 1600 utterances.
    assert "about 1600 valid utterances (now 100)" in message
    assert "+/-2.00 points" in message and "span 0.50 points" in message
    # A spread wider than the half-width separates the checkpoints; one epoch has no spread.
    assert evaluation.small_valid_warning([20.0, 12.0], summary) is None
    assert evaluation.small_valid_warning([12.0], summary) is None
    assert "no valid set size" in evaluation.small_valid_warning([12.0, 12.0], summary)


def _coverage(block_key, trials, rng, true_rate=0.2):
    """Share of simulated corpora whose WER interval covers the speaker population's rate.

    20 speakers with their own error rates (Beta(1, 4), mean 0.2) x 10 utterances x 10 words:
    utterances of one speaker are correlated, as in real test sets.
    """
    covered = 0
    for _ in range(trials):
        utterances = []
        for speaker in range(20):
            rate = rng.betavariate(1, 4)
            for i in range(10):
                errors = sum(rng.random() < rate for _ in range(10))
                utterances.append(
                    {"id": f"{speaker}_{i}", "spk_id": speaker, "word_errors": errors, "words": 10}
                )
        lo, hi = evaluation._bootstrap_ci95(utterances, "wer", block_key)
        covered += lo <= 100 * true_rate <= hi
    return covered / trials


def test_speaker_blocked_interval_covers_at_its_rate_and_utterance_resampling_does_not():
    rng = random.Random(3)
    trials = 200
    # Binomial tolerance: 95% +- 3 standard deviations of a share over 200 trials.
    tolerance = 3 * (0.95 * 0.05 / trials) ** 0.5
    assert abs(_coverage("spk_id", trials, rng) - 0.95) <= tolerance
    # Ignoring the speakers makes the interval far too narrow (measured: about 0.5).
    assert _coverage(None, 40, rng) < 0.8


GERMAN = ["Der Zug fährt um acht Uhr ab.", "Grüezi mitenand!", "Wir gehen heute an den See."]
GERMAN_HYPS = ["Der Zug fährt um 8 Uhr ab", "Grüezi mitenand", "Wir gehen heute zum See."]
ENGLISH_ROWS = ["The colour is grey, Mr. Smith.", "It is half past seven."]
ENGLISH_HYPS = ["the color is gray mister smith", "it is half past 7"]


def test_bleu_and_chrf_equal_sacrebleu_overall_and_per_group(tiny_en_dir, tmp_path):
    tokenizer = WhisperTokenizer.from_pretrained(tiny_en_dir)
    normalize = evaluation.Normalizers("auto", tokenizer)
    refs, hyps = GERMAN + ENGLISH_ROWS, GERMAN_HYPS + ENGLISH_HYPS
    languages = ["german"] * 3 + ["english"] * 2
    speakers = ["s1", "s2", "s1", "s3", "s3"]
    scorer = Scorer(normalize, ["language"])
    groups = {"language": languages, "spk_id": speakers}
    scorer.append([f"u{i}" for i in range(5)], hyps, refs, groups)
    summary = scorer.write(tmp_path, "test")

    english, basic = text_normalizer("english", tokenizer, True), BasicTextNormalizer()
    norm = [(english if lang == "english" else basic) for lang in languages]
    norm_refs = [n(r) for n, r in zip(norm, refs, strict=True)]
    norm_hyps = [n(h) for n, h in zip(norm, hyps, strict=True)]
    assert norm_hyps[3] == norm_refs[3]  # colour/color, Mr./mister: the English map applied
    assert summary["normalizer"] == {"english": "english", "german": "basic"}
    assert summary["bleu"] == pytest.approx(sacrebleu.corpus_bleu(norm_hyps, [norm_refs]).score)
    assert summary["chrf"] == pytest.approx(sacrebleu.corpus_chrf(norm_hyps, [norm_refs]).score)
    for language, rows in (("german", [0, 1, 2]), ("english", [3, 4])):
        got = summary["per_group"]["language"][language]
        group_hyps, group_refs = [norm_hyps[i] for i in rows], [[norm_refs[i] for i in rows]]
        assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(group_hyps, group_refs).score)
        assert got["chrf"] == pytest.approx(sacrebleu.corpus_chrf(group_hyps, group_refs).score)
        assert got["wer"] == pytest.approx(100 * jiwer.wer(group_refs[0], group_hyps))
    # Intervals resample speakers: with one speaker per block the interval is that of blocks.
    lo, hi = summary["bleu_ci95"]
    assert lo <= summary["bleu"] <= hi and lo < hi
    german = summary["per_group"]["language"]["german"]
    assert german["chrf_ci95"][0] <= german["chrf"] <= german["chrf_ci95"][1]
    assert (
        "Normaliser per language: english english, german basic"
        in (tmp_path / "summary_test.md").read_text()
    )


def test_references_with_no_word_are_left_out_of_bleu_and_chrf_too(tiny_en_dir):
    tokenizer = WhisperTokenizer.from_pretrained(tiny_en_dir)
    scorer = Scorer(evaluation.Normalizers("auto", tokenizer), ["language"])
    refs = ["?!...", GERMAN[0], "...", GERMAN[1]]
    hyps = ["hallo", GERMAN_HYPS[0], "noch mehr", GERMAN_HYPS[1]]
    scorer.append(["a", "b", "c", "d"], hyps, refs, {"language": ["german"] * 4})
    summary = scorer.summary()
    basic = BasicTextNormalizer()
    kept_hyps, kept_refs = [basic(hyps[1]), basic(hyps[3])], [[basic(refs[1]), basic(refs[3])]]
    assert summary["unscorable_ids"] == ["a", "c"] and summary["n_utterances"] == 2
    assert summary["bleu"] == pytest.approx(sacrebleu.corpus_bleu(kept_hyps, kept_refs).score)
    assert summary["chrf"] == pytest.approx(sacrebleu.corpus_chrf(kept_hyps, kept_refs).score)


def test_bleu_interval_resamples_speaker_blocks():
    """The BLEU interval equals a direct bootstrap over speakers of sacrebleu's corpus BLEU."""
    rng = random.Random(5)
    vocabulary = [f"w{i}" for i in range(12)]
    ids, refs, hyps, speakers = [], [], [], []
    for i in range(40):
        ref = [rng.choice(vocabulary) for _ in range(8)]
        hyps.append(" ".join(w if rng.random() > 0.3 else "x" for w in ref))
        refs.append(" ".join(ref))
        ids.append(f"u{i}")
        speakers.append(f"s{i % 5}")
    scorer = Scorer(str.strip)
    scorer.append(ids, hyps, refs, {"spk_id": speakers})
    summary = scorer.summary()
    by_speaker = {s: [i for i in range(40) if speakers[i] == s] for s in sorted(set(speakers))}
    blocks = list(by_speaker.values())
    draw = random.Random(evaluation.BOOTSTRAP_SEED)
    estimates = []
    for _ in range(evaluation.BOOTSTRAP_SAMPLES):
        rows = [i for block in draw.choices(blocks, k=len(blocks)) for i in block]
        estimates.append(
            sacrebleu.corpus_bleu([hyps[i] for i in rows], [[refs[i] for i in rows]]).score
        )
    estimates.sort()
    assert summary["bleu_ci95"] == pytest.approx([estimates[25], estimates[974]])


class _Checkpoint:
    def __init__(self, meta):
        self.meta = meta


def test_selection_by_each_metric_keeps_the_right_epoch():
    """Scripted valid scores per epoch: lower WER/CER, higher BLEU/chrF wins, ties earliest."""
    epochs = [
        {"epoch": 1, "loss": 0.9, "WER": 30.0, "CER": 12.0, "BLEU": 40.0, "chrF": 60.0},
        {"epoch": 2, "loss": 0.7, "WER": 25.0, "CER": 13.0, "BLEU": 48.0, "chrF": 66.0},
        {"epoch": 3, "loss": 0.6, "WER": 25.0, "CER": 11.0, "BLEU": 45.0, "chrF": 66.0},
        {"epoch": 4, "loss": 0.6, "WER": 27.0, "CER": 11.0, "BLEU": 48.0, "chrF": 64.0},
    ]
    checkpoints = [_Checkpoint(meta) for meta in epochs]
    expected = {"WER": 2, "CER": 3, "BLEU": 2, "chrF": 2, "loss": 3}
    for key, epoch in expected.items():
        best = max(checkpoints, key=selection.best_earliest(key))
        assert best.meta["epoch"] == epoch, key
    assert max(checkpoints, key=selection.min_wer_earliest).meta["epoch"] == 2
    assert hparam_rules.check({"selection_metric": "bleu"}) == (
        "selection_metric must be one of WER, CER, BLEU, chrF, not 'bleu'"
    )


# Four epochs: the best WER is epoch 2's, the best BLEU epoch 3's, the last is epoch 4.
SCORED_EPOCHS = [
    {"epoch": 1, "loss": 0.9, "WER": 30.0, "CER": 12.0, "BLEU": 40.0, "chrF": 60.0},
    {"epoch": 2, "loss": 0.8, "WER": 20.0, "CER": 10.0, "BLEU": 44.0, "chrF": 62.0},
    {"epoch": 3, "loss": 0.7, "WER": 25.0, "CER": 11.0, "BLEU": 50.0, "chrF": 61.0},
    {"epoch": 4, "loss": 0.6, "WER": 22.0, "CER": 11.5, "BLEU": 46.0, "chrF": 63.0},
]


@pytest.mark.parametrize(("metric", "kept"), [("BLEU", 3), ("WER", 2), ("chrF", 4)])
def test_selection_over_epochs_keeps_and_loads_the_best_by_the_metric(tmp_path, metric, kept):
    """As train.py keeps checkpoints: after each epoch's validation save_and_keep_only by
    best_earliest(selection_metric) (the latest stays too, for resuming), after training only
    the best; then the test stage loads it. BLEU keeps epoch 3, neither WER's epoch 2 nor the
    last; each checkpoint's weights name their epoch."""
    import torch

    from whisper_finetuning.training.checkpointing import AtomicCheckpointer

    model = torch.nn.Linear(1, 1, bias=False)
    checkpointer = AtomicCheckpointer(tmp_path, {"model": model})
    for meta in SCORED_EPOCHS:
        with torch.no_grad():
            model.weight.fill_(meta["epoch"])
        # A fresh list each time, as train.py's kept_checkpoints gives: SpeechBrain's
        # save_and_keep_only appends ckpt_recency to the list it is given.
        importance = [selection.best_earliest(metric)]
        checkpointer.save_and_keep_only(meta=meta, importance_keys=importance, num_to_keep=1)
        best_so_far = selection.best_epoch(SCORED_EPOCHS[: meta["epoch"]], metric)
        kept_now = sorted(c.meta["epoch"] for c in checkpointer.list_checkpoints())
        assert kept_now == sorted({best_so_far, meta["epoch"]})
    checkpointer.delete_checkpoints(
        num_to_keep=1, importance_keys=[selection.best_earliest(metric)]
    )
    assert [c.meta["epoch"] for c in checkpointer.list_checkpoints()] == [kept]
    assert selection.best_epoch(SCORED_EPOCHS, metric) == kept
    with torch.no_grad():
        model.weight.fill_(0.0)
    checkpointer.recover_if_possible(importance_key=selection.best_earliest(metric))
    assert model.weight.item() == kept
