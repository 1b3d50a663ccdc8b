"""Manifests and audio: load, check every row once, and read audio as Whisper wants it.

Bad rows (missing or unreadable audio, empty transcripts, labels longer than the decoder can
hold, audio over 30 s) are found before training starts and either skipped with a counted,
logged reason or reported as one clear error, as ``on_bad_row`` says. Labels are never
truncated. Audio at another sample rate or with several channels is converted on reading.
"""

import csv
import logging
import os
import tempfile
from collections import Counter
from pathlib import Path

import soundfile as sf
import speechbrain as sb

from whisper_finetuning.audio import CHUNK_SECONDS
from whisper_finetuning.model import MAX_TARGET_POSITIONS

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("ID", "duration", "wav", "wrd")
BAD_ROW_POLICIES = ("skip", "error")


class DataError(ValueError):
    """A manifest or audio file that cannot be used."""


def write_csv_atomically(csv_path, header, rows):
    """Write a CSV via a temporary file and ``os.replace``: never half a manifest on disk."""
    folder = os.path.dirname(os.path.abspath(csv_path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=folder, prefix=".", suffix=".csv.tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as tmp:
            writer = csv.writer(tmp)
            writer.writerow(header)
            writer.writerows(rows)
        os.replace(tmp_path, csv_path)
    except BaseException:
        os.unlink(tmp_path)
        raise


def named_manifests(train_csv, valid_csv, test_csvs):
    """``{split name: manifest}``: train, valid and each test manifest under its file's stem
    (the name its outputs carry); a stem that names another split is an error."""
    manifests = {"train": train_csv, "valid": valid_csv}
    for csv_path in test_csvs:
        name = Path(csv_path).stem
        if name in manifests:
            raise DataError(f"test manifest {csv_path}: its name '{name}' is taken")
        manifests[name] = csv_path
    return manifests


def load_manifest(csv_path, data_folder):
    """A SpeechBrain dataset from a CSV manifest, ``$data_root`` replaced by ``data_folder``."""
    try:
        with open(csv_path, newline="") as f:
            header = next(csv.reader(f), [])
    except OSError as error:
        raise DataError(f"cannot read manifest {csv_path}: {error.strerror}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DataError(f"manifest {csv_path} lacks column(s) {', '.join(missing)}")
    return sb.dataio.dataset.DynamicItemDataset.from_csv(
        csv_path, replacements={"data_root": str(data_folder)}
    )


def columns(dataset):
    """The manifest columns of a dataset."""
    first = next(iter(dataset.data.values()), {})
    return list(first)


def resolve_languages(dataset, name, whisper):
    """Set every row's ``language`` to Whisper's name of it: the manifest's ``language``
    column (a name or code) where it has a value, else the model's default language.

    A language Whisper lacks, a non-English row for an English-only model, or a row with no
    language for a multilingual model without a default is a one-line DataError.
    """
    names = {}
    for utt_id, row in dataset.data.items():
        given = (row.get("language") or "").strip() or None
        if given not in names:
            try:
                names[given] = whisper.language_name(given)
            except ValueError as error:
                where = f"row {utt_id}: " if given else ""
                raise DataError(f"{name}: {where}{error}") from None
        row["language"] = names[given]
    return dataset


def check_languages(named, data_folder, whisper):
    """Resolve the languages of every manifest in ``{name: csv}`` before anything is written."""
    for name, csv_path in named.items():
        resolve_languages(load_manifest(csv_path, data_folder), name, whisper)


def _row_problem(row, whisper):
    """Why a manifest row cannot be trained on, or None."""
    if not row["wrd"].strip():
        return "empty transcript"
    n_tokens = len(whisper.encode_text(row["wrd"])) + whisper.prompt_length + 1
    if n_tokens > MAX_TARGET_POSITIONS:
        return f"label of {n_tokens} tokens exceeds the decoder's {MAX_TARGET_POSITIONS}"
    try:
        info = sf.info(row["wav"])
    except (sf.LibsndfileError, RuntimeError, OSError):
        return "missing or unreadable audio"
    if info.frames == 0:
        return "empty audio"
    if info.duration > CHUNK_SECONDS:
        return f"audio of {info.duration:.1f} s exceeds Whisper's {CHUNK_SECONDS} s window"
    return None


def check_rows(dataset, name, whisper, on_bad_row="skip"):
    """Drop (or refuse) rows that cannot be used; logs one line per kind of problem."""
    if on_bad_row not in BAD_ROW_POLICIES:
        raise DataError(f"on_bad_row must be one of {BAD_ROW_POLICIES}, not '{on_bad_row}'")
    problems = {utt_id: _row_problem(row, whisper) for utt_id, row in dataset.data.items()}
    bad = {utt_id: why for utt_id, why in problems.items() if why}
    if bad and on_bad_row == "error":
        utt_id, why = next(iter(bad.items()))
        raise DataError(
            f"{name}: row {utt_id} ({dataset.data[utt_id]['wav']}): {why}"
            f" ({len(bad)} bad rows; set on_bad_row=skip to skip them)"
        )
    for why, count in Counter(bad.values()).items():
        example = next(u for u, w in bad.items() if w == why)
        logger.warning("%s: skipped %d row(s) with %s (e.g. %s)", name, count, why, example)
    if len(bad) == len(problems):
        raise DataError(f"{name}: no usable rows left")
    if not bad:
        return dataset
    with dataset.output_keys_as(["id"]):
        return dataset.filtered_sorted(key_test={"id": lambda utt_id: utt_id not in bad})
