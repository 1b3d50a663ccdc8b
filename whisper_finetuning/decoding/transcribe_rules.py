"""openai/whisper's ``transcribe`` rules: temperature fallback and the no-speech skip.

As ``whisper/transcribe.py`` (``decode_with_fallback`` and the loop after it) applies them to
each 30 s window:

* the window is decoded at each of ``temperatures`` in turn until the result passes; it fails
  when its compression ratio exceeds ``compression_ratio_threshold`` (too repetitive) or its
  mean log-probability is below ``logprob_threshold`` (too unlikely), but never when its
  no-speech probability exceeds ``no_speech_threshold`` (silence: another temperature would
  not help). At temperature 0 the configured search decodes (greedy or beam); above 0
  ``best_of`` samples are drawn (openai drops ``beam_size`` there; its command line's
  ``--best_of`` is 5, ``transcribe()``'s own default one sample) and the best by openai's
  ``MaximumLikelihoodRanker`` is the result (``best_sample``). If every temperature fails, the
  last result stands;
* the result is skipped (an empty hypothesis; in long form the window is passed over) when
  its no-speech probability exceeds ``no_speech_threshold``, unless its mean log-probability
  exceeds ``logprob_threshold``.

``compression_ratio`` is the text's UTF-8 length over its zlib-compressed length; the mean
log-probability is the summed log-probability of the tokens and the end of text over the
number of tokens + 1; the no-speech probability is that of ``<|nospeech|>`` at the start of
transcript (``search.no_speech_probabilities``). A threshold of None switches its rule off.
"""

import dataclasses
import zlib
from dataclasses import dataclass

OPENAI_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass(frozen=True)
class Attempt:
    """One decode of one window: tokens without prompt or end of text, whether a loop stop cut
    them, their summed log-probability (end of text included), the no-speech probability
    (None when not computed) and the temperature it was decoded at."""

    tokens: list
    looped: bool
    sum_logprob: float
    no_speech_prob: float | None
    temperature: float

    @property
    def avg_logprob(self):
        """openai's ``avg_logprob``: the summed log-probability over tokens + 1."""
        return self.sum_logprob / (len(self.tokens) + 1)


def compression_ratio(text):
    """openai's ``compression_ratio``: UTF-8 bytes over zlib-compressed bytes."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data))


@dataclass(frozen=True)
class TranscribeRules:
    """The thresholds of openai's ``transcribe`` (its defaults), and the seed of the samples
    drawn above temperature 0."""

    temperatures: tuple = OPENAI_TEMPERATURES
    compression_ratio_threshold: float | None = 2.4
    logprob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    seed: int = 0
    best_of: int = 5

    @classmethod
    def of(cls, hparams):
        """The rules the hparams set (``temperatures``, the three thresholds, ``seed``,
        ``best_of``)."""
        return cls(
            tuple(float(t) for t in hparams["temperatures"]),
            hparams["compression_ratio_threshold"],
            hparams["logprob_threshold"],
            hparams["no_speech_threshold"],
            hparams["seed"],
            hparams["best_of"],
        )

    def _silent(self, attempt):
        """Whether the no-speech probability exceeds its threshold."""
        return self.no_speech_threshold is not None and (
            attempt.no_speech_prob > self.no_speech_threshold
        )

    def needs_fallback(self, attempt, text):
        """Whether ``attempt`` (whose text is ``text``) is decoded again, hotter."""
        too_repetitive = (
            self.compression_ratio_threshold is not None
            and compression_ratio(text) > self.compression_ratio_threshold
        )
        too_unlikely = (
            self.logprob_threshold is not None and attempt.avg_logprob < self.logprob_threshold
        )
        return (too_repetitive or too_unlikely) and not self._silent(attempt)

    def is_skipped(self, attempt):
        """Whether ``attempt`` is no speech: an empty hypothesis."""
        likely_enough = (
            self.logprob_threshold is not None and attempt.avg_logprob > self.logprob_threshold
        )
        return self._silent(attempt) and not likely_enough


def best_sample(attempts, length_penalty=None):
    """The best of one window's samples by openai's ``MaximumLikelihoodRanker``
    (``whisper/decoding.py``): the highest summed log-probability over the length penalty,
    the number of tokens (end of text not counted) when ``length_penalty`` is None (the
    ``transcribe`` command line's default), else ``((5 + length) / 6) ** length_penalty``; the
    first of equal scores (``np.argmax``). An empty sample counts as one token long (openai
    would divide by zero; Whisper's suppression of a first end of text rules it out)."""

    def score(attempt):
        length = max(len(attempt.tokens), 1)
        penalty = length if length_penalty is None else ((5 + length) / 6) ** length_penalty
        return attempt.sum_logprob / penalty

    return max(attempts, key=score)  # max keeps the first of equal scores


def transcribe(rules, decode, n_rows, text_of):
    """The final ``Attempt`` of each of ``n_rows`` windows under ``rules``:
    ``decode(rows, temperature)`` decodes the listed rows (failing ones only, after the
    first temperature); ``text_of(tokens)`` is the text the compression ratio is taken of."""
    found, pending = {}, list(range(n_rows))
    for temperature in rules.temperatures:
        for row, attempt in zip(pending, decode(pending, temperature), strict=True):
            found[row] = attempt
        pending = [r for r in pending if rules.needs_fallback(found[r], text_of(found[r].tokens))]
        if not pending:
            break
    return [found[row] for row in range(n_rows)]


def attach(hparams):
    """Give the yaml's searches (``valid_search``, ``test_search``) the hparams' rules; the
    valid search falls back over ``valid_temperatures`` where set (``[0.0]``: never)."""
    rules = TranscribeRules.of(hparams)
    valid_temperatures = hparams.get("valid_temperatures")
    valid_rules = rules
    if valid_temperatures is not None:
        valid_rules = dataclasses.replace(rules, temperatures=tuple(map(float, valid_temperatures)))
    for key, key_rules in (("valid_search", valid_rules), ("test_search", rules)):
        if key in hparams:
            hparams[key] = dataclasses.replace(hparams[key], rules=key_rules)
