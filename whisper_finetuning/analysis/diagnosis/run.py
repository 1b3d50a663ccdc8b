"""Run every analysis a run's logs allow and write ``diagnostics/`` (the diagnosis's main loop).

Reads this recipe's experiment folder, a transformers ``trainer_state.json`` or a
SpeechBrain ``train_log.txt``, runs every analysis its logs allow, and writes
``EXPERIMENT_FOLDER/diagnostics/`` with ``report.md``, ``diagnostics.json`` and PNG plots.
What cannot be analysed is listed with the reason, never guessed.
"""

import json
import logging
import math
import os

from whisper_finetuning.analysis.diagnosis import (
    Unavailable,
    boundary,
    checks,
    label_sources,
    plots,
    records,
    report,
)
from whisper_finetuning.common.files import write_text

logger = logging.getLogger(__name__)

OUTPUT_FOLDER = "diagnostics"


def _strict_json(value):
    """``value`` with NaN/inf as null and numpy scalars as Python numbers: strict JSON."""
    if isinstance(value, dict):
        return {key: _strict_json(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class _Analyses:
    """Runs analyses, keeping each result or the reason it could not run."""

    def __init__(self):
        self.available, self.skipped = [], {}

    def attempt(self, name, analysis, *args):
        try:
            result = analysis(*args)
        except Unavailable as missing:
            self.skipped[name] = str(missing)
            return None
        self.available.append(name)
        return result


def diagnose(run):
    """All analyses of ``run`` (a ``RunRecords``) as the ``diagnostics.json`` dict, minus the
    plots and the verdict."""
    analyses = _Analyses()
    best = analyses.attempt("best_epochs", checks.best_epochs, run)
    loss_epoch, wer_epoch = best or (None, None)
    selected = analyses.attempt("best_metric_epoch", checks.best_metric_epoch, run)
    spearman = analyses.attempt("loss_wer_spearman", checks.loss_wer_spearman, run)
    difference = analyses.attempt(
        "wer_difference", checks.wer_difference, run, loss_epoch, wer_epoch
    )
    try:
        memorization = boundary.memorization(run)
    except Unavailable as missing:
        memorization = missing
    epoch_boundary = analyses.attempt("epoch_boundary", boundary.analyse, run, memorization)
    if epoch_boundary is not None:
        for test in epoch_boundary["tests"]:
            analyses.available.append(test["cause"])
        for missing in epoch_boundary["not_tested"]:
            analyses.skipped[missing["cause"]] = missing["reason"]
    else:
        reason = f"needs the epoch-boundary analysis: {analyses.skipped['epoch_boundary']}"
        for cause in ("running_mean_artifact", "ordering", "schedule"):
            analyses.skipped[cause] = reason
        if isinstance(memorization, Unavailable):
            analyses.skipped["memorization"] = str(memorization)
        else:
            analyses.available.append("memorization")
    label_noise = analyses.attempt("label_noise_suspects", checks.label_noise, run)
    return {
        "source": run.source,
        "files": run.files,
        "notes": run.notes,
        "kept_checkpoint": run.kept_checkpoint or None,
        "epochs": checks.epoch_table(run),
        "best_loss_epoch": loss_epoch,
        "best_wer_epoch": wer_epoch,
        "selection_metric": selected[0] if selected else None,
        "best_metric_epoch": selected[1] if selected else None,
        "loss_wer_spearman": spearman["rho"] if spearman else None,
        "loss_wer_spearman_detail": spearman,
        "wer_difference": difference,
        "epoch_boundary": epoch_boundary,
        "memorization": None if isinstance(memorization, Unavailable) else memorization,
        "overconfidence": analyses.attempt("overconfidence", checks.overconfidence, run),
        "label_noise": label_noise,
        "label_noise_suspects": label_noise["suspects"] if label_noise else None,
        "lagging_groups": analyses.attempt(
            "lagging_groups", checks.lagging_groups, run, loss_epoch, wer_epoch
        ),
        "leakage": analyses.attempt("leakage", checks.leakage, run),
        "distribution_shift": analyses.attempt(
            "distribution_shift",
            checks.distribution_shift,
            run,
            [s["id"] for s in label_noise["suspects"]] if label_noise else (),
        ),
        "repetition_loops": analyses.attempt("repetition_loops", checks.repetition_loops, run),
        "valid_set": analyses.attempt("valid_set", checks.valid_set, run, wer_epoch),
        "mwer": analyses.attempt("mwer", checks.mwer_expected_wer, run),
        "pseudo_labels": analyses.attempt("pseudo_labels", label_sources.pseudo_label_overfit, run)
        if label_sources.trained_on_pseudo_labels(run)
        else None,  # runs on human labels only: nothing to check, nothing skipped
        "available_analyses": analyses.available,
        "skipped": analyses.skipped,
    }


def _plot(diagnostics, run, folder):
    """Write the plots the data allows; a plot that cannot be drawn is listed as skipped."""
    analyses = _Analyses()
    series = (diagnostics["epoch_boundary"] or {}).get("series", "loss")
    names = [
        analyses.attempt("plot_step_loss", plots.step_loss, run, folder, series),
        analyses.attempt(
            "plot_valid_loss_wer",
            plots.valid_curves,
            run.epochs,
            folder,
            diagnostics["best_loss_epoch"],
            diagnostics["best_wer_epoch"],
        ),
    ]
    if diagnostics["overconfidence"]:
        names.append(plots.calibration(diagnostics["overconfidence"], folder))
    else:
        analyses.skipped["plot_calibration"] = "no ece/entropy per epoch"
    diagnostics["plots"] = [name for name in names if name]
    diagnostics["skipped"].update(analyses.skipped)


def run(exp_folder):
    """Diagnose the run in ``exp_folder``; write ``diagnostics/`` there; return the JSON dict.

    Raises ``FileNotFoundError`` when the folder holds no log this tool reads.
    """
    loaded = records.load(exp_folder)
    diagnostics = diagnose(loaded)
    folder = os.path.join(exp_folder, OUTPUT_FOLDER)
    os.makedirs(folder, exist_ok=True)
    _plot(diagnostics, loaded, folder)
    diagnostics["verdict"] = report.verdict(diagnostics)
    write_text(os.path.join(folder, "report.md"), report.markdown(diagnostics, exp_folder))
    text = json.dumps(_strict_json(diagnostics), indent=2, allow_nan=False)
    write_text(os.path.join(folder, "diagnostics.json"), text)
    return json.loads(text)  # exactly the file's content (e.g. epoch keys become strings)


def run_after_training(output_folder):
    """Explain the run's loss/WER curves (``whisper_finetuning.diagnose``); failures only warn."""
    try:
        found = run(output_folder)
    except Exception as error:  # the trained model and its results are already written
        logger.warning("diagnostics failed, training results are unaffected: %r", error)
        return
    for sentence in found["verdict"]:
        logger.info("diagnosis: %s", sentence)
