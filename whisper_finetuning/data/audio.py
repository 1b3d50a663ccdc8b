"""Audio as Whisper hears it: 16 kHz mono waveforms in windows of at most 30 s.

Every function takes a manifest ``wav`` reference: a file, or audio inside a tar shard, a
Hugging Face dataset or a Lhotse manifest (``audio_sources``).
"""

import numpy as np
import soundfile as sf
import torch
import torchaudio

from whisper_finetuning.data import audio_sources

SAMPLE_RATE = 16000
CHUNK_SECONDS = 30  # Whisper's encoder window: the longest clip it hears at once
# What soundfile and the audio sources raise for audio that is missing or cannot be decoded.
READ_ERRORS = (sf.LibsndfileError, RuntimeError, OSError)
CLIPPED_LEVEL = 0.999  # a sample this close to full scale (1.0) counts as clipped
FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")  # the only stored samples that can be NaN or infinite
NON_FINITE = "non-finite samples (NaN or inf)"
BLOCK_FRAMES = 1 << 16


class AudioError(ValueError):
    """An audio file that cannot be read."""


def read_audio(ref):
    """A mono float32 waveform at 16 kHz, whatever the audio's rate and channel count."""
    try:
        audio, rate = sf.read(audio_sources.soundfile_input(ref), dtype="float32", always_2d=True)
    except READ_ERRORS as error:
        raise AudioError(f"cannot read audio {ref}: {error}") from None
    if not np.isfinite(audio).all():
        raise AudioError(f"audio {ref} has {NON_FINITE}")
    wav = torch.from_numpy(audio).mean(dim=1)
    if rate != SAMPLE_RATE:
        wav = torchaudio.functional.resample(wav, rate, SAMPLE_RATE)
    return wav


def audio_info(ref):
    """soundfile's header facts (samplerate, channels, frames, duration), or None if unreadable."""
    try:
        return sf.info(audio_sources.soundfile_input(ref))
    except READ_ERRORS:
        return None


def audio_duration(ref):
    """Duration of the audio in seconds from its header (mp3 too), or None if unreadable."""
    info = audio_info(ref)
    return None if info is None else info.duration


def sample_stats(ref):
    """``non_finite`` (count), ``peak`` (max finite |sample|) and ``clipped`` (share of samples
    at ``CLIPPED_LEVEL`` or beyond) of the audio, read block by block; None if unreadable."""
    non_finite = clipped = frames = 0
    peak = 0.0
    try:
        blocks = sf.blocks(
            audio_sources.soundfile_input(ref),
            blocksize=BLOCK_FRAMES,
            dtype="float32",
            always_2d=True,
        )
        for block in blocks:
            finite = np.isfinite(block)
            non_finite += int(block.size - finite.sum())
            magnitude = np.abs(np.where(finite, block, 0))
            peak = max(peak, float(magnitude.max(initial=0)))
            clipped += int((magnitude >= CLIPPED_LEVEL).sum())
            frames += block.size
    except READ_ERRORS:
        return None
    return {"non_finite": non_finite, "peak": peak, "clipped": clipped / max(frames, 1)}


def has_non_finite(info, ref):
    """Whether the audio (``info``: its ``soundfile`` header) holds NaN or infinite samples;
    only float audio can, so integer audio is not read."""
    if info.subtype not in FLOAT_SUBTYPES:
        return False
    stats = sample_stats(ref)
    return stats is not None and stats["non_finite"] > 0
