"""Generated non-speech audio for ``nonspeech_probability`` without a ``nonspeech_csv``.

A small, fixed set of ``GENERATED_CLIPS`` clip recipes (numpy only): white, pink and brown
noise, steady tones (one to three partials), music-like sweeps (a gliding note with
harmonics, pulsed like a beat) and near silence (faint pink noise: a quiet room, where Whisper
is known to write "Thank you."). Clip ``index`` of a run is the same for a given seed on every
machine, in every data loader worker and after a kill and resume: its kind is ``index`` modulo
the kinds, its parameters and samples come from a generator seeded by (seed, index) only. It is
rendered at the length of the training row it replaces.
"""

import numpy as np

from whisper_finetuning.data.audio import SAMPLE_RATE

KINDS = ("white", "pink", "brown", "tone", "sweep", "quiet")
GENERATED_CLIPS = 48  # 8 of each kind
MIN_RMS, MAX_RMS = 0.01, 0.2  # about -40 to -14 dBFS
QUIET_MIN_RMS, QUIET_MAX_RMS = 0.0003, 0.003  # about -70 to -50 dBFS


def clip_kind(index):
    """The kind of generated clip ``index``."""
    return KINDS[index % len(KINDS)]


def generated_clip(seed, index, seconds):
    """Generated clip ``index`` (of ``GENERATED_CLIPS``) of run seed ``seed``, ``seconds``
    long: float32 samples at 16 kHz, RMS between ``MIN_RMS`` and ``MAX_RMS`` (near silence:
    between ``QUIET_MIN_RMS`` and ``QUIET_MAX_RMS``)."""
    rng = np.random.default_rng([seed % 2**32, index])
    n = max(1, round(seconds * SAMPLE_RATE))
    kind = clip_kind(index)
    if kind == "white":
        samples = rng.standard_normal(n)
    elif kind in ("pink", "brown", "quiet"):
        samples = _coloured(rng.standard_normal(n), 2.0 if kind == "brown" else 1.0)
    elif kind == "tone":
        t = np.arange(n) / SAMPLE_RATE
        samples = sum(
            np.sin(2 * np.pi * rng.uniform(80, 2000) * t + rng.uniform(0, 2 * np.pi))
            for _ in range(int(rng.integers(1, 4)))
        )
    else:
        samples = _sweep(rng, n)
    rms = np.sqrt(np.mean(samples**2)) or 1.0
    low, high = (QUIET_MIN_RMS, QUIET_MAX_RMS) if kind == "quiet" else (MIN_RMS, MAX_RMS)
    return (samples * rng.uniform(low, high) / rms).astype(np.float32)


def _coloured(white, exponent):
    """``white`` noise shaped to a 1/f**exponent power spectrum (pink: 1, brown: 2)."""
    spectrum = np.fft.rfft(white)
    frequencies = np.arange(len(spectrum), dtype=float)
    frequencies[0] = 1.0
    spectrum *= frequencies ** (-exponent / 2)
    spectrum[0] = 0.0  # no DC offset
    return np.fft.irfft(spectrum, len(white))


def _sweep(rng, n):
    """A note gliding exponentially between two pitches, with three harmonics, pulsed."""
    t = np.arange(n) / SAMPLE_RATE
    start, end = rng.uniform(110, 880, size=2)
    duration, rate = max(t[-1], 1 / SAMPLE_RATE), np.log(end / start)
    if abs(rate) < 1e-9:
        phase = 2 * np.pi * start * t
    else:
        phase = 2 * np.pi * start * duration * (np.exp(rate * t / duration) - 1) / rate
    harmonics = sum(np.sin(k * phase) / k for k in (1, 2, 3))
    beat = rng.uniform(1.5, 4.0)  # pulses per second
    return harmonics * (0.6 + 0.4 * np.cos(2 * np.pi * beat * t) ** 2)
