"""The runs' valid curves in one figure: loss and the decision metric per epoch."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from whisper_finetuning.analysis.diagnosis.plots import _save  # noqa: E402


def valid_curves(curves, metric_name, folder, name):
    """Plot each run's valid loss and ``metric_name`` per epoch; returns the file name, or None
    when no run logged an epoch."""
    if not any(curves.values()):
        return None
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, points in curves.items():
        for axis, key in zip(axes, ("loss", metric_name), strict=True):
            xy = [(p["epoch"], p[key]) for p in points if p.get(key) is not None]
            if xy:
                axis.plot(*zip(*xy, strict=True), marker="o", label=label)
    for axis, key in zip(axes, ("valid loss", f"valid {metric_name}"), strict=True):
        axis.set_xlabel("epoch")
        axis.set_ylabel(key)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.legend(fontsize="small")
    return _save(figure, folder, name)
