"""Seed 001's trap with pseudo-labels: the training loss on pseudo-labelled rows keeps falling
while the valid WER (human labels) does not improve: the model learns the labeller's errors.

Reads each training utterance's logged loss and ``label_source`` (``log/train_utterances.jsonl``)
and the valid WER per epoch. Applies only to runs that trained on pseudo-labelled rows.
"""

import math

from whisper_finetuning.analysis.diagnosis import Unavailable
from whisper_finetuning.common.label_sources import LABEL_SOURCE, PSEUDO

# The pseudo rows' mean training loss must fall by this share from the first to the last
# epoch before its disagreement with the valid WER is named.
MIN_LOSS_FALL = 0.10
HUMAN = "human"  # how rows of any other label source are reported


def trained_on_pseudo_labels(records):
    """Whether the training log has pseudo-labelled rows."""
    return any(u.get(LABEL_SOURCE) == PSEUDO for u in records.train_utterances)


def pseudo_label_overfit(records):
    """Per epoch the mean training loss per label source (pseudo, human) and the valid WER;
    ``flagged`` when the pseudo rows' loss fell by at least ``MIN_LOSS_FALL`` of its first
    value from the first to the last such epoch while the valid WER did not fall."""
    losses = {}
    for u in records.train_utterances:
        if isinstance(u.get("loss"), (int, float)) and math.isfinite(u["loss"]):
            source = PSEUDO if u.get(LABEL_SOURCE) == PSEUDO else HUMAN
            losses.setdefault(u["epoch"], {}).setdefault(source, []).append(u["loss"])
    wers = {r["epoch"]: r["WER"] for r in records.epochs if _finite(r.get("WER"))}
    epochs = sorted(e for e in losses if PSEUDO in losses[e] and e in wers)
    if len(epochs) < 2:
        raise Unavailable(
            "needs two epochs with pseudo-labelled training rows in "
            "log/train_utterances.jsonl and a valid WER"
        )
    table = [
        {
            "epoch": e,
            **{f"train_loss_{s}": _mean(losses[e].get(s)) for s in (PSEUDO, HUMAN)},
            "valid_wer": wers[e],
        }
        for e in epochs
    ]
    first, last = table[0], table[-1]
    start = first["train_loss_pseudo"]
    fall = (start - last["train_loss_pseudo"]) / start if start > 0 else 0.0
    gain = first["valid_wer"] - last["valid_wer"]
    return {
        "epochs": table,
        "from_epoch": first["epoch"],
        "to_epoch": last["epoch"],
        "pseudo_loss_fall": fall,
        "valid_wer_gain": gain,
        "flagged": fall >= MIN_LOSS_FALL and gain <= 0,
    }


def _finite(value):
    return isinstance(value, (int, float)) and math.isfinite(value)


def _mean(values):
    return sum(values) / len(values) if values else None
