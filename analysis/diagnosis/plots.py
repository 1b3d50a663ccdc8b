"""PNG plots of a diagnosed run (matplotlib's Agg backend: no display needed).

Each function writes one file atomically and returns its name, or raises ``Unavailable``.
"""

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from analysis.diagnosis import Unavailable  # noqa: E402
from whisper_finetuning.files import atomic_path  # noqa: E402

DPI = 110


def _finite(value):
    return isinstance(value, (int, float)) and math.isfinite(value)


def _save(figure, folder, name):
    with atomic_path(os.path.join(folder, name)) as tmp:
        figure.savefig(tmp, dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return name


def step_loss(records, folder, series):
    """Per-step training loss with the epoch boundaries as vertical lines."""
    steps = sorted(records.steps, key=lambda s: (s["epoch"], s.get("step") or 0))
    if not steps:
        raise Unavailable("no per-step losses (log/steps.jsonl or a Trainer log_history)")
    figure, axis = plt.subplots(figsize=(9, 4))
    keys = ["loss", series] if series != "loss" else ["loss"]
    for key in keys:
        points = [(i, s[key]) for i, s in enumerate(steps, 1) if s.get(key) is not None]
        if points:
            axis.plot(*zip(*points, strict=True), lw=0.8, label=key)
    for i in range(1, len(steps)):
        if steps[i]["epoch"] != steps[i - 1]["epoch"]:
            axis.axvline(i + 0.5, color="grey", ls="--", lw=0.8)
    axis.set_xlabel("logged step (dashed: epoch boundary)")
    axis.set_ylabel("training loss")
    axis.legend()
    return _save(figure, folder, "step_loss.png")


def valid_curves(epochs, folder, loss_epoch, wer_epoch):
    """Valid loss and WER per epoch, with the min-loss and min-WER epochs marked."""
    rows = [r for r in epochs if _finite(r.get("loss")) and _finite(r.get("WER"))]
    if not rows:
        raise Unavailable("no epoch with both valid loss and WER")
    x = [r["epoch"] for r in rows]
    figure, loss_axis = plt.subplots(figsize=(7, 4))
    wer_axis = loss_axis.twinx()
    loss_axis.plot(x, [r["loss"] for r in rows], "o-", color="tab:blue", label="valid loss")
    wer_axis.plot(x, [r["WER"] for r in rows], "s-", color="tab:red", label="valid WER")
    if loss_epoch is not None:
        loss_axis.axvline(
            loss_epoch, color="tab:blue", ls=":", label=f"min loss (epoch {loss_epoch})"
        )
    if wer_epoch is not None:
        wer_axis.axvline(wer_epoch, color="tab:red", ls="--", label=f"min WER (epoch {wer_epoch})")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("valid loss", color="tab:blue")
    wer_axis.set_ylabel("valid WER (%)", color="tab:red")
    handles = loss_axis.get_legend_handles_labels()
    more = wer_axis.get_legend_handles_labels()
    loss_axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_axis.legend(
        handles[0] + more[0],
        handles[1] + more[1],
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.15),
        ncol=2,
    )
    return _save(figure, folder, "valid_loss_wer.png")


def calibration(overconfidence_rows, folder):
    """Entropy and ECE per epoch; epochs flagged as overconfident are circled."""
    x = [r["epoch"] for r in overconfidence_rows]
    figure, ece_axis = plt.subplots(figsize=(7, 4))
    entropy_axis = ece_axis.twinx()
    ece_axis.plot(x, [r["ece"] for r in overconfidence_rows], "o-", color="tab:purple", label="ECE")
    entropy_axis.plot(
        x, [r["entropy"] for r in overconfidence_rows], "s-", color="tab:green", label="entropy"
    )
    flagged = [r for r in overconfidence_rows if r["flagged"]]
    ece_axis.scatter(
        [r["epoch"] for r in flagged],
        [r["ece"] for r in flagged],
        s=200,
        facecolors="none",
        edgecolors="black",
        label="overconfident epoch",
    )
    ece_axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    ece_axis.set_xlabel("epoch")
    ece_axis.set_ylabel("ECE", color="tab:purple")
    entropy_axis.set_ylabel("mean entropy (nats)", color="tab:green")
    handles = [a.get_legend_handles_labels() for a in (ece_axis, entropy_axis)]
    ece_axis.legend(
        handles[0][0] + handles[1][0],
        handles[0][1] + handles[1][1],
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.15),
        ncol=3,
    )
    return _save(figure, folder, "calibration.png")
