"""The Optuna study of a sweep: its sampler, its shared storage, the trials' loop, resuming.

The study lives in an RDB storage (SQLite in the output folder by default), so several
processes or machines pointed at the same database URL run distinct trials of one study.
Each trial beats a heartbeat into the database; a trial whose heartbeat stopped (its process
was killed) is marked failed when a sweep next starts, and Optuna's retry callback queues it
again with the same values and folder, where train.py resumes from its own checkpoint.
A trial whose train.py fails (exits non-zero: a refused setting, a crash) is failed with its
error line (user attribute ``error``) and the study goes on; it is not run again. Finished
trials are never repeated: the study counts them.
"""

import fcntl
import itertools
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from whisper_finetuning.common.errors import RecipeError
from whisper_finetuning.evaluation.selection import SELECTION_DIRECTIONS
from whisper_finetuning.sweeps import spec as specs
from whisper_finetuning.sweeps import trials

ENDED = (TrialState.COMPLETE, TrialState.PRUNED)
MAX_RETRIES = 3  # a trial killed more often than this is left failed
ERROR = "error"  # the user attribute of a failed trial's error line


def sampler(spec):
    if spec.sampler == "grid":
        return optuna.samplers.GridSampler(spec.space, seed=spec.seed)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    return optuna.samplers.TPESampler(seed=spec.seed)


def open_study(spec):
    """The spec's study, created on first use. Processes starting together on one machine take
    turns: two creating one SQLite schema at once collide (alembic's version row)."""
    spec.output_folder.mkdir(parents=True, exist_ok=True)
    with open(spec.output_folder / ".study.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        return _open_study(spec)


def _open_study(spec):
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the heartbeat
    storage = RDBStorage(
        spec.storage,
        heartbeat_interval=spec.heartbeat_seconds,
        grace_period=2 * spec.heartbeat_seconds,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES),
    )
    direction = "minimize" if SELECTION_DIRECTIONS[spec.selection_metric] < 0 else "maximize"
    options = dict(
        storage=storage,
        study_name=spec.study_name,
        direction=direction,
        sampler=sampler(spec),
        pruner=specs.pruner(spec),
    )
    try:
        study = optuna.create_study(**options)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.create_study(**options, load_if_exists=True)
        if spec.sampler == "grid":
            _wait_for_the_grid(study)
        return study
    if spec.sampler == "grid":
        # Optuna's grid sampler picks grid points at random, so processes starting together
        # can pick the same one; queued, each point is taken by one process (the database
        # hands a waiting trial to one).
        for values in itertools.product(*spec.space.values()):
            study.enqueue_trial(dict(zip(spec.space, values, strict=True)))
    return study


def _wait_for_the_grid(study, seconds=10):
    """A process joining a grid study waits (briefly) for its creator to queue the grid."""
    deadline = time.monotonic() + seconds
    while not study.get_trials(deepcopy=False) and time.monotonic() < deadline:
        time.sleep(0.1)


def failed_by_the_recipe(study):
    """Trials whose train.py failed (not those killed: they are queued again)."""
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    return [trial for trial in failed if ERROR in trial.user_attrs]


def ended(study):
    """How many trials have ended: finished, pruned or failed by the recipe."""
    return len(study.get_trials(deepcopy=False, states=ENDED)) + len(failed_by_the_recipe(study))


def counted(study):
    """Trials that count towards ``n_trials``: ended, or running elsewhere."""
    return ended(study) + len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def stop_at(n_trials):
    """A callback that stops the study once ``n_trials`` trials count."""

    def stop(study, _trial):
        if counted(study) >= n_trials:
            study.stop()

    return stop


def objective(spec):
    def run_trial(trial):
        params = specs.suggest(trial, spec.space)
        # A retried trial keeps its folder (user attributes are copied): train.py resumes.
        folder = trial.user_attrs.get("folder") or str(trials.trial_folder(spec, trial.number))
        trial.set_user_attr("folder", folder)
        try:
            return trials.run(spec, trial, params, Path(folder))
        except RecipeError as error:
            trial.set_user_attr(ERROR, str(error))
            raise

    return run_trial


def run(spec):
    """Run trials until the study holds ``n_trials``; returns the study."""
    study = open_study(spec)
    optuna.storages.fail_stale_trials(study)  # killed trials: failed, queued again
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    if counted(study) < spec.n_trials or waiting:
        study.optimize(
            objective(spec),
            catch=(RecipeError,),  # a failed trial: the next one runs
            callbacks=[stop_at(spec.n_trials)],
            gc_after_trial=False,
        )
    return study


def finished(study, spec):
    """Whether every trial has ended (none running in another process)."""
    return ended(study) >= spec.n_trials and not study.get_trials(
        deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)
    )
