"""What a SpeechBrain ``Brain`` needs to survive kills, bad losses and several processes.

``ResilientBrain`` goes before ``sb.Brain`` in a recipe's bases and adds:

* exact resuming: the brain's checkpoint file also holds, for each process, its random
  states and the recipe's running sums (``resume_attributes``); intra-epoch checkpoints
  restore the random state at the batch where training stopped; append-only logs are cut
  back to where the checkpoint was taken, so a resumed run writes what an uninterrupted one
  would have; intra-epoch checkpoints are taken between optimizer steps, and an interval
  given on the command line (``--ckpt_interval_steps``) replaces the yaml's other one
  (``ckpt_interval_minutes``);
* non-finite losses: such a batch is skipped (no backward) and counted; more than
  ``nonfinite_patience`` in one epoch stops the run with one line;
* several processes (torchrun): evaluation sets are sharded and their scores gathered
  (``Scorer.gather``), gradients are averaged before each step (``distributed``);
* one-line errors for the faults a user can fix (a checkpoint that cannot be saved or
  loaded, a full or read-only disk, too many non-finite losses).
"""

import errno
import json
import logging
import os
import sys
import zipfile

import speechbrain as sb
import torch
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks
from speechbrain.utils.distributed import if_main_process

from whisper_finetuning.files import write_json
from whisper_finetuning.training import distributed
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


class NonFiniteLossError(RuntimeError):
    """Too many batches with a NaN or infinite loss in one epoch."""


@register_checkpoint_hooks
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
        self._pending_state = None
        self._log_sizes = None
        self._eval_batches = 0
        self._process_states = None

    # ------------------------------------------------------------ resuming --
    def _process_state(self):
        """What this process alone knows: loop position, running sums, random states."""
        return {
            "step": self.step,
            "avg_train_loss": self.avg_train_loss,
            "optimizer_step": self.optimizer_step,
            "nonfinite_count": getattr(self, "nonfinite_count", 0),
            "attributes": {name: getattr(self, name) for name in self.resume_attributes},
            "rng": rng_state(),
        }

    def gather_before_save(self):
        """Collect every process's state for the checkpoint (called on every process)."""
        self._process_states = distributed.gather_objects(self._process_state())

    @mark_as_saver
    def _save(self, path):
        """Each process's state (see ``_process_state``) and the append-only logs' sizes."""
        states, self._process_states = self._process_states, None
        state = {
            "processes": states or [self._process_state()],
            "log_sizes": {name: _size(self._log_path(name)) for name in self.append_only_logs},
        }
        atomic_torch_save(state, path)

    @mark_as_loader
    def _recover(self, path, end_of_epoch):
        """Restore this process's state; mid-epoch, its random states wait for the next batch
        (see ``fit_batch``)."""
        if not zipfile.is_zipfile(path):  # SpeechBrain's own YAML: no random state to restore
            return super()._recover(path, end_of_epoch)
        saved = torch.load(path, map_location="cpu", weights_only=True)
        self._log_sizes = saved["log_sizes"]
        state = _own_state(saved.get("processes") or [saved])  # or one process's, unnested
        self.step = state["step"]
        self.avg_train_loss = state["avg_train_loss"]
        self.optimizer_step = state["optimizer_step"]
        for name, value in state["attributes"].items():
            setattr(self, name, value)
        if end_of_epoch:
            set_rng_state(state["rng"])
        else:  # the data loader draws from the random state before the next batch
            self._pending_state = (state["rng"], state["nonfinite_count"])

    def on_fit_start(self):
        """Recover, then cut the logs back to the recovered checkpoint (unless training is over).

        With no checkpoint to recover, the logs go back to their sizes when training first
        started here (``LOG_SIZES_AT_START``): a run killed before its first checkpoint
        leaves no records behind.
        """
        self._log_sizes = None
        super().on_fit_start()
        finished = os.path.exists(getattr(self, "fit_done_file", ""))
        if self.checkpointer is not None and not finished and if_main_process():
            sizes = self._log_sizes or self._sizes_at_start()
            for name, size in sizes.items():
                path = self._log_path(name)
                if _size(path) > size:
                    logger.info("resuming: %s cut back to its state at the checkpoint", name)
                    os.truncate(path, size)
        sb.utils.distributed.ddp_barrier()

    def _sizes_at_start(self):
        """The append-only logs' sizes when training first started in this folder."""
        path = self.checkpointer.checkpoints_dir / LOG_SIZES_AT_START
        if path.exists():
            return json.loads(path.read_text())
        sizes = {name: _size(self._log_path(name)) for name in self.append_only_logs}
        write_json(path, sizes)
        return sizes

    def _log_path(self, name):
        """Where an append-only log lives."""
        return os.path.join(self.hparams.output_folder, name)

    # ------------------------------------------------------------ training --
    def _restore_pending_state(self):
        """Random state and non-finite count of an intra-epoch checkpoint, once resumed there."""
        if self._pending_state is not None:
            rng, self.nonfinite_count = self._pending_state
            set_rng_state(rng)
            self._pending_state = None

    def fit_batch(self, batch):
        """SpeechBrain's ``fit_batch``, with non-finite losses skipped and counted."""
        self._restore_pending_state()
        crash_point("train_batch")
        should_step = (self.step % self.grad_accumulation_factor) == 0
        self.on_fit_batch_start(batch, should_step)
        with self.training_ctx:
            outputs = self.compute_forward(batch, sb.Stage.TRAIN)
            loss = self.compute_objectives(outputs, batch, sb.Stage.TRAIN)
        if distributed.all_true(bool(torch.isfinite(loss))):
            self.scaler.scale(loss / self.grad_accumulation_factor).backward()
        else:
            self._skip_nonfinite()
        if should_step:
            self.optimizers_step()
        self.on_fit_batch_end(batch, outputs, loss, should_step)
        return loss.detach().cpu()

    def _skip_nonfinite(self):
        """Count a skipped batch; stop once the epoch's count exceeds the patience."""
        self.nonfinite_count += 1
        epoch = self.hparams.epoch_counter.current
        if self.nonfinite_count > self.nonfinite_patience:
            raise NonFiniteLossError(
                f"the training loss was NaN or infinite in {self.nonfinite_count} batches of "
                f"epoch {epoch} (nonfinite_patience={self.nonfinite_patience}); lower lr or "
                "check the data"
            )
        logger.warning(
            "non-finite training loss: batch skipped (%d in epoch %d, nonfinite_patience=%d)",
            self.nonfinite_count,
            epoch,
            self.nonfinite_patience,
        )

    def _fit_train(self, train_set, epoch, enable):
        """Train one epoch, then log how many batches a non-finite loss skipped."""
        super()._fit_train(train_set, epoch, enable)
        self._restore_pending_state()  # resumed after the epoch's last batch: none ran
        if self.nonfinite_count:
            logger.warning(
                "epoch %d: %d batch(es) skipped for a non-finite loss", epoch, self.nonfinite_count
            )

    def _should_save_intra_epoch_ckpt(self, last_ckpt_time, steps_since_ckpt):
        """Only between optimizer steps: no half-accumulated gradient is lost on resuming."""
        between_steps = self.step % self.grad_accumulation_factor == 0
        return between_steps and super()._should_save_intra_epoch_ckpt(
            last_ckpt_time, steps_since_ckpt
        )

    def optimizers_step(self):
        """Average gradients over the processes, then step."""
        distributed.average_gradients(self.modules.parameters())
        super().optimizers_step()

    def _wrap_distributed(self):
        """No DistributedDataParallel wrapper: gradients are averaged in ``optimizers_step``."""

    # ---------------------------------------------------------- evaluation --
    def evaluate_batch(self, batch, stage):
        """SpeechBrain's ``evaluate_batch`` (with a test-only crash point in validation)."""
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
