"""Audio as Whisper hears it: 16 kHz mono waveforms in windows of at most 30 s.

Every function takes a manifest ``wav`` reference: a file, or audio inside a tar shard, a
Hugging Face dataset or a Lhotse manifest (``audio_sources``).
"""

import soundfile as sf
import torch
import torchaudio

from whisper_finetuning import audio_sources

SAMPLE_RATE = 16000
CHUNK_SECONDS = 30  # Whisper's encoder window: the longest clip it hears at once
# What soundfile and the audio sources raise for audio that is missing or cannot be decoded.
READ_ERRORS = (sf.LibsndfileError, RuntimeError, OSError)


class AudioError(ValueError):
    """An audio file that cannot be read."""


def read_audio(ref):
    """A mono float32 waveform at 16 kHz, whatever the audio's rate and channel count."""
    try:
        audio, rate = sf.read(audio_sources.soundfile_input(ref), dtype="float32", always_2d=True)
    except READ_ERRORS as error:
        raise AudioError(f"cannot read audio {ref}: {error}") from None
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
