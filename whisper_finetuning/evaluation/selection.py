"""The checkpoint selection rule: the best valid score by ``selection_metric``, earliest on ties.

Standard library only, so the analysis tools (diagnosis, review) apply the same rule as
train.py and the export.
"""

import math

# Checkpoint metadata key -> direction: -1 when lower is better, +1 when higher is.
SELECTION_DIRECTIONS = {"loss": -1, "WER": -1, "CER": -1, "BLEU": 1, "chrF": 1}
SELECTION_METRICS = ("WER", "CER", "BLEU", "chrF")  # what selection_metric may name


def best_earliest(key):
    """Checkpoint importance by valid ``key`` (``WER``, ``BLEU``, ``loss``...): the best value
    first (lowest, or highest for BLEU and chrF), the earlier epoch on ties; a checkpoint
    without that score (or with None: no reference words) comes last."""
    direction = SELECTION_DIRECTIONS[key]

    def importance(ckpt):
        if ckpt.meta.get(key) is None:
            return (-math.inf, 0)
        return (direction * ckpt.meta[key], -ckpt.meta["epoch"])

    importance.__name__ = f"best_{key}_earliest"
    return importance


min_wer_earliest = best_earliest("WER")
min_loss_earliest = best_earliest("loss")


def best_epoch(records, key):
    """The epoch of the best per-epoch record (``{"epoch", key, ...}``) by ``key``, the
    earlier on ties; records without ``key`` are ignored (None when none has it)."""
    direction = SELECTION_DIRECTIONS[key]
    scored = [r for r in records if r.get(key) is not None]
    if not scored:
        return None
    return min(scored, key=lambda r: (-direction * r[key], r["epoch"]))["epoch"]
