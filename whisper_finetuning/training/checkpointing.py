"""Checkpoints that a kill, a full disk or a read-only folder cannot leave half-written.

SpeechBrain's ``Checkpointer`` writes ``CKPT.yaml`` first and the parameter files after it,
straight into ``save/CKPT+...``: a process killed in between leaves a folder that looks
complete and breaks the next resume. ``AtomicCheckpointer`` writes a checkpoint into a hidden
temporary folder, flushes every file to disk, and renames the folder into place, so a
``CKPT+`` folder is always whole; deletion renames first too. Leftovers of an interrupted save
or deletion are removed on the next start. A save that fails (no space, read-only folder)
raises a ``CheckpointError`` with one line to show, and the last good checkpoint stays.

Every parameter file's SHA-256 is recorded in ``CKPT.yaml`` (``sha256``) when it is saved and
checked before it is loaded (``VerifiedCheckpointer``, which the export and ``init_from`` use
too): a damaged, missing or replaced file, or a ``CKPT.yaml`` that is not one, is refused with
one line naming it and what to do instead.
"""

import collections
import logging
import os
import random
import shutil
import signal

import numpy as np
import torch
import yaml
from speechbrain.utils.checkpoints import (
    DEFAULT_SAVE_HOOKS,
    METAFNAME,
    Checkpoint,
    Checkpointer,
    ckpt_recency,
    get_default_hook,
)
from speechbrain.utils.distributed import ddp_barrier, ddp_broadcast, get_rank, if_main_process

from whisper_finetuning.common.checksums import damage, sha256_files
from whisper_finetuning.common.errors import RecipeError
from whisper_finetuning.common.files import atomic_path

logger = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
# Test-only fault injection: "<point>:<n>" makes the process SIGKILL itself the n-th time it
# reaches crash_point("<point>"); "<point>:<n>:<SIGNAL>" sends that signal instead (e.g.
# SIGTERM, as a cluster does before preempting). Unset in normal use.
CRASH_ENV = "RECIPE_TEST_CRASH_AT"
_crash_hits = collections.Counter()
CHECKSUMS_KEY = "sha256"  # in CKPT.yaml: {parameter file name: its SHA-256}
RESUME_ADVICE = (
    "move {checkpoint} out of {folder} to resume from the previous kept checkpoint, or start a "
    "new --output_folder (--init_from=EXPERIMENT starts it from another run's checkpoint)"
)


class CheckpointError(RecipeError, RuntimeError):
    """A checkpoint that cannot be saved or loaded; the message is one line for the user."""


class DamagedCheckpointFile(ValueError):
    """A checkpoint file that cannot be what was saved: unreadable, incomplete or non-finite."""


def crash_point(name):
    """Signal this process here if ``RECIPE_TEST_CRASH_AT`` asks for it (tests only)."""
    wanted = os.environ.get(CRASH_ENV)
    if not wanted or wanted.split(":")[0] != name:
        return
    _, count, *signal_name = wanted.split(":")
    _crash_hits[name] += 1
    if _crash_hits[name] == int(count):
        os.kill(os.getpid(), getattr(signal, signal_name[0]) if signal_name else signal.SIGKILL)


def fsync_path(path):
    """Flush a file's or a folder's content to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_torch_save(obj, path):
    """``torch.save`` to a temporary name, flushed, then renamed: never half a file at ``path``.

    Saved through a file object, so the bytes do not depend on the temporary name (torch names
    the archive inside after the file) and equal content has an equal checksum.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        torch.save(obj, out)


def rng_state():
    """The global random states of torch (CPU and every GPU), numpy and Python, as tensors and
    tuples."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "python": random.getstate(),
    }


def set_rng_state(state):
    """Restore what ``rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])


def _first_line(error):
    """One line describing an exception."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _unwrapped(hook):
    """A save hook without SpeechBrain's main-process wrapper (we run on main ourselves)."""
    return getattr(hook, "__wrapped__", hook)


class VerifiedCheckpointer(Checkpointer):
    """A ``Checkpointer`` that loads a checkpoint only when each of its files is the one saved.

    ``advice`` says what to do instead of using a refused checkpoint; ``{checkpoint}`` and
    ``{folder}`` in it are filled in.
    """

    def __init__(self, checkpoints_dir, *args, advice=RESUME_ADVICE, **kwargs):
        super().__init__(checkpoints_dir, *args, **kwargs)
        self.advice = advice

    def _refusal(self, problem, checkpoint_dir):
        """The one line refusing a checkpoint."""
        advice = self.advice.format(checkpoint=checkpoint_dir.name, folder=self.checkpoints_dir)
        return CheckpointError(f"{problem}; {advice}")

    def _construct_checkpoint_objects(self, checkpoint_dirs):
        """SpeechBrain's listing, with a ``CKPT.yaml`` that is not a checkpoint's refused."""
        checkpoints = []
        for folder in checkpoint_dirs:
            try:
                checkpoints += super()._construct_checkpoint_objects([folder])
            except (yaml.YAMLError, UnicodeDecodeError, OSError):
                checkpoints.append(Checkpoint(folder, None, {}))
            if not isinstance(checkpoints[-1].meta, dict) or (
                "end-of-epoch" not in checkpoints[-1].meta
            ):
                raise self._refusal(f"{folder / METAFNAME} is not a checkpoint's metadata", folder)
        return checkpoints

    def verify(self, checkpoint):
        """Refuse a checkpoint whose files differ from those its ``CKPT.yaml`` recorded
        (checkpoints saved before checksums were recorded are not checked)."""
        for name, digest in (checkpoint.meta.get(CHECKSUMS_KEY) or {}).items():
            why = damage(checkpoint.path / name, digest)
            if why:
                raise self._refusal(f"{checkpoint.path / name} {why}", checkpoint.path)

    def load_checkpoint(self, checkpoint):
        """Load, or say in one line why this folder's checkpoint cannot be used."""
        self.verify(checkpoint)
        try:
            super().load_checkpoint(checkpoint)
        except DamagedCheckpointFile as error:
            raise self._refusal(error, checkpoint.path) from None
        except (ValueError, RuntimeError, KeyError, OSError, EOFError) as error:
            raise CheckpointError(
                f"cannot resume from {checkpoint.path}: {_first_line(error)}; it belongs to "
                "another model or run: use another output_folder or move it away"
            ) from None


class AtomicCheckpointer(VerifiedCheckpointer):
    """A ``VerifiedCheckpointer`` whose checkpoints appear whole or not at all.

    Every recoverable is saved by the main process (the other processes wait and receive the
    outcome), so a failing disk stops all processes with the same one-line error.
    """

    def __init__(self, checkpoints_dir, *args, **kwargs):
        super().__init__(checkpoints_dir, *args, **kwargs)
        if (get_rank() or 0) == 0:
            self.remove_leftovers()

    def remove_leftovers(self):
        """Delete what an interrupted save or deletion left behind."""
        for path in self.checkpoints_dir.iterdir():
            if path.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
                logger.warning("removing an interrupted checkpoint write: %s", path)
                shutil.rmtree(path, ignore_errors=True)

    def save_checkpoint(self, meta=None, end_of_epoch=True, name=None, verbosity=logging.INFO):
        """Save into a temporary folder, flush it, rename it to ``CKPT+...``.

        Called on every process: first each recoverable with a ``gather_before_save`` method
        collects what the other processes hold (their random states), then the main process
        saves.
        """
        for obj in self.recoverables.values():
            if hasattr(obj, "gather_before_save"):
                obj.gather_before_save()
        outcome = None
        if if_main_process():
            try:
                outcome = self._save_atomically(meta or {}, end_of_epoch, name)
            except (OSError, RuntimeError) as error:  # torch reports a full disk as RuntimeError
                outcome = (
                    f"cannot save a checkpoint in {self.checkpoints_dir}: "
                    f"{getattr(error, 'strerror', None) or _first_line(error)}; {self._last_good()}"
                )
        outcome = ddp_broadcast(outcome)
        if isinstance(outcome, str):
            raise CheckpointError(outcome)
        if if_main_process():
            kind = "end-of-epoch" if end_of_epoch else "intra-epoch"
            logger.log(verbosity, f"Saved an {kind} checkpoint in {outcome.path}")
            return outcome
        return None

    def _save_atomically(self, meta, end_of_epoch, name):
        """The main process's part of ``save_checkpoint``."""
        final = self._custom_checkpoint_dirpath(name) if name else self._new_checkpoint_dirpath()
        tmp = final.with_name(f"{TMP_PREFIX}{final.name}")
        tmp.mkdir(parents=True)
        try:
            paramfiles = {}
            for key, obj in self.recoverables.items():
                paramfiles[key] = tmp / f"{key}.ckpt"
                hook = self.custom_save_hooks.get(key) or get_default_hook(obj, DEFAULT_SAVE_HOOKS)
                if hook is None:
                    raise RuntimeError(f"don't know how to save {type(obj)}")
                _unwrapped(hook)(obj, paramfiles[key])
                if len(paramfiles) == 1:
                    crash_point("save")  # once per save, with some files written
            sums = sha256_files(tmp, sorted(path.name for path in paramfiles.values()))
            saved_meta = self._save_checkpoint_metafile(
                tmp / METAFNAME, {**meta, CHECKSUMS_KEY: sums}, end_of_epoch
            )
            for path in tmp.iterdir():
                fsync_path(path)
            fsync_path(tmp)
            os.rename(tmp, final)
            fsync_path(self.checkpoints_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        paramfiles = {key: final / path.name for key, path in paramfiles.items()}
        return Checkpoint(final, saved_meta, paramfiles)

    def _last_good(self):
        """Which checkpoint survives a failed save, said for the user."""
        latest = self.find_checkpoint()
        if latest is None:
            return "no earlier checkpoint exists"
        return f"the last good checkpoint {latest.path.name} is kept"

    def delete_checkpoints(
        self,
        *,
        num_to_keep=1,
        min_keys=None,
        max_keys=None,
        importance_keys=(ckpt_recency,),
        ckpt_predicate=None,
        verbosity=logging.INFO,
    ):
        """SpeechBrain's selection of what to delete; each folder is renamed away, then removed.

        A kill mid-way never leaves a partial ``CKPT+`` folder that looks loadable.
        """
        keys = [{"min_key": key} for key in min_keys or []]
        keys += [{"max_key": key} for key in max_keys or []]
        keys += [{"importance_key": key} for key in importance_keys]
        doomed, protected = set(), set()
        for key in keys:
            doomed.update(self.find_checkpoints(ckpt_predicate=ckpt_predicate, **key))
            protected.update(
                self.find_checkpoints(
                    ckpt_predicate=ckpt_predicate, max_num_checkpoints=num_to_keep, **key
                )
            )
        ddp_barrier()
        if if_main_process():
            for checkpoint in doomed - protected:
                trash = checkpoint.path.with_name(f"{TRASH_PREFIX}{checkpoint.path.name}")
                os.rename(checkpoint.path, trash)
                shutil.rmtree(trash)
                logger.log(verbosity, f"Deleted checkpoint in {checkpoint.path}")
        ddp_barrier()
