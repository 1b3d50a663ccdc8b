"""Deterministic English accent corpus synthesised offline with espeak-ng.

The demo needs English speech from several "dialect groups" without downloading
a data set, so every sentence of ``accent_sentences.txt`` is spoken by each of
a few espeak-ng English voices. Speed and pitch vary per utterance, but they are
derived from a hash of the seed and the utterance ID, so the same seed always
gives byte-identical audio and manifests. The split is made by sentence, so no
text is shared between train, valid and test, and every voice speaks every
sentence of every split.

For the long-form evaluation, each voice's test sentences are also joined, in order, into
recordings of 40-90 s (``longform_test.csv``): each clip trimmed to its speech (samples above
2% of its peak), short silent gaps between them, and the segment times recorded in a
``segments`` column (a JSON list of ``[start, end, text]``).

Usage:
    python -m whisper_finetuning.data.prepare.accent_corpus DATA_FOLDER \
        [--save_folder DIR] [--seed N]
"""

import argparse
import csv
import hashlib
import json
import logging
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from whisper_finetuning.common.files import atomic_path, write_csv
from whisper_finetuning.data.audio import SAMPLE_RATE, audio_duration, read_audio
from whisper_finetuning.data.prepare.nonspeech_test import nonspeech_rows
from whisper_finetuning.data.prepare.synthesis import (
    MANIFEST_HEADER,
    check_tools,
    fraction,
    run_tool,
)

logger = logging.getLogger(__name__)

SENTENCES_FILE = Path(__file__).with_name("accent_sentences.txt")
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp")
SPLITS = ("train", "valid", "test")
DEFAULT_SEED = 1234

SPEED_WPM = (150, 175)  # inclusive range for `espeak-ng -s`
PITCH = (40, 60)  # inclusive range for `espeak-ng -p` (0-99 scale)
HEADROOM_DB = 1  # espeak-ng peaks at full scale; resampling would overshoot and clip
N_WORKERS = 2  # the demo machine has two cores

DATA_ROOT = "$data_root"  # SpeechBrain replaces it with data_folder at load time

LONGFORM = "longform_test"  # the long-form manifest's name (a test set of train.py)
LONGFORM_SECONDS = (40.0, 90.0)  # each recording's length lies in this range
LONGFORM_GAP_SECONDS = (0.3, 1.0)  # silence between two sentences
SPEECH_THRESHOLD = 0.02  # of a clip's peak: where its speech starts and ends
LONGFORM_HEADER = (*MANIFEST_HEADER, "segments")


@dataclass(frozen=True)
class Utterance:
    """One sentence spoken by one voice (an espeak-ng voice, ``+variant`` allowed)."""

    utt_id: str
    voice: str
    text: str
    language: str = "english"

    @property
    def rel_wav(self) -> str:
        """Path of the audio file relative to the data folder."""
        return f"wav/{voice_slug(self.voice)}/{self.utt_id}.wav"


def voice_slug(voice: str) -> str:
    """A voice as a file and ID part: ``de+m3`` -> ``de-m3``."""
    return voice.replace("+", "-")


def plan_split(
    sentences: list[str], indices: list[int], voices: tuple[str, ...], language: str
) -> list[Utterance]:
    """Every sentence of ``indices`` spoken by every voice, in sentence order."""
    return [
        Utterance(f"{voice_slug(voice)}_s{index:04d}", voice, sentences[index], language)
        for index in indices
        for voice in voices
    ]


def load_sentences(path: Path = SENTENCES_FILE) -> list[str]:
    """Return the non-empty lines of the sentence file, in file order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip()]


def split_sentences(
    n_sentences: int, n_valid: int, n_test: int, n_train: int | None, seed: int
) -> dict[str, list[int]]:
    """Split sentence indices: shuffle with ``seed``, then take test, valid, train.

    ``n_train=None`` puts all remaining sentences in train. Each split is sorted
    so manifests list sentences in file order.
    """
    if n_train is None:
        n_train = n_sentences - n_test - n_valid
    if min(n_train, n_valid, n_test) < 0 or n_test + n_valid + n_train > n_sentences:
        raise ValueError(
            f"cannot take {n_test} test + {n_valid} valid + {n_train} train sentences "
            f"from {n_sentences}"
        )
    order = list(range(n_sentences))
    random.Random(seed).shuffle(order)
    bounds = {"test": (0, n_test), "valid": (n_test, n_test + n_valid)}
    bounds["train"] = (n_test + n_valid, n_test + n_valid + n_train)
    return {split: sorted(order[start:end]) for split, (start, end) in bounds.items()}


def prosody(seed: int, utt_id: str) -> tuple[int, int]:
    """Deterministic (speed in wpm, pitch) for one utterance, from a hash of seed and ID."""
    digest = hashlib.sha256(f"{seed}:{utt_id}".encode()).digest()
    speed = SPEED_WPM[0] + int.from_bytes(digest[:4]) % (SPEED_WPM[1] - SPEED_WPM[0] + 1)
    pitch = PITCH[0] + int.from_bytes(digest[4:8]) % (PITCH[1] - PITCH[0] + 1)
    return speed, pitch


def synthesize(utt: Utterance, data_folder: Path, tmp_dir: Path, seed: int) -> None:
    """Speak one utterance with espeak-ng and store it as 16 kHz mono 16-bit PCM.

    sox runs without dither (-D) so its output is byte-reproducible, with a little
    headroom so resampling never clips. The final file appears atomically, so an
    interrupted run never leaves a truncated wav behind.
    """
    speed, pitch = prosody(seed, utt.utt_id)
    raw = tmp_dir / f"{utt.utt_id}.wav"
    out = data_folder / utt.rel_wav
    out.parent.mkdir(parents=True, exist_ok=True)
    espeak = ["espeak-ng", "-v", utt.voice, "-s", str(speed), "-p", str(pitch), "-w", str(raw)]
    run_tool([*espeak, utt.text], utt.utt_id)
    convert = ["-t", "wav", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", "-e", "signed-integer"]
    gain = ["gain", f"-{HEADROOM_DB}"]  # applied before sox's automatic rate effect
    with atomic_path(out) as partial:
        run_tool(["sox", "-D", "-V1", str(raw), *convert, partial, *gain], utt.utt_id)
    raw.unlink()


def manifests_current(
    manifests: dict[str, Path],
    plan: dict[str, list[Utterance]],
    data_folder: Path,
    extra_rows: dict[str, list[list[str]]],
) -> bool:
    """True if every manifest lists exactly the planned utterances, then its ``extra_rows``,
    and all their wavs exist."""
    for split, path in manifests.items():
        if not path.is_file():
            return False
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        planned = [(u.utt_id, u.text) for u in plan[split]]
        planned += [(row[0], row[-1]) for row in extra_rows.get(split, [])]
        if [(row["ID"], row["wrd"]) for row in rows] != planned:
            return False
        if not all(Path(row["wav"].replace(DATA_ROOT, str(data_folder))).is_file() for row in rows):
            return False
    return True


def write_manifest(path: Path, utterances: list[Utterance], data_folder: Path, extra_rows) -> None:
    """Write a SpeechBrain CSV manifest atomically: the utterances' rows, then ``extra_rows``."""
    rows = [
        [
            utt.utt_id,
            f"{audio_duration(data_folder / utt.rel_wav):.3f}",
            f"{DATA_ROOT}/{utt.rel_wav}",
            utt.voice,
            utt.voice,
            utt.language,
            utt.text,
        ]
        for utt in utterances
    ]
    write_csv(path, MANIFEST_HEADER, rows + extra_rows)


def prepare_accent_corpus(
    data_folder: str | Path,
    save_folder: str | Path,
    n_valid_sentences: int = 20,
    n_test_sentences: int = 40,
    n_train_sentences: int | None = None,
    voices: tuple[str, ...] = VOICES,
    seed: int = DEFAULT_SEED,
    n_nonspeech_test: int = 0,
) -> dict[str, str]:
    """Synthesise the corpus into ``data_folder/wav`` and write train/valid/test manifests.

    Returns {"train": path, "valid": path, "test": path} of the CSVs in ``save_folder``;
    the long-form recordings' manifest is ``save_folder/longform_test.csv``. The test manifest
    ends with ``n_nonspeech_test`` non-speech clips (babble of the test sentences, chords, hum,
    near silence; ``nonspeech_test.py``). If those manifests already describe this
    configuration and all their audio exists, returns at once without synthesising anything.
    """
    sentences = load_sentences()
    splits = split_sentences(
        len(sentences), n_valid_sentences, n_test_sentences, n_train_sentences, seed
    )
    plan = {split: plan_split(sentences, splits[split], voices, "english") for split in SPLITS}
    data_folder, save_folder = Path(data_folder), Path(save_folder)
    test_sentences = [sentences[index] for index in splits["test"]]
    extra_rows = {
        "test": nonspeech_rows(data_folder, n_nonspeech_test, seed, voices, test_sentences)
    }
    manifests = {split: save_folder / f"{split}.csv" for split in SPLITS}
    resynthesised = not manifests_current(manifests, plan, data_folder, extra_rows)
    result = synthesize_corpus(plan, data_folder, save_folder, seed, extra_rows)
    longform = save_folder / f"{LONGFORM}.csv"
    if resynthesised or not longform_current(longform, data_folder):
        write_longform(longform, plan["test"], data_folder, seed)
    return result


def synthesize_corpus(
    plan: dict[str, list[Utterance]],
    data_folder: str | Path,
    save_folder: str | Path,
    seed: int,
    extra_rows: dict[str, list[list[str]]] | None = None,
) -> dict[str, str]:
    """Speak the planned utterances of each split (``plan``'s keys: train, valid, test and any
    other manifest, e.g. a keep test set) and write ``SPLIT.csv``, followed by the split's
    ``extra_rows`` (unless current)."""
    extra_rows = extra_rows or {}
    data_folder, save_folder = Path(data_folder), Path(save_folder)
    manifests = {split: save_folder / f"{split}.csv" for split in plan}
    result = {split: str(path) for split, path in manifests.items()}
    if manifests_current(manifests, plan, data_folder, extra_rows):
        logger.info("Corpus already prepared in %s", save_folder)
        return result

    check_tools()
    utterances = [utt for split in plan for utt in plan[split]]
    logger.info("Synthesising %d utterances into %s", len(utterances), data_folder)
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(N_WORKERS) as pool:
        for _ in pool.map(lambda u: synthesize(u, data_folder, Path(tmp), seed), utterances):
            pass  # consuming the iterator re-raises the first failure
    logger.info("Synthesis took %.1f s", time.monotonic() - start)

    save_folder.mkdir(parents=True, exist_ok=True)
    for split in plan:
        write_manifest(manifests[split], plan[split], data_folder, extra_rows.get(split, []))
    return result


def speech(audio):
    """The clip cut to its speech: from the first to the last sample above the threshold."""
    loud = np.nonzero(np.abs(audio) > SPEECH_THRESHOLD * np.abs(audio).max())[0]
    return audio[loud[0] : loud[-1] + 1]


def longform_recordings(utterances, data_folder, seed):
    """Each voice's utterances joined in order into recordings of ``LONGFORM_SECONDS``:
    ``[(recording id, voice, [(start s, clip, text), ...])]``; a voice's remainder shorter
    than the minimum is left out."""
    low, high = LONGFORM_SECONDS
    recordings = []
    for voice in dict.fromkeys(u.voice for u in utterances):
        parts, end = [], 0.0
        rec_id = f"{voice}_long00"
        for utt in (u for u in utterances if u.voice == voice):
            clip = speech(read_audio(data_folder / utt.rel_wav).numpy())
            share = fraction(seed, rec_id, len(parts), "gap")
            gap = LONGFORM_GAP_SECONDS[0] + share * (
                LONGFORM_GAP_SECONDS[1] - LONGFORM_GAP_SECONDS[0]
            )
            if parts and end + gap + len(clip) / SAMPLE_RATE > high:  # full: start another
                recordings.append((rec_id, voice, parts))
                parts, end, rec_id = [], 0.0, f"{voice}_long{int(rec_id[-2:]) + 1:02d}"
            start = round(end + gap, 3) if parts else 0.0
            parts.append((start, clip, utt.text))
            end = start + len(clip) / SAMPLE_RATE
            if end >= low + (high - low) * fraction(seed, rec_id, "length"):
                recordings.append((rec_id, voice, parts))
                parts, end, rec_id = [], 0.0, f"{voice}_long{int(rec_id[-2:]) + 1:02d}"
        if parts and end >= low:
            recordings.append((rec_id, voice, parts))
    return recordings


def write_longform(path, utterances, data_folder, seed):
    """Write the long-form recordings' audio under ``data_folder/longform`` and their
    manifest at ``path``."""
    rows = []
    (data_folder / "longform").mkdir(parents=True, exist_ok=True)
    language = {utt.voice: utt.language for utt in utterances}  # one language per voice
    for rec_id, voice, parts in longform_recordings(utterances, data_folder, seed):
        last_start, last_clip, _ = parts[-1]
        audio = np.zeros(round(last_start * SAMPLE_RATE) + len(last_clip), dtype=np.float32)
        segments = []
        for start, clip, text in parts:
            first = round(start * SAMPLE_RATE)
            audio[first : first + len(clip)] = clip
            segments.append([start, round(start + len(clip) / SAMPLE_RATE, 3), text])
        rel_wav = f"longform/{rec_id}.wav"
        with atomic_path(data_folder / rel_wav) as partial:
            sf.write(partial, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        text = " ".join(text for _, _, text in parts)
        duration = f"{len(audio) / SAMPLE_RATE:.3f}"
        row = [rec_id, duration, f"{DATA_ROOT}/{rel_wav}", voice, voice, language[voice], text]
        rows.append([*row, json.dumps(segments)])
    write_csv(path, LONGFORM_HEADER, rows)
    logger.info("Long-form test set: %d recordings -> %s", len(rows), path)


def longform_current(path, data_folder):
    """True if the long-form manifest exists and all its recordings do."""
    if not path.is_file():
        return False
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return all(Path(r["wav"].replace(DATA_ROOT, str(data_folder))).is_file() for r in rows)


def run_command_line(argv, description, prepare, describe):
    """A corpus's command line: ``prepare(data_folder, save_folder, seed=...)``, then one line
    per split with ``describe(rows)`` (its manifest's rows)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("data_folder", help="where wav/<voice>/<id>.wav files are written")
    parser.add_argument("--save_folder", help="where manifests are written (default: data_folder)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        manifests = prepare(args.data_folder, args.save_folder or args.data_folder, seed=args.seed)
    except (RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for split, path in manifests.items():
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        print(f"{split}: {describe(rows)} -> {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: build the corpus and print the size of each split."""

    def describe(rows):
        return f"{len(rows)} utterances, {sum(float(r['duration']) for r in rows) / 60:.1f} min"

    return run_command_line(argv, __doc__.splitlines()[0], prepare_accent_corpus, describe)


if __name__ == "__main__":
    sys.exit(main())
