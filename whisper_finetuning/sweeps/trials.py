"""One trial: a train.py run in its own folder, watched for its valid metric per epoch.

A trial's command is the spec's recipe, hparams and overrides, the trial's values and its
folder, with ``--decode_test_sets=False``: trials are chosen by valid only. Rerunning the same
command in a killed trial's folder resumes it (train.py's own checkpoints); rerunning it with
``--decode_test_sets=True`` in a finished one only decodes the test sets.
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna

from whisper_finetuning.analysis.diagnosis.records import EPOCHS_FILE, last_record_per_key
from whisper_finetuning.common.errors import RecipeError
from whisper_finetuning.evaluation.selection import best_epoch

LOG_FILE = "sweep_trial.log"  # the trial's train.py output, appended on every start
POLL_SECONDS = 1.0


def trial_folder(spec, number):
    return spec.output_folder / f"trial_{number:03d}"


def argument(key, value):
    """``--key=value`` as train.py's command line reads it (YAML values); a None value gives
    the bare flag (``noprogressbar: null``: ``--noprogressbar``)."""
    if value is None:
        return f"--{key}"
    if isinstance(value, (dict, list)):
        value = json.dumps(value)
    return f"--{key}={value}"


def command(spec, params, folder, decode_test_sets=False):
    """The train.py command line of a trial."""
    values = {
        **spec.overrides,
        **params,
        "selection_metric": spec.selection_metric,
        "output_folder": str(folder),
        "decode_test_sets": decode_test_sets,
    }
    return [sys.executable, spec.recipe, spec.hparams, *(argument(k, v) for k, v in values.items())]


def valid_epochs(folder):
    """The trial's ``epochs.jsonl`` records (the last logged per epoch), [] before the first."""
    path = Path(folder) / EPOCHS_FILE
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            continue
    return last_record_per_key(rows, lambda r: r["epoch"])


def selected_value(folder, metric):
    """``(epoch, valid metric)`` of the checkpoint train.py keeps by ``metric``."""
    epochs = valid_epochs(folder)
    epoch = best_epoch(epochs, metric)
    if epoch is None:
        raise RecipeError(f"{folder}: no epoch logged a valid {metric}")
    return epoch, next(r[metric] for r in epochs if r["epoch"] == epoch)


def report_epochs(trial, folder, metric, reported):
    """Report to Optuna each epoch's valid ``metric`` not in ``reported`` (epochs, updated);
    returns the epochs reported now."""
    epochs = []
    for record in valid_epochs(folder):
        value = record.get(metric)
        if record["epoch"] in reported or value is None:
            continue
        reported.add(record["epoch"])
        trial.report(value, record["epoch"])
        epochs.append(record["epoch"])
    return epochs


def run(spec, trial, params, folder):
    """Run the trial's train.py to its end, reporting each epoch's valid metric as it is
    logged; stop the run (SIGTERM: train.py stops at its next step) when the pruner prunes it
    (``pruning``; without, it never does)."""
    folder.mkdir(parents=True, exist_ok=True)
    reported = set()
    with open(folder / LOG_FILE, "a") as log:
        child = subprocess.Popen(command(spec, params, folder), stdout=log, stderr=log)
        try:
            while child.poll() is None:
                time.sleep(POLL_SECONDS)
                for epoch in report_epochs(trial, folder, spec.selection_metric, reported):
                    if trial.should_prune():
                        child.send_signal(signal.SIGTERM)
                        child.wait()
                        raise optuna.TrialPruned(f"pruned after epoch {epoch}")
        finally:
            if child.poll() is None:  # the sweep itself is stopping: so does its trial
                child.send_signal(signal.SIGTERM)
                child.wait()
    if child.returncode != 0:
        raise RecipeError(
            f"trial {trial.number} failed (train.py exit status {child.returncode}): "
            f"{last_line(folder / LOG_FILE)}"
        )
    # The epochs logged as train.py ended: the pruner compares later trials with every epoch.
    report_epochs(trial, folder, spec.selection_metric, reported)
    return selected_value(folder, spec.selection_metric)[1]


def last_line(path):
    """The last non-empty line of a log: train.py's ``error: ...`` line when it failed."""
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def decode_tests(spec, params, folder):
    """Decode the test sets with the chosen trial's selected checkpoint (no training)."""
    done = subprocess.run(
        command(spec, params, folder, decode_test_sets=True), capture_output=True, text=True
    )
    with open(folder / LOG_FILE, "a") as log:
        log.write(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RecipeError(
            f"decoding the test sets in {folder} failed: {last_line(folder / LOG_FILE)}"
        )
