"""Audio as Whisper hears it: 16 kHz mono waveforms in windows of at most 30 s."""

import soundfile as sf
import torch
import torchaudio

SAMPLE_RATE = 16000
CHUNK_SECONDS = 30  # Whisper's encoder window: the longest clip it hears at once


class AudioError(ValueError):
    """An audio file that cannot be read."""


def read_audio(path):
    """A mono float32 waveform at 16 kHz, whatever the file's rate and channel count."""
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as error:
        raise AudioError(f"cannot read audio {path}: {error}") from None
    wav = torch.from_numpy(audio).mean(dim=1)
    if rate != SAMPLE_RATE:
        wav = torchaudio.functional.resample(wav, rate, SAMPLE_RATE)
    return wav


def audio_duration(path):
    """Duration of an audio file in seconds from its header (mp3 too), or None if unreadable."""
    try:
        return sf.info(path).duration
    except (sf.LibsndfileError, RuntimeError, OSError):
        return None
