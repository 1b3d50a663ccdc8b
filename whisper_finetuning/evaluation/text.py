"""Word-sequence helpers shared by training and the analysis tools: standard library only, so
the diagnosis and the review server import them without torch."""

import math
from dataclasses import dataclass


def is_nonspeech(transcript):
    """Whether a transcript marks a non-speech row (silence, noise, music): empty, or only
    white space."""
    return not transcript.strip()


def edit_distance(a, b):
    """Levenshtein distance between two word lists (substitutions, insertions, deletions)."""
    previous = list(range(len(b) + 1))
    for i, word_a in enumerate(a, 1):
        current = [i]
        for j, word_b in enumerate(b, 1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word_a != word_b))
            )
        previous = current
    return previous[-1]


@dataclass(frozen=True)
class LoopStop:
    """A tail counts as a loop when one unit of tokens repeats at least ``min_repeats`` times
    consecutively over at least ``min_tokens`` tokens (so ``no no no`` is speech, not a loop)."""

    min_repeats: int
    min_tokens: int

    def __post_init__(self):
        if self.min_repeats < 2:
            raise ValueError(f"loop_min_repeats must be 2 or more, not {self.min_repeats}")

    def cut(self, tokens):
        """The length to keep, or None: up to the end of the repeating span's first period,
        which is one copy of the unit (rotated, when the tokens before the loop happen to end
        like the unit does)."""
        n = len(tokens)
        for period in range(1, n // self.min_repeats + 1):
            repeats = max(self.min_repeats, math.ceil(self.min_tokens / period))
            span = period * repeats
            if span > n or tokens[-1] != tokens[-1 - period]:
                continue
            if tokens[n - span + period :] == tokens[n - span : n - period]:
                return n - span + period
        return None
