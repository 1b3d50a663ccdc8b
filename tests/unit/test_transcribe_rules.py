"""openai's transcribe rules (temperature fallback, no-speech skip) fire as openai specifies:
the rules alone on given numbers, the searchers on a scripted decoder whose no-speech
probability, token probabilities and loops are set by hand, and a random Whisper."""

import math
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from whisper_finetuning.decoding import search
from whisper_finetuning.decoding.longform import Transcription, WindowDecoder, transcribe_together
from whisper_finetuning.decoding.transcribe_rules import (
    OPENAI_TEMPERATURES,
    Attempt,
    TranscribeRules,
    attach,
    best_sample,
    compression_ratio,
)
from whisper_finetuning.model.asr import EncoderStates, WhisperASR
from whisper_finetuning.training import hparam_rules

RULES = TranscribeRules()  # openai's defaults (its command line's: best_of 5)
ONE_SAMPLE = TranscribeRules(best_of=1)  # transcribe()'s own default


def attempt(no_speech, avg_logprob, tokens=(1, 2)):
    tokens = list(tokens)
    return Attempt(tokens, False, avg_logprob * (len(tokens) + 1), no_speech, 0.0)


def test_the_rules_on_given_numbers():
    assert RULES.temperatures == (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    text = "one two three " * 8
    assert compression_ratio(text) == len(text) / len(zlib.compress(text.encode()))
    assert compression_ratio(text) > 2.4 and compression_ratio("one two three") < 2.4
    # needs_fallback: repetitive or unlikely, unless silent (no_speech_prob > 0.6)
    assert RULES.needs_fallback(attempt(0.1, -0.5), text)
    assert RULES.needs_fallback(attempt(0.1, -1.01), "fine")
    assert not RULES.needs_fallback(attempt(0.1, -1.0), "fine")  # not below -1
    assert not RULES.needs_fallback(attempt(0.61, -3.0), text)  # silence: no fallback
    assert RULES.needs_fallback(attempt(0.6, -3.0), text)  # 0.6 is not above 0.6
    # skipped: no_speech_prob > 0.6 and avg_logprob not above -1
    assert RULES.is_skipped(attempt(0.61, -1.0))
    assert not RULES.is_skipped(attempt(0.61, -0.99))
    assert not RULES.is_skipped(attempt(0.6, -3.0))
    # null switches a rule off; without logprob_threshold silence alone skips
    assert TranscribeRules(logprob_threshold=None).is_skipped(attempt(0.7, 0.0))
    assert not TranscribeRules(no_speech_threshold=None).is_skipped(attempt(1.0, -5.0))
    off = TranscribeRules(compression_ratio_threshold=None, logprob_threshold=None)
    assert not off.needs_fallback(attempt(0.0, -9.0), text)
    assert attempt(0.0, -2.0, [5, 6, 7]).avg_logprob == -2.0  # summed / (tokens + 1)


SOT, EOT, NO_SPEECH, NO_TIMESTAMPS, VOCAB = 8, 9, 10, 11, 12
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven"]
SOFT = -0.5  # the other tokens' logit: the chosen one's log-probability is -log(1 + 11 e^-0.5)
SOFT_LOGPROB = -math.log(1 + 11 * math.exp(SOFT))  # -2.04
# Per utterance: its <|nospeech|> logit at the start of transcript, and per attempt (decode)
# its tokens (end of text last) and whether they are soft (else certain: logit 0, others -inf).
SCRIPTS = [
    # a loop: too repetitive at temperature 0, fine at 0.2
    (0.0, [([1, 2, 3] * 8 + [EOT], False), ([4, 5, EOT], False)]),
    # silence: <|nospeech|> at 0.9 and unlikely text: no fallback, skipped
    (math.log(99), [([6, EOT], True)]),
    # <|nospeech|> at 0.9 but certain text: kept
    (math.log(99), [([7, EOT], False)]),
    # unlikely at every temperature: all six tried, the last result stands
    (0.0, [([6, 6, EOT], True)]),
]


class RuleScript:
    """A stand-in ``WhisperASR``: utterance ``i`` (its encoder output holds ``i``) follows
    ``SCRIPTS[i]``, one script per decode of it."""

    eot, no_speech, start_of_transcript = EOT, NO_SPEECH, SOT
    generation_config = SimpleNamespace(suppress_tokens=[], begin_suppress_tokens=[])
    model = SimpleNamespace(config=SimpleNamespace(max_target_positions=41))

    def __init__(self):
        self.attempts, self.step = [0] * len(SCRIPTS), 0

    def prompt(self):
        return [SOT, NO_TIMESTAMPS]

    def decode_text(self, tokens):
        return " ".join(WORDS[t] for t in tokens if t < len(WORDS))

    def forward_decoder(self, tokens, encoder_out, cache):
        utterances = [int(u) for u in encoder_out[:, 0, 0]]
        starting = tokens.shape[1] == 2  # the prompt: a search starts
        if starting:
            self.step = 0
            for u in utterances:
                self.attempts[u] += 1
        logits = torch.zeros(tokens.shape[0], tokens.shape[1], VOCAB)
        for row, u in enumerate(utterances):
            no_speech_logit, scripts = SCRIPTS[u]
            if starting:
                logits[row, 0, NO_SPEECH] = no_speech_logit
            script, soft = scripts[min(self.attempts[u], len(scripts)) - 1]
            logits[row, -1] = SOFT if soft else -torch.inf
            logits[row, -1, script[min(self.step, len(script) - 1)]] = 0.0
        self.step += 1
        return logits


def utterances():
    return torch.arange(len(SCRIPTS), dtype=torch.float32).reshape(-1, 1, 1)


@pytest.mark.parametrize("best_of", [1, 5])
@pytest.mark.parametrize("beam_size", [1, 3])
def test_fallback_and_skip_fire_as_openai_specifies(beam_size, best_of):
    model = RuleScript()
    rules = TranscribeRules(best_of=best_of)
    if beam_size == 1:
        first = lambda out, prompts: search.greedy_attempts(model, out, None, None, prompts)  # noqa: E731
    else:
        first = lambda out, prompts: search.beam_attempts(model, out, 3, prompts=prompts)  # noqa: E731
    found = search.search_by_rules(model, utterances(), None, rules, first, None, None)
    # one decode at temperature 0, best_of samples at each temperature above it
    assert model.attempts == [1 + best_of, 1, 1, 1 + 5 * best_of]
    assert [a.temperature for a in found] == [0.2, 0.0, 0.0, 1.0]
    assert [a.tokens for a in found[:3]] == [[4, 5], [], [7]]  # the silence is empty
    assert [a.no_speech_prob for a in found] == pytest.approx([1 / 12, 0.9, 0.9, 1 / 12])
    assert found[1].sum_logprob == pytest.approx(2 * SOFT_LOGPROB)  # 6, end of text: mean -2.04
    assert found[0].avg_logprob == 0.0 and found[2].avg_logprob == 0.0
    assert found[3].avg_logprob < -1  # whatever was sampled at temperature 1
    # The searchers of the yaml, under the rules, give the same transcripts.
    states = EncoderStates([([0, 1, 2, 3], utterances())])
    searcher = search.BeamSearch(beam_size=beam_size, rules=rules)
    tokens, looped = searcher(RuleScript(), states)
    assert tokens[:3] == [[4, 5], [], [7]] and looped == [False] * 4
    # Without rules: the temperature-0 search alone.
    plain, _ = search.BeamSearch(beam_size=beam_size)(RuleScript(), states)
    assert plain[:3] == [[1, 2, 3] * 8, [6], [7]] and plain[3] == [6, 6]


def test_a_random_whisper_s_no_speech_probability_and_threshold(random_whisper_dir):
    whisper = WhisperASR(str(random_whisper_dir)).eval()
    torch.manual_seed(0)
    out = whisper.encode(whisper.features(0.1 * torch.randn(2, 16000)))
    prompt = torch.tensor([whisper.prompt()] * 2)
    with torch.no_grad():
        logits = whisper.forward_decoder(prompt, out)
    expected = logits[:, 0].float().softmax(-1)[:, whisper.no_speech].tolist()
    found = search.greedy_attempts(whisper, out, 6)
    assert [a.no_speech_prob for a in found] == pytest.approx(expected)
    states = EncoderStates([([0, 1], out)])
    plain, _ = search.GreedySearch(6)(whisper, states)
    off = TranscribeRules((0.0,), None, None, None)
    assert search.GreedySearch(6, rules=off)(whisper, states)[0] == plain
    everything_silent = TranscribeRules((0.0,), None, None, 0.0)
    assert search.GreedySearch(6, rules=everything_silent)(whisper, states)[0] == [[], []]


def test_the_hparams_give_the_yaml_s_searches_openai_s_rules():
    hparams = {
        "temperatures": list(OPENAI_TEMPERATURES),
        "compression_ratio_threshold": 2.4,
        "logprob_threshold": -1.0,
        "no_speech_threshold": 0.6,
        "seed": 7,
        "best_of": 3,
        "valid_search": search.GreedySearch(8),
        "test_search": search.BeamSearch(4),
    }
    attach(hparams)
    assert hparams["test_search"].rules == TranscribeRules(seed=7, best_of=3)
    assert hparams["valid_search"].rules == TranscribeRules(seed=7, best_of=3)
    assert hparams["test_search"].beam_size == 4


def test_valid_temperatures_switch_the_fallback_off_for_the_valid_search_alone():
    hparams = {
        "temperatures": list(OPENAI_TEMPERATURES),
        "valid_temperatures": [0.0],
        "compression_ratio_threshold": 2.4,
        "logprob_threshold": -1.0,
        "no_speech_threshold": 0.6,
        "seed": 0,
        "best_of": 5,
        "valid_search": search.GreedySearch(8),
        "test_search": search.BeamSearch(4),
    }
    attach(hparams)
    assert hparams["valid_search"].rules == TranscribeRules(temperatures=(0.0,))
    assert hparams["test_search"].rules == TranscribeRules()


def test_long_form_passes_a_skipped_window_over_and_resets_the_prompt_when_hot():
    begin = 1000
    transcription = Transcription(70 * 16000, begin)
    transcription.accept([])  # no speech: 30 s on, nothing kept
    assert (transcription.seek, transcription.segments, transcription.windows) == (3000, [], 1)
    transcription.accept([begin, 1, begin + 100], temperature=0.4)
    assert transcription.previous == [begin, 1, begin + 100]  # conditioned on it
    transcription.accept([begin, 2, begin + 100], temperature=0.6)  # above 0.5: reset
    assert transcription.previous == [] and len(transcription.all_tokens) == 6


def test_long_form_windows_under_the_rules(random_whisper_dir):
    whisper = WhisperASR(str(random_whisper_dir)).eval()
    torch.manual_seed(1)
    wavs = [0.1 * torch.randn(16000 * 35)]
    silent = TranscribeRules((0.0,), None, None, 0.0)
    decoder = WindowDecoder(whisper, wavs, max_new_tokens=4, rules=silent)
    transcription = Transcription(len(wavs[0]), whisper.timestamp_begin)
    transcribe_together(decoder, [transcription])
    assert (transcription.segments, transcription.windows) == ([], 2)


def test_the_hparam_rules_name_what_they_allow():
    assert hparam_rules.check({"temperatures": [0.0, 0.5]}) is None
    assert hparam_rules.check({"temperatures": [0.4, 0.2]}) == (
        "temperatures must be a non-empty list of increasing temperatures >= 0, not [0.4, 0.2] "
        "(not increasing)"
    )
    assert hparam_rules.check({"no_speech_threshold": 1.5}) == (
        "no_speech_threshold must be a number from 0 to 1 or null, not 1.5"
    )
    assert hparam_rules.check({"logprob_threshold": None}) is None


def test_a_sample_is_the_inverse_distribution_at_its_key_s_number_in_any_batch():
    logits = torch.log(torch.tensor([[0.0, 0.25, 0.75], [0.5, 0.5, 0.0]]))
    keys = [(0, 0.2, (8,), (i,)) for i in range(2)]
    drawn = search.sample_tokens(logits, 1.0, keys)[:, 0].tolist()
    numbers = [search._uniform(key) for key in keys]
    assert drawn == [1 if numbers[0] < 0.25 else 2, 0 if numbers[1] < 0.5 else 1]
    alone = [search.sample_tokens(logits[i : i + 1], 1.0, keys[i : i + 1]).item() for i in (0, 1)]
    assert alone == drawn
    # over many keys the draws follow the distribution (0.25 / 0.75)
    many = [(0, 0.2, (8,), (i,)) for i in range(2000)]
    tokens = search.sample_tokens(logits[:1].expand(2000, -1), 1.0, many)[:, 0]
    assert tokens.ne(0).all() and abs(tokens.eq(1).float().mean().item() - 0.25) < 0.03


def openai_ranker(samples, length_penalty=None):
    """openai's ``MaximumLikelihoodRanker.rank`` for one window, written out as it is:
    ``np.argmax`` of the summed log-probabilities over the length penalty."""
    scores = []
    for sample in samples:
        length = len(sample.tokens)
        penalty = length if length_penalty is None else ((5 + length) / 6) ** length_penalty
        scores.append(sample.sum_logprob / penalty)
    return int(np.argmax(scores))


def test_the_best_sample_is_openai_s_likeliest_per_token():
    short = Attempt([1, 2], False, -3.0, 0.1, 0.2)  # -1.5 per token
    long = Attempt([1, 2, 3, 4], False, -4.0, 0.1, 0.2)  # -1.0 per token: the best
    tie = Attempt([5, 6, 7, 8], False, -4.0, 0.1, 0.2)
    assert best_sample([short, long, tie]) is long  # the first of equal scores
    assert best_sample([short, tie, long]) is tie
    # with openai's length penalty ((5 + n) / 6) ** p: -3 / 1.1667 beats -4 / 1.5 at p = 1,
    # but at p = 0 (no normalisation) the summed -3 wins too; at p = 3 the long one does
    assert best_sample([short, long], length_penalty=1.0) is short
    assert best_sample([short, long], length_penalty=3.0) is long
    for penalty in (None, 1.0, 3.0):
        samples = [short, long, tie]
        assert best_sample(samples, penalty) is samples[openai_ranker(samples, penalty)]


def test_best_of_keeps_openai_s_pick_among_samples_drawn_as_each_row_alone(random_whisper_dir):
    whisper = WhisperASR(str(random_whisper_dir)).eval()
    torch.manual_seed(0)
    out = whisper.encode(whisper.features(0.1 * torch.randn(3, 16000)))
    prompts = torch.tensor([whisper.prompt()] * 3)
    # logprob_threshold 0 fails every decode: each row is sampled at 0.5 and at 1.0, and the
    # last temperature's pick stands
    rules = TranscribeRules((0.0, 0.5, 1.0), None, 0.0, None, seed=4, best_of=4)

    def greedy(o, p):
        return search.greedy_attempts(whisper, o, 6, None, p)

    found = search.search_by_rules(whisper, out, prompts, rules, greedy, 6, None)
    assert [a.temperature for a in found] == [1.0] * 3
    for row in range(3):
        # sample k of the row decoded alone (k > 0 joins its sampling keys)
        samples = [
            search.greedy_attempts(
                whisper, out[row : row + 1], 6, None, prompts[row : row + 1],
                temperature=1.0, seed=4, samples=[k],
            )[0]
            for k in range(4)
        ]  # fmt: skip
        assert len({tuple(s.tokens) for s in samples}) > 1  # the samples differ
        best = samples[openai_ranker(samples)]
        assert found[row].tokens == best.tokens  # the batch's float sums differ in the last bits
        assert found[row].sum_logprob == pytest.approx(best.sum_logprob, rel=1e-6)
        (alone,) = search.search_by_rules(
            whisper, out[row : row + 1], prompts[row : row + 1], rules, greedy, 6, None
        )
        assert (alone.tokens, alone.temperature) == (found[row].tokens, 1.0)


def test_one_sample_decodes_as_the_rules_did_before_best_of(random_whisper_dir):
    whisper = WhisperASR(str(random_whisper_dir)).eval()
    torch.manual_seed(0)
    out = whisper.encode(whisper.features(0.1 * torch.randn(3, 16000)))
    prompts = torch.tensor([whisper.prompt()] * 3)
    rules = TranscribeRules(logprob_threshold=0.0, seed=3, best_of=1)  # every row falls back

    def greedy(o, p):
        return search.greedy_attempts(whisper, o, 6, None, p)

    found = search.search_by_rules(whisper, out, prompts, rules, greedy, 6, None)
    # the fallback as it was: one sample per temperature, keyed without a sample number
    last = [
        search.greedy_attempts(whisper, out, 6, None, prompts, temperature=1.0, seed=3)[row]
        for row in range(3)
    ]
    assert found == last
    states = EncoderStates([([0, 1, 2], out)])
    assert search.GreedySearch(6, rules=rules)(whisper, states)[0] == [a.tokens for a in last]


def test_valid_temperatures_are_null_or_a_fallback_sequence():
    from whisper_finetuning.training.hparam_rules import check

    assert check({"valid_temperatures": None}) is None
    assert check({"valid_temperatures": [0.0, 0.5]}) is None
    assert check({"valid_temperatures": [0.5, 0.2]}) == (
        "valid_temperatures must be a non-empty list of increasing temperatures >= 0 or null, "
        "not [0.5, 0.2] (not increasing)"
    )
