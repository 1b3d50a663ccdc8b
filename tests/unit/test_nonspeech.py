"""Non-speech rows: kept, decoded and scored; the hallucination rate, its interval, repeated
5-grams and insertions equal a hand count."""

import math

import pytest
import torch
from transformers.models.whisper.english_normalizer import BasicTextNormalizer

from whisper_finetuning.data import examples
from whisper_finetuning.evaluation import scoring
from whisper_finetuning.model.asr import WhisperASR
from whisper_finetuning.model.fast_loss import nll_loss

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson(count, total):
    """The Wilson score interval, written out, in percent."""
    p, z2 = count / total, Z95**2
    centre = (p + z2 / (2 * total)) / (1 + z2 / total)
    half = Z95 * math.sqrt(p * (1 - p) / total + z2 / (4 * total**2)) / (1 + z2 / total)
    return [100 * (centre - half), 100 * (centre + half)]


def scripted_scorer():
    scorer = scoring.Scorer(BasicTextNormalizer(), ["dialect"])
    scorer.append(
        ["s1", "s2", "n1", "n2", "n3", "n4", "p"],
        [
            "the cat sat on the mat the cat sat on the mat",  # 6 insertions, a repeated 5-gram
            "hello world",
            "Thank you.",
            "",
            "...",  # no word once normalised: not a hallucination
            "beep beep beep",
            "x",
        ],
        ["the cat sat on the mat", "hello world", "", "   ", "", "", "?!"],
        {"dialect": ["north", "south", "north", "north", "south", "south", "south"]},
        durations=[2.0, 1.0, 3.0, 3.0, 6.0, 3.0, 1.0],
    )
    return scorer


def test_nonspeech_rows_are_scored_apart_and_equal_a_hand_count():
    summary = scripted_scorer().summary()
    assert summary["n_utterances"] == 2 and summary["unscorable_ids"] == ["p"]
    assert summary["wer"] == pytest.approx(100 * 6 / 8)  # speech rows only
    nonspeech = summary["nonspeech"]
    assert nonspeech["n"] == 4 and nonspeech["n_with_words"] == 2
    assert nonspeech["hallucination_rate"] == 50.0
    assert nonspeech["hallucination_rate_ci95"] == pytest.approx(wilson(2, 4))
    assert nonspeech["hallucination_rate_ci95"] == pytest.approx([15.00, 85.00], abs=0.01)
    assert nonspeech["words_per_minute"] == pytest.approx(5 / (15 / 60))  # 2 + 3 words, 15 s
    assert summary["repeated_ngram_rate"] == 50.0  # s1 of s1, s2
    assert summary["insertion_rate"] == pytest.approx(100 * 6 / 8)
    north, south = (summary["per_group"]["dialect"][d] for d in ("north", "south"))
    assert north["nonspeech"] == {
        "n": 2,
        "n_with_words": 1,
        "hallucination_rate": 50.0,
        "hallucination_rate_ci95": pytest.approx(wilson(1, 2)),
        "words_per_minute": pytest.approx(2 / (6 / 60)),
    }
    assert (north["repeated_ngram_rate"], north["insertion_rate"]) == (100.0, 100.0)
    assert south["nonspeech"]["n_with_words"] == 1
    assert south["nonspeech"]["words_per_minute"] == pytest.approx(3 / (9 / 60))
    assert (south["repeated_ngram_rate"], south["insertion_rate"]) == (0.0, 0.0)
    assert south["n_unscorable"] == 1


def test_a_rate_over_no_rows_is_undefined_and_all_rows_clean_is_zero():
    assert scoring.nonspeech_rates([]) == {
        "n": 0,
        "n_with_words": 0,
        "hallucination_rate": None,
        "hallucination_rate_ci95": None,
        "words_per_minute": None,
    }
    clean = scoring.nonspeech_rates([{"hyp_words": 0, "duration": 30.0}] * 3)
    assert clean["hallucination_rate"] == 0.0
    assert clean["hallucination_rate_ci95"] == pytest.approx(wilson(0, 3))
    assert clean["words_per_minute"] == 0.0


def test_repeated_ngrams_count_overlapping_repeats_of_five_words():
    assert scoring.has_repeated_ngram("a b c d e a b c d e".split())
    assert scoring.has_repeated_ngram("la la la la la la".split())  # overlapping
    assert not scoring.has_repeated_ngram("la la la la la".split())
    assert not scoring.has_repeated_ngram("a b c d e f a b c d".split())


def test_summaries_and_comparisons_show_the_rates(tmp_path):
    scorer = scripted_scorer()
    summary = scorer.write(tmp_path, "test")
    assert scoring.format_headline(summary).endswith(
        "; non-speech: words on 2 of 4 (50.00%, 95% CI 15.00-85.00)"
    )
    markdown = (tmp_path / "summary_test.md").read_text()
    assert "| all | 4 | 2 | 50.00 | 15.00-85.00 | 20.0 | 50.00 | 75.00 |" in markdown
    assert "| north | 2 | 1 | 50.00 | 9.45-90.55 | 20.0 | 100.00 | 100.00 |" in markdown
    ids = [line.split('"id": "')[1][:2] for line in (tmp_path / "nonspeech_test.jsonl").open()]
    assert ids == ["n1", "n2", "n3", "n4"]
    for folder in (tmp_path / "zero_shot", tmp_path):
        scorer.write(folder, "accents")
    results = scoring.write_comparison(tmp_path, "accents")
    assert results["fine_tuned"]["overall"]["hallucination_rate"] == 50.0
    assert results["zero_shot"]["per_dialect"]["south"]["insertion_rate"] == 0.0
    table = (tmp_path / "demo_results.txt").read_text().splitlines()
    assert table[0].split() == [
        "dialect",
        *("zs WER ft WER zs CER ft CER zs BLEU ft BLEU zs CHRF ft CHRF".split()),
        *("zs HALL ft HALL zs REP5 ft REP5 zs INS ft INS".split()),
    ]
    assert table[-3].split()[-6:] == ["50.00", "50.00", "50.00", "50.00", "75.00", "75.00"]


# ------------------------------------------------ the no-speech target, as Whisper was trained --


@pytest.fixture(scope="module")
def whisper(random_whisper_dir):
    return WhisperASR(str(random_whisper_dir))


def test_a_nonspeech_row_trains_the_nospeech_probability_at_the_start_of_transcript(whisper):
    rows = {
        "speech": {"wrd": "hello there", "duration": 1.0, "spk_id": "a"},
        "silence": {"wrd": "  ", "duration": 1.0, "spk_id": "a"},
    }
    builder = examples.TrainingExamples(rows, whisper, seed=1, longform_probability=1.0)
    assert builder.active and whisper.tokenizer.convert_ids_to_tokens(whisper.no_speech) in (
        "<|nospeech|>",
        "<|nocaptions|>",  # the first checkpoints' name of it
    )
    assert whisper.no_speech == whisper.timestamp_begin - 2  # just before <|notimestamps|>
    sot, eot, nospeech = whisper.prompt()[0], whisper.eot, whisper.no_speech
    plan = builder.plan("silence")
    assert (plan.ids, plan.timestamps, plan.previous) == (("silence",), False, None)
    assert builder.tokens(plan) == ([sot, nospeech], [nospeech, eot], 1)
    assert builder.plan("speech").ids == ("speech",)  # a long-form example stops at silence
    # The recipe's loss on the row is -log p(<|nospeech|> | sot) - log p(eot | sot nospeech),
    # averaged: the very probability openai's no_speech_prob reads.
    torch.manual_seed(0)
    encoder_out = whisper.encode(whisper.features(0.1 * torch.randn(1, 16000)))
    tokens_bos, tokens_eos, prompt_len = builder.tokens(plan)
    with torch.no_grad():
        hidden = whisper.decoder_hidden(torch.tensor([tokens_bos]), encoder_out)
        aligned = examples.align_to_targets(hidden, [prompt_len], len(tokens_eos))
        loss, _ = nll_loss(
            whisper.model.proj_out, aligned, torch.tensor([tokens_eos]), torch.ones(1)
        )
        log_probs = whisper.forward_decoder(torch.tensor([[sot, nospeech]]), encoder_out)
        log_probs = log_probs.float().log_softmax(-1)[0]
    expected = -(log_probs[0, nospeech] + log_probs[1, eot]) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_with_objective_mwer_a_nonspeech_row_is_an_empty_transcript(whisper):
    rows = {"silence": {"wrd": "", "duration": 1.0}}
    builder = examples.TrainingExamples(rows, whisper, seed=1, nonspeech_target=False)
    assert not builder.active
    prompt = whisper.prompt()
    assert builder.tokens(builder.plan("silence")) == (prompt, [whisper.eot], len(prompt))
