"""Generated non-speech audio for ``nonspeech_probability`` without a ``nonspeech_csv``.

A small, fixed set of ``GENERATED_CLIPS`` clip recipes: white, pink and brown noise, steady
tones (one to three partials), music-like sweeps (a gliding note with harmonics, pulsed like a
beat), near silence (faint pink noise: a quiet room, where Whisper is known to write "Thank
you.") and babble (six espeak-ng voices speaking German, French and Italian sentences at once,
far below speech level: chatter in the background, not words to write). Clip ``index`` of a
run is the same for a given seed in every data loader worker and after a kill and resume: its
kind is ``index`` modulo the kinds, its parameters and samples come from a generator seeded by
(seed, index) only (babble: and espeak-ng's voices). It is rendered at the length of the
training row it replaces.
"""

import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from whisper_finetuning.common.errors import RecipeError
from whisper_finetuning.data.audio import SAMPLE_RATE, read_audio
from whisper_finetuning.data.prepare.accent_corpus import load_sentences
from whisper_finetuning.data.prepare.swiss_corpus import SENTENCES_FOLDER, VOICES

KINDS = ("white", "pink", "brown", "tone", "sweep", "quiet", "babble")
GENERATED_CLIPS = 56  # 8 of each kind
MIN_RMS, MAX_RMS = 0.01, 0.2  # about -40 to -14 dBFS
QUIET_MIN_RMS, QUIET_MAX_RMS = 0.0003, 0.003  # about -70 to -50 dBFS
BABBLE_MIN_RMS, BABBLE_MAX_RMS = 0.002, 0.02  # about -54 to -34 dBFS: under espeak's -20
BABBLE_TALKERS = 6
BABBLE_SENTENCES = 2  # per talker
BABBLE_NEEDS = (
    "nonspeech_probability's generated clips include espeak-ng babble: install espeak-ng "
    "(apt-get install espeak-ng) or give nonspeech_csv"
)


def check_babble_tool():
    """Raise a one-line RecipeError if espeak-ng, which speaks the babble, is missing."""
    if shutil.which("espeak-ng") is None:
        raise RecipeError(BABBLE_NEEDS)


def clip_kind(index):
    """The kind of generated clip ``index``."""
    return KINDS[index % len(KINDS)]


def generated_clip(seed, index, seconds):
    """Generated clip ``index`` (of ``GENERATED_CLIPS``) of run seed ``seed``, ``seconds``
    long: float32 samples at 16 kHz, RMS between ``MIN_RMS`` and ``MAX_RMS`` (near silence
    and babble: between their own bounds)."""
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
    elif kind == "sweep":
        samples = _sweep(rng, n)
    else:
        talkers = _babble(seed, index)
        start = int(rng.integers(len(talkers)))  # a different stretch of it for each length
        samples = np.resize(np.roll(talkers, -start), n)  # repeated if the row is longer
    rms = np.sqrt(np.mean(samples**2)) or 1.0
    low, high = {
        "quiet": (QUIET_MIN_RMS, QUIET_MAX_RMS),
        "babble": (BABBLE_MIN_RMS, BABBLE_MAX_RMS),
    }.get(kind, (MIN_RMS, MAX_RMS))
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


@functools.lru_cache(maxsize=GENERATED_CLIPS)
def _babble(seed, index):
    """Babble clip ``index``: ``BABBLE_TALKERS`` espeak-ng voices (German, French, Italian,
    drawn by (seed, index)) each speaking ``BABBLE_SENTENCES`` sentences, started up to a
    second apart and summed; spoken once per process."""
    rng = np.random.default_rng([seed % 2**32, index, 1])  # apart from the level's draws
    languages = sorted(VOICES)
    voices = []
    with tempfile.TemporaryDirectory() as tmp:
        for talker in range(BABBLE_TALKERS):
            language = languages[int(rng.integers(len(languages)))]
            sentences = load_sentences(SENTENCES_FOLDER / f"{language}.txt")
            first = int(rng.integers(len(sentences)))
            text = " ".join(
                sentences[(first + k) % len(sentences)] for k in range(BABBLE_SENTENCES)
            )
            voice = VOICES[language][int(rng.integers(len(VOICES[language])))]
            path = Path(tmp) / f"{talker}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True)
            audio = read_audio(path).numpy()
            voices.append(np.concatenate([np.zeros(int(rng.uniform(0, 1) * SAMPLE_RATE)), audio]))
    mix = np.zeros(max(len(v) for v in voices))
    for audio in voices:
        mix[: len(audio)] += audio
    return mix
