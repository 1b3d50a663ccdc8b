"""PNG plots of a diagnosed run (matplotlib's Agg backend: no display needed).

Each function writes one file atomically and returns its name, or raises ``Unavailable``.
"""

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from whisper_finetuning.analysis.diagnosis import Unavailable
from whisper_finetuning.common.files import atomic_path  # noqa: E402

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


def _curve_panel(axis, x, values, best_epoch, color, label):
    """One metric per epoch with its points labelled and its minimum ringed and annotated."""
    axis.plot(x, values, "o-", color=color, lw=1.5, ms=6)
    for epoch, value in zip(x, values, strict=True):
        axis.annotate(
            f"{value:.4g}",
            (epoch, value),
            textcoords="offset points",
            xytext=(0, 7),
            ha="center",
            fontsize=8,
        )
    if best_epoch in x:
        best = values[x.index(best_epoch)]
        axis.scatter(
            [best_epoch],
            [best],
            s=220,
            facecolors="none",
            edgecolors="black",
            lw=1.5,
            zorder=3,
            label=f"min {label}: epoch {best_epoch}",
        )
        axis.axvline(best_epoch, color="grey", ls=":", lw=1)
        axis.legend(fontsize=8, loc="best")
    spread = (max(values) - min(values)) or abs(values[0]) * 0.05 or 1.0
    axis.set_ylim(min(values) - 0.25 * spread, max(values) + 0.35 * spread)
    axis.set_xlim(min(x) - 0.5, max(x) + 0.5)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("epoch")
    axis.set_ylabel(label)
    axis.set_title(label)
    axis.grid(alpha=0.3)


def valid_curves(epochs, folder, loss_epoch, wer_epoch):
    """Valid loss and valid WER per epoch in two side-by-side panels (each its own scale, so
    two epochs never draw one line over the other), every point shown, both minima ringed."""
    rows = [r for r in epochs if _finite(r.get("loss")) and _finite(r.get("WER"))]
    if not rows:
        raise Unavailable("no epoch with both valid loss and WER")
    x = [r["epoch"] for r in rows]
    figure, (loss_axis, wer_axis) = plt.subplots(1, 2, figsize=(10, 4))
    _curve_panel(loss_axis, x, [r["loss"] for r in rows], loss_epoch, "tab:blue", "valid loss")
    _curve_panel(wer_axis, x, [r["WER"] for r in rows], wer_epoch, "tab:red", "valid WER (%)")
    figure.tight_layout()
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
