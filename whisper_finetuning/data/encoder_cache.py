"""Frozen-encoder outputs computed once per utterance and kept on disk.

With the encoder (or its bottom layers) frozen and no augmentation touching its input, the
frozen part computes the same output for an utterance in every epoch; on CPU it is most of the
cost of a step. This cache stores that output per utterance as float16 ``.npy`` files, read back
whole and checked against their records.

An entry's name is a content hash of the frozen encoder weights, the feature settings and the
encoded audio's bytes, so changing the model, the freezing boundary, the features or an audio file
makes the old entry unreachable and the next run recomputes it.

Beside each entry ``KEY.npy``, ``KEY.json`` records its SHA-256, shape and dtype when it is
written; ``prepare`` recomputes an entry that does not match (NaN-filled, cut short,
truncated, or without its record) and counts those in the log. ``load`` checks an entry again
at each read: one damaged during a run is recomputed, counted and logged, never used.
"""

import copy
import hashlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from whisper_finetuning.common.checksums import damage
from whisper_finetuning.common.errors import RecipeError
from whisper_finetuning.common.files import atomic_path, write_json
from whisper_finetuning.data import audio_sources
from whisper_finetuning.data.audio import SAMPLE_RATE, read_audio

logger = logging.getLogger(__name__)

CACHE_DTYPE = np.float16
MODES = ("auto", True, False)  # the encoder_cache hparam


def cache_blocker(whisper, augment):
    """Why the encoder cache cannot serve training, or None when it can."""
    if whisper.frozen_encoder_depth == 0:
        return "the encoder's convolutional stem trains"
    if augment:
        return "waveform augmentation changes the encoder input every epoch"
    return None


def use_cache(mode, whisper, augment):
    """Decide from ``encoder_cache`` (auto/true/false) whether training reads cached outputs."""
    blocker = cache_blocker(whisper, augment)
    if mode is True and blocker:
        raise ValueError(f"encoder_cache=true is invalid here: {blocker}; set encoder_cache=auto")
    if mode == "auto" and blocker:
        logger.info("encoder cache off for training: %s", blocker)
    return mode is not False and blocker is None


def fingerprint(whisper):
    """Hash of everything the frozen part's output depends on, apart from the audio."""
    digest = hashlib.sha256()
    extractor = whisper.feature_extractor
    settings = (
        f"depth={whisper.frozen_encoder_depth};n_fft={extractor.n_fft};"
        f"hop={extractor.hop_length};mels={extractor.feature_size};"
        f"samples={whisper.window_seconds * SAMPLE_RATE}"  # the window step
    )
    digest.update(settings.encode())
    for name, param in whisper.model.model.encoder.named_parameters():
        if not param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()[:20]


class EncoderCache:
    """Per-utterance frozen-encoder outputs under ``folder``, named by content hash."""

    def __init__(self, folder, whisper, device="cpu", batch_size=8):
        self.whisper = whisper
        self.device = device
        self.batch_size = batch_size
        self.folder = Path(folder) / fingerprint(whisper)
        self.damaged_reads = 0  # entries found damaged by ``load`` (in this process)
        self._cpu_copy = None  # a loader worker's copy of a model held on an accelerator

    def _entry(self, wav_ref):
        """Where the output for this audio (a file, or audio in a shard or dataset) lives."""
        digest = hashlib.sha256(self.folder.name.encode())
        audio_sources.digest_update(digest, wav_ref)
        key = digest.hexdigest()
        return self.folder / key[:2] / f"{key}.npy"

    def prepare(self, dataset):
        """Compute what is missing for ``dataset``; returns ``{utterance id: entry path}``."""
        entries = {u: self._entry(dataset.data[u]["wav"]) for u in dataset.data_ids}
        missing = [u for u, path in entries.items() if not path.exists()]
        damaged = [u for u, path in entries.items() if path.exists() and not intact(path)]
        if damaged:
            logger.warning(
                "encoder cache: %d damaged entr%s recomputed (e.g. %s)",
                len(damaged),
                "y" if len(damaged) == 1 else "ies",
                entries[damaged[0]],
            )
            missing += damaged
        if missing:
            logger.info("encoder cache: computing %d of %d utterances", len(missing), len(entries))
        for start in tqdm(range(0, len(missing), self.batch_size), disable=not missing):
            ids = missing[start : start + self.batch_size]
            self._compute([dataset.data[u]["wav"] for u in ids], [entries[u] for u in ids])
        return entries

    def load(self, path, wav_ref):
        """The entry at ``path`` (for the audio ``wav_ref``) as a float32 tensor, checked
        against its record at this read: an entry damaged since ``prepare`` checked it is
        recomputed, counted (``damaged_reads``) and logged, never used."""
        hidden = read_verified(path)
        if hidden is not None:
            return hidden
        self.damaged_reads += 1
        logger.warning(
            "encoder cache: %s was damaged during the run: recomputed (%d such entr%s in this "
            "process)",
            path,
            self.damaged_reads,
            "y" if self.damaged_reads == 1 else "ies",
        )
        whisper, device = self._model_here()
        self._compute([wav_ref], [path], whisper, device)
        hidden = read_verified(path)
        if hidden is None:
            raise RecipeError(
                f"encoder cache: {path} does not read back as written: is the disk ok?"
            )
        return hidden

    def _model_here(self):
        """The model and device to recompute with in this process: a loader worker cannot use
        an accelerator the main process holds, so it computes on a CPU copy."""
        device = next(self.whisper.parameters()).device
        if device.type == "cpu" or torch.utils.data.get_worker_info() is None:
            return self.whisper, device
        if self._cpu_copy is None:
            self._cpu_copy = copy.deepcopy(self.whisper).cpu()
        return self._cpu_copy, torch.device("cpu")

    @torch.no_grad()
    def _compute(self, wav_paths, targets, whisper=None, device=None):
        """Run the frozen part on a batch of files and store each output atomically."""
        whisper = whisper or self.whisper
        device = device or self.device
        wavs = [read_audio(p) for p in wav_paths]
        batch = torch.zeros(len(wavs), max(len(w) for w in wavs))
        for i, wav in enumerate(wavs):
            batch[i, : len(wav)] = wav
        lens = torch.tensor([len(w) / batch.shape[1] for w in wavs])
        was_training = whisper.training
        whisper.eval()
        groups = whisper.encode_frozen_by_window(batch.to(device), lens.to(device))
        whisper.train(was_training)
        for rows, out in groups:
            for row, hidden in zip(rows, out.cpu().numpy().astype(CACHE_DTYPE), strict=True):
                targets[row].parent.mkdir(parents=True, exist_ok=True)
                write_entry(targets[row], hidden)


def write_entry(path, hidden):
    """Store one output at ``path`` and its record (SHA-256, shape, dtype) beside it."""
    buffer = io.BytesIO()
    np.save(buffer, hidden)
    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        out.write(buffer.getvalue())
    record = {"sha256": hashlib.sha256(buffer.getvalue()).hexdigest()}
    write_json(
        path.with_suffix(".json"), {**record, "shape": hidden.shape, "dtype": hidden.dtype.name}
    )


def intact(path):
    """Whether the entry at ``path`` is the one its record says was written."""
    try:
        record = json.loads(path.with_suffix(".json").read_text())
        return damage(path, record["sha256"]) is None
    except (OSError, ValueError, KeyError, TypeError):
        return False


def read_verified(path):
    """The entry at ``path`` as a float32 tensor, or None when it is not the one its record
    says was written (its bytes are read once: hashed, then parsed)."""
    try:
        record = json.loads(path.with_suffix(".json").read_text())
        data = Path(path).read_bytes()
        if hashlib.sha256(data).hexdigest() != record["sha256"]:
            return None
        return as_float32(np.load(io.BytesIO(data)))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_entry(path):
    """One cached output as a float32 tensor."""
    return as_float32(np.load(path))


def as_float32(array):
    """A stored float16 array as a float32 tensor (torch converts 2-3x faster than numpy)."""
    return torch.from_numpy(array).float()
