"""What a SpeechBrain ``Brain`` needs to survive kills, stop requests, bad losses and several
processes, through SpeechBrain's public hooks only.

``ResilientBrain`` goes before ``sb.Brain`` in a recipe's bases and adds:

* exact resuming: a ``ResumeState`` recoverable (``Checkpointer.add_recoverable``) holds, for
  each process, its random states and the recipe's running sums (``resume_attributes``);
  mid-epoch, the random states are restored at the next batch (``on_fit_batch_start``), after
  the data loader has drawn its seed; append-only logs are cut back to where the checkpoint was
  taken, so a resumed run writes what an uninterrupted one would have;
* intra-epoch checkpoints only between optimizer steps (no half-accumulated gradient is lost):
  taken in ``on_fit_batch_end`` after ``ckpt_interval_steps`` batches or
  ``ckpt_interval_minutes`` minutes; one given on the command line switches off the yaml's
  other one;
* stop requests (SIGTERM, SIGUSR1, Ctrl-C; see ``stopping``): an intra-epoch checkpoint at the
  next optimizer step, then exit with one line and a distinct status;
* non-finite losses: SpeechBrain's ``check_loss_isfinite`` counts them (agreed over processes)
  and ``skip_nonfinite_grads`` drops the step's gradients; more than ``nonfinite_patience`` in
  one epoch stops the run with one line;
* several processes (torchrun): SpeechBrain wraps the model in DistributedDataParallel
  (gradients reduce during backward); evaluation sets are sharded without padding and their
  scores gathered (``gather_stage``);
* one-line errors for the faults a user can fix (a checkpoint that cannot be saved or
  loaded, a full or read-only disk, too many non-finite losses).
"""

import errno
import json
import logging
import os
import sys
import time

import speechbrain as sb
import torch
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks
from speechbrain.utils.distributed import if_main_process

from whisper_finetuning.common.files import write_json
from whisper_finetuning.training import distributed, runs, stopping
from whisper_finetuning.training.checkpointing import (
    CheckpointError,
    atomic_torch_save,
    crash_point,
    rng_state,
    set_rng_state,
)

logger = logging.getLogger(__name__)

# A write failing for one of these reasons is the user's to fix: said in one line.
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
CKPT_INTERVALS = ("ckpt_interval_minutes", "ckpt_interval_steps")
LOG_SIZES_AT_START = "log_sizes_at_start.json"
INTRA_EPOCH_FLAG = "intra_epoch"  # meta key of intra-epoch checkpoints


class NonFiniteLossError(RuntimeError):
    """Too many batches with a NaN or infinite loss in one epoch."""


class ResilientBrain:
    """Mixin for ``sb.Brain`` (see the module docstring).

    Attributes
    ----------
    resume_attributes : tuple of str
        The recipe's own running state (sums, averages) saved with each checkpoint.
    append_only_logs : tuple of str
        Files under ``output_folder`` that only grow; cut back to their size at the
        checkpoint a run resumes from.
    gathered_accumulators : tuple of str
        Attributes holding an evaluation stage's sums (numbers, tensors, objects of them),
        summed over the processes at the stage's end under DDP.
    """

    resume_attributes = ()
    append_only_logs = (
        "epochs.jsonl",
        "train_log.txt",
        "log/steps.jsonl",
        "log/train_utterances.jsonl",
    )
    gathered_accumulators = ()

    def __init__(self, modules=None, opt_class=None, hparams=None, run_opts=None, **kwargs):
        super().__init__(modules, opt_class, _one_interval(hparams, run_opts), run_opts, **kwargs)
        # Intra-epoch checkpoints are taken here, between optimizer steps: SpeechBrain's own
        # (taken after any batch) are switched off.
        self.ckpt_every_steps, self.ckpt_interval_steps = self.ckpt_interval_steps, 0
        self.ckpt_every_minutes, self.ckpt_interval_minutes = self.ckpt_interval_minutes, 0
        self.skip_nonfinite_grads = True
        self.resume_state = ResumeState(self)
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("resume_state", self.resume_state)
        self._eval_batches = 0

    # ------------------------------------------------------------ resuming --
    def on_fit_start(self):
        """Recover; a finished run is not trained again; when training goes on (resumed, or a
        finished run given more epochs), cut the logs back to the recovered checkpoint.

        With no checkpoint to recover, the logs go back to their sizes when training first
        started here (``LOG_SIZES_AT_START``): a run killed before its first checkpoint
        leaves no records behind.
        """
        self.resume_state.log_sizes = None
        self._last_ckpt_time, self._steps_since_ckpt = time.time(), 0
        super().on_fit_start()
        if self.checkpointer is None:
            return
        counter = self.hparams.epoch_counter
        runs.skip_finished_epochs(self.hparams.save_folder, counter)
        if counter.current < counter.limit and if_main_process():
            sizes = self.resume_state.log_sizes or self._sizes_at_start()
            for name, size in sizes.items():
                path = self.log_path(name)
                if _size(path) > size:
                    logger.info("resuming: %s cut back to its state at the checkpoint", name)
                    os.truncate(path, size)
        sb.utils.distributed.ddp_barrier()

    def _sizes_at_start(self):
        """The append-only logs' sizes when training first started in this folder."""
        path = self.checkpointer.checkpoints_dir / LOG_SIZES_AT_START
        if path.exists():
            return json.loads(path.read_text())
        sizes = {name: _size(self.log_path(name)) for name in self.append_only_logs}
        write_json(path, sizes)
        return sizes

    def log_path(self, name):
        """Where an append-only log lives."""
        return os.path.join(self.hparams.output_folder, name)

    # ------------------------------------------------------------ training --
    def on_stage_start(self, stage, epoch=None):
        """Stop before a new training epoch when asked to (the epoch's checkpoint is saved)."""
        if stage == sb.Stage.TRAIN and any(distributed.any_true(stopping.requested())):
            stopping.exit_now(f"before epoch {epoch}")

    def on_fit_batch_start(self, batch, should_step):
        """Restore an intra-epoch checkpoint's random state and non-finite count at its batch."""
        crash_point("train_batch")
        self.resume_state.restore_pending()

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """Between optimizer steps: an intra-epoch checkpoint when due or when asked to stop."""
        self._steps_since_ckpt += 1  # batches, as SpeechBrain counts ckpt_interval_steps
        if not should_step or self.checkpointer is None:
            return
        minutes = (time.time() - self._last_ckpt_time) / 60
        due = 0 < self.ckpt_every_steps <= self._steps_since_ckpt
        due = due or 0 < self.ckpt_every_minutes < minutes
        due, stop = distributed.any_true(due, stopping.requested())
        if due or stop:
            self.checkpointer.save_and_keep_only(
                end_of_epoch=False,
                num_to_keep=1,
                ckpt_predicate=lambda c: INTRA_EPOCH_FLAG in c.meta,
                meta={INTRA_EPOCH_FLAG: True},
                verbosity=logging.DEBUG,
            )
            self._last_ckpt_time, self._steps_since_ckpt = time.time(), 0
        if stop:
            stopping.exit_now(f"after optimizer step {self.optimizer_step}, checkpoint saved")

    def check_loss_isfinite(self, loss):
        """Count a non-finite loss on any process (its step's gradients are dropped); stop once
        the epoch's count exceeds the patience."""
        if distributed.all_true(bool(torch.isfinite(loss))):
            return
        self.nonfinite_count += 1
        epoch = self.hparams.epoch_counter.current
        if self.nonfinite_count > self.nonfinite_patience:
            raise NonFiniteLossError(
                f"the training loss was NaN or infinite in {self.nonfinite_count} batches of "
                f"epoch {epoch} (nonfinite_patience={self.nonfinite_patience}); lower lr or "
                "check the data"
            )
        logger.warning(
            "non-finite training loss: the step is skipped (%d in epoch %d, nonfinite_patience=%d)",
            self.nonfinite_count,
            epoch,
            self.nonfinite_patience,
        )

    def check_gradients(self):
        """Drop the step's gradients when any is not finite, from one norm over all of them
        (SpeechBrain's own check reads each parameter's in turn: 14x slower on tiny.en)."""
        params = [p for p in self.modules.parameters() if p.grad is not None]
        grads = [p.grad for p in params]
        if grads and not torch.isfinite(torch.nn.utils.get_total_norm(grads)):
            logger.warning("non-finite gradients: the step's gradients are dropped")
            for param in params:
                param.grad = None

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """After training: the state of a checkpoint taken after the epoch's last batch, and
        how many batches a non-finite loss skipped."""
        if stage != sb.Stage.TRAIN:
            return
        self.resume_state.restore_pending()
        if self.nonfinite_count:
            logger.warning(
                "epoch %d: %d batch(es) skipped for a non-finite loss", epoch, self.nonfinite_count
            )

    # ---------------------------------------------------------- evaluation --
    def evaluate_batch(self, batch, stage):
        """SpeechBrain's ``evaluate_batch``, counting batches for ``gather_stage``."""
        if stage == sb.Stage.VALID:
            crash_point("valid_batch")
        self._eval_batches += 1
        return super().evaluate_batch(batch, stage)

    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        """Under DDP, each process evaluates its share of a valid or test set."""
        sampler = None if stage == sb.Stage.TRAIN else distributed.eval_sampler(dataset)
        if sampler is not None:
            loader_kwargs = {**loader_kwargs, "sampler": sampler}
        return super().make_dataloader(dataset, stage, ckpt_prefix, **loader_kwargs)

    def gather_stage(self, stage_loss):
        """Under DDP: all processes' scores and sums here; the mean batch loss over all batches.

        Call at an evaluation stage's end, on every process.
        """
        batches, self._eval_batches = self._eval_batches, 0
        if not distributed.is_distributed():
            return stage_loss
        self.scorer.gather()
        for name in self.gathered_accumulators:
            setattr(self, name, distributed.sum_over_processes(getattr(self, name)))
        return distributed.global_ratio(stage_loss * batches, batches)


@register_checkpoint_hooks
class ResumeState:
    """What an exact resume needs beyond SpeechBrain's brain checkpoint (step counters): each
    process's random states, non-finite count and the recipe's running sums, and the sizes
    of the append-only logs when the checkpoint was taken."""

    def __init__(self, brain):
        self.brain = brain
        self.log_sizes = None  # of the recovered checkpoint
        self._gathered = None
        self._pending = None  # (random state, non-finite count) waiting for the next batch

    def _process_state(self):
        """What this process alone knows."""
        brain = self.brain
        return {
            "nonfinite_count": getattr(brain, "nonfinite_count", 0),
            "attributes": {name: getattr(brain, name) for name in brain.resume_attributes},
            "rng": rng_state(),
        }

    def gather_before_save(self):
        """Collect every process's state for the checkpoint (called on every process)."""
        self._gathered = distributed.gather_objects(self._process_state())

    @mark_as_saver
    def save(self, path):
        """Each process's state and the append-only logs' sizes."""
        states, self._gathered = self._gathered, None
        sizes = {name: _size(self.brain.log_path(name)) for name in self.brain.append_only_logs}
        atomic_torch_save(
            {"processes": states or [self._process_state()], "log_sizes": sizes}, path
        )

    @mark_as_loader
    def load(self, path, end_of_epoch):
        """Restore this process's state; mid-epoch, its random states wait for the next batch."""
        saved = torch.load(path, map_location="cpu", weights_only=True)
        self.log_sizes = saved["log_sizes"]
        state = _own_state(saved["processes"])
        for name, value in state["attributes"].items():
            setattr(self.brain, name, value)
        if end_of_epoch:
            set_rng_state(state["rng"])
        else:  # the data loader draws from the random state before the next batch
            self._pending = (state["rng"], state["nonfinite_count"])

    def restore_pending(self):
        """Apply a mid-epoch checkpoint's random state and non-finite count, once."""
        if self._pending is not None:
            rng, self.brain.nonfinite_count = self._pending
            set_rng_state(rng)
            self._pending = None


def _own_state(saved):
    """This process's state among a checkpoint's (one per process that saved it)."""
    world = torch.distributed.get_world_size() if distributed.is_distributed() else 1
    if len(saved) != world:
        logger.warning(
            "resuming %d process(es) from a checkpoint of %d: the data split and the random "
            "states differ from the run that saved it, so the resumed run is not exactly the "
            "one that would have continued",
            world,
            len(saved),
        )
    return saved[distributed.rank()] if distributed.rank() < len(saved) else saved[0]


def _one_interval(hparams, run_opts):
    """An intra-epoch interval given on the command line switches off the yaml's other one."""
    overridden = getattr(run_opts, "overridden_args", set())
    given = [name for name in CKPT_INTERVALS if name in overridden]
    if hparams is None or len(given) != 1:
        return hparams
    other = next(name for name in CKPT_INTERVALS if name not in given)
    return {**hparams, other: 0} if other in hparams else hparams


def _size(path):
    """A file's size in bytes, 0 when it does not exist."""
    return os.path.getsize(path) if os.path.exists(path) else 0


def install_one_line_errors():
    """Show the faults a user can fix as ``error: ...`` (one line, exit 1), not a traceback.

    Installed as ``sys.excepthook``: the traceback still goes to log.txt (debug level), the
    terminal gets one line; other exceptions go to the previous hook.
    """
    previous = sys.excepthook

    def hook(kind, error, traceback):
        disk = isinstance(error, OSError) and error.errno in DISK_ERRNOS
        if not isinstance(error, (CheckpointError, NonFiniteLossError)) and not disk:
            return previous(kind, error, traceback)
        message = str(error)
        if disk:
            message = f"cannot write {error.filename or 'a file'}: {error.strerror}"
        logger.debug("stopped: %s", message, exc_info=(kind, error, traceback))  # log.txt only
        print(f"error: {message}", file=sys.stderr)

    sys.excepthook = hook
