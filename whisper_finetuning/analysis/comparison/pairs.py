"""Every pair of runs on the same utterances: paired speaker-blocked bootstrap differences,
Holm-corrected across the pairs, and a verdict per pair."""

import csv
from itertools import combinations
from pathlib import Path

import numpy as np

from whisper_finetuning.analysis.diagnosis.stats import holm, paired_bootstrap
from whisper_finetuning.evaluation.metrics import METRICS, statistics_of
from whisper_finetuning.evaluation.selection import SELECTION_DIRECTIONS, SELECTION_METRICS

ALPHA = 0.05  # family-wise error rate of the verdicts (per metric and group)
BLOCK = "spk_id"  # utterances of one speaker are resampled together
NO_DIFFERENCE = "no difference shown"


def add_speakers(utterances, csv_path):
    """Give the utterance records that lack ``spk_id`` (the recipe records it only as a group
    column) their speaker from manifest ``csv_path``, where it exists and has the column:
    the bootstrap's blocks."""
    if csv_path is None or not Path(csv_path).is_file():
        return
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, skipinitialspace=True))
    if not rows or BLOCK not in rows[0]:
        return
    speakers = {row["ID"]: row[BLOCK] for row in rows}
    for utterance in utterances:
        utterance.setdefault(BLOCK, speakers.get(utterance["id"], utterance["id"]))


def beats(a, b):
    """The verdict that run ``a`` is better than ``b``."""
    return f"{a} beats {b} beyond noise"


def draw_scores(metric_name):
    """Metric ``metric_name`` (WER, BLEU, ...) of each draw's summed statistics ((k, draws));
    a draw over no reference words counts as 0."""
    score = METRICS[metric_name.lower()][1]
    return lambda sums: np.array([score(column.tolist()) or 0.0 for column in sums.T])


def paired_difference(utterances_a, utterances_b, metric_name, block):
    """``{difference, ci95, p, n_blocks}`` of ``metric_name`` between two systems' transcripts
    of the same utterances (a minus b), blocked by utterance field ``block`` (None: by
    utterance). One block gives no interval (p is None)."""
    key = metric_name.lower()
    blocks = [u.get(block, u["id"]) if block else u["id"] for u in utterances_a]
    point, lo, hi, p, n_blocks = paired_bootstrap(
        statistics_of(utterances_a, key),
        statistics_of(utterances_b, key),
        draw_scores(metric_name),
        blocks,
    )
    if n_blocks < 2:
        lo = hi = p = None
    return {"difference": point, "ci95": [lo, hi], "p": p, "n_blocks": n_blocks}


def pair_rows(decoded, metric_name, ids, block):
    """Each pair's ``{a, b, difference, ci95, p, n_blocks}`` of ``metric_name`` on utterances
    ``ids`` (``paired_difference``), with ``p_holm``: Holm-adjusted across the pairs."""
    rows = []
    for a, b in combinations(decoded, 2):
        difference = paired_difference(
            [decoded[a][i] for i in ids], [decoded[b][i] for i in ids], metric_name, block
        )
        rows.append({"a": a, "b": b, **difference})
    tested = [row for row in rows if row["p"] is not None]
    for row, adjusted in zip(tested, holm([row["p"] for row in tested]), strict=True):
        row["p_holm"] = adjusted
    for row in rows:
        row.setdefault("p_holm", None)
        row["verdict"] = verdict(row, metric_name)
    return rows


def verdict(row, metric_name):
    """``A beats B beyond noise`` when the Holm-adjusted p is below ``ALPHA``, else
    ``no difference shown``; which run is better follows the metric's direction."""
    if row["p_holm"] is None or row["p_holm"] >= ALPHA or row["difference"] == 0:
        return NO_DIFFERENCE
    a_better = SELECTION_DIRECTIONS[metric_name] * row["difference"] > 0
    return beats(row["a"], row["b"]) if a_better else beats(row["b"], row["a"])


def compare(decoded, group_columns, decision_metric):
    """All pairs on all utterances for every metric, and per value of each group column for
    ``decision_metric``; ``decoded`` is ``{label: {id: utterance}}`` over the same ids."""
    first = next(iter(decoded.values()))
    ids = sorted(first)
    block = BLOCK if ids and BLOCK in first[ids[0]] else None
    overall = {name: pair_rows(decoded, name, ids, block) for name in SELECTION_METRICS}
    per_group = {}
    for column in group_columns:
        if not ids or column not in first[ids[0]]:
            continue
        within = None if column == block else block  # one speaker: its utterances
        values = sorted({str(first[i][column]) for i in ids})
        per_group[column] = {
            value: pair_rows(
                decoded, decision_metric, [i for i in ids if str(first[i][column]) == value], within
            )
            for value in values
        }
    return {"blocked_by": block or "utterance", "overall": overall, "per_group": per_group}
