"""The statistics behind the diagnosis: paired bootstrap, permutation and rank tests.

Each function is small and deterministic (fixed seeds), so a report can be reproduced.
"""

import re

import numpy as np
from scipy import stats

from whisper_finetuning.evaluation.text import edit_distance

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_CHUNK = 250
PERMUTATIONS = 5000
SEED = 0
WORD = re.compile(r"[\w']+")


def paired_bootstrap_difference(
    errors_a, errors_b, words, blocks=None, samples=None, seed=SEED, confidence=0.95
):
    """WER(a) - WER(b) in points, with a percentile interval from a paired bootstrap.

    Utterances (or whole blocks, e.g. speakers) are resampled together for both systems, so
    the interval reflects the difference on the same audio, not two independent noises.
    Returns ``(point, lo, hi, n_blocks)``.
    """
    errors_a, errors_b, words = (np.asarray(x, dtype=float) for x in (errors_a, errors_b, words))
    if blocks is None:
        blocks = np.arange(len(words))
    _, block_index = np.unique(np.asarray(blocks), return_inverse=True)
    n_blocks = int(block_index.max()) + 1
    per_block = np.zeros((3, n_blocks))
    for row, values in enumerate((errors_a, errors_b, words)):
        np.add.at(per_block[row], block_index, values)
    point = 100.0 * (errors_a.sum() - errors_b.sum()) / words.sum()
    rng = np.random.default_rng(seed)
    samples = samples or BOOTSTRAP_SAMPLES
    differences = []
    for start in range(0, samples, BOOTSTRAP_CHUNK):  # bounded memory on large valid sets
        draws = rng.integers(0, n_blocks, size=(min(BOOTSTRAP_CHUNK, samples - start), n_blocks))
        sums = per_block[:, draws].sum(axis=2)  # (3, chunk)
        differences.append(100.0 * (sums[0] - sums[1]) / np.maximum(sums[2], 1))
    differences = np.concatenate(differences)
    tail = 50 * (1 - confidence)
    lo, hi = np.percentile(differences, [tail, 100 - tail])
    return float(point), float(lo), float(hi), n_blocks


def stratified_permutation_drop(pairs, permutations=PERMUTATIONS, seed=SEED):
    """One-sided p-value that the ``before`` windows are higher than the ``after`` windows.

    ``pairs`` is a list of ``(before, after)`` arrays, one per epoch boundary. Labels are
    permuted within each boundary only (losses differ in level between boundaries); the
    statistic is the sum over boundaries of mean(before) - mean(after).
    """
    rng = np.random.default_rng(seed)
    observed, null = 0.0, np.zeros(permutations)
    for before, after in pairs:
        before, after = np.asarray(before, float), np.asarray(after, float)
        observed += before.mean() - after.mean()
        pooled = np.tile(np.concatenate([before, after]), (permutations, 1))
        shuffled = rng.permuted(pooled, axis=1)
        null += shuffled[:, : len(before)].mean(axis=1) - shuffled[:, len(before) :].mean(axis=1)
    return float((1 + np.sum(null >= observed - 1e-12)) / (1 + permutations))


def mann_whitney_greater(a, b):
    """One-sided Mann-Whitney U p-value that values of ``a`` tend to exceed those of ``b``."""
    return float(stats.mannwhitneyu(a, b, alternative="greater").pvalue)


def spearman(x, y):
    """Spearman's rho and its two-sided p-value; ``(None, None)`` for constant input."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None, None
    result = stats.spearmanr(x, y)
    return float(result.statistic), float(result.pvalue)


def words_of(text):
    """Lower-cased words without punctuation: what a word error rate compares."""
    return WORD.findall((text or "").lower())


def word_errors(hyp, ref):
    """Word-level Levenshtein distance between two transcripts and the reference length."""
    ref = words_of(ref)
    return edit_distance(ref, words_of(hyp)), len(ref)


def robust_location_scale(values):
    """Median and 1.4826 x median absolute deviation (the normal sd when no outliers); the
    scale is floored at a thousandth of a unit so identical values do not divide by zero."""
    values = np.asarray(values, float)
    centre = float(np.median(values))
    return centre, max(1.4826 * float(np.median(np.abs(values - centre))), 1e-3)


def benjamini_hochberg(p_values, fdr):
    """Which hypotheses the Benjamini-Hochberg step-up procedure rejects at ``fdr``."""
    p_values = np.asarray(p_values, float)
    n = len(p_values)
    order = np.argsort(p_values)
    below = p_values[order] <= fdr * np.arange(1, n + 1) / n
    rejected = np.zeros(n, bool)
    if below.any():
        rejected[order[: np.flatnonzero(below).max() + 1]] = True
    return rejected
