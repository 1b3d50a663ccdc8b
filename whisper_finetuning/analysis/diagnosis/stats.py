"""The statistics behind the diagnosis and the comparison of runs: paired bootstrap,
multiple-testing corrections, permutation and rank tests.

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


def paired_bootstrap(
    stats_a, stats_b, score, blocks=None, samples=None, seed=SEED, confidence=0.95
):
    """score(a) - score(b) with a percentile interval and a two-sided p-value from a paired
    bootstrap.

    ``stats_a`` and ``stats_b`` are the two systems' additive statistics per utterance
    ((utterances, k) arrays, e.g. word errors and reference words); ``score`` maps summed
    statistics ((k, draws) arrays) to the metric of each draw. Utterances (or whole blocks,
    e.g. speakers) are resampled together for both systems, so the interval reflects the
    difference on the same audio, not two independent noises. The p-value is twice the
    smaller share of resampled differences on either side of zero (1 when every difference
    is 0). Returns ``(point, lo, hi, p_value, n_blocks)``.
    """
    stats_a, stats_b = (np.asarray(x, dtype=float).reshape(len(x), -1) for x in (stats_a, stats_b))
    if blocks is None:
        blocks = np.arange(len(stats_a))
    _, block_index = np.unique(np.asarray(blocks), return_inverse=True)
    n_blocks = int(block_index.max()) + 1
    per_block = np.zeros((2, stats_a.shape[1], n_blocks))
    for system, values in enumerate((stats_a, stats_b)):
        for column in range(values.shape[1]):
            np.add.at(per_block[system, column], block_index, values[:, column])
    whole = per_block.sum(axis=2, keepdims=True)
    point = float(score(whole[0])[0] - score(whole[1])[0])
    rng = np.random.default_rng(seed)
    samples = samples or BOOTSTRAP_SAMPLES
    differences = []
    for start in range(0, samples, BOOTSTRAP_CHUNK):  # bounded memory on large valid sets
        draws = rng.integers(0, n_blocks, size=(min(BOOTSTRAP_CHUNK, samples - start), n_blocks))
        sums = per_block[:, :, draws].sum(axis=3)  # (2, k, chunk)
        differences.append(score(sums[0]) - score(sums[1]))
    differences = np.concatenate(differences)
    tail = 50 * (1 - confidence)
    lo, hi = np.percentile(differences, [tail, 100 - tail])
    below, above = np.mean(differences <= 0), np.mean(differences >= 0)
    p_value = min(1.0, 2 * min(below, above))
    return point, float(lo), float(hi), float(p_value), n_blocks


def error_rate(sums):
    """Errors over reference units in percent, per draw of summed ``(errors, units)``; a draw
    without reference units counts as 0."""
    return 100.0 * sums[0] / np.maximum(sums[1], 1)


def paired_bootstrap_difference(
    errors_a, errors_b, words, blocks=None, samples=None, seed=SEED, confidence=0.95
):
    """WER(a) - WER(b) in points with its paired-bootstrap interval (``paired_bootstrap``).
    Returns ``(point, lo, hi, n_blocks)``."""
    point, lo, hi, _, n_blocks = paired_bootstrap(
        np.column_stack([errors_a, words]),
        np.column_stack([errors_b, words]),
        error_rate,
        blocks,
        samples,
        seed,
        confidence,
    )
    return point, lo, hi, n_blocks


def holm(p_values):
    """Holm's step-down adjusted p-values, in the order given: the k-th smallest p is
    multiplied by (m - k + 1), made non-decreasing in that order, capped at 1."""
    p_values = np.asarray(p_values, float)
    m = len(p_values)
    order = np.argsort(p_values, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p_values[order]))
    result = np.empty(m)
    result[order] = adjusted
    return result.tolist()


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
