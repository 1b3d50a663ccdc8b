"""Manifests and audio: load, check every row once, and read audio as Whisper wants it.

A manifest that SpeechBrain cannot read as such is one error naming its file, line, column
and what was found (``check_format``). Bad rows (missing or unreadable audio, NaN or infinite
samples, labels longer than the decoder can hold, audio over 30 s) are found before training
starts and either skipped with a counted, logged reason or reported as one clear error, as
``on_bad_row`` says. Labels are never truncated. Audio over 30 s is bad only where rows are
trained or validated on (train, valid, the training sources): a test set's rows over 30 s are
decoded long-form (``split_longform``, ``decoding.longform``), their labels never
teacher-forced. Audio at another sample rate or with several channels is converted on
reading.

A row with an empty transcript is a non-speech row (silence, noise, music), not a bad row: it
is kept, trained toward Whisper's no-speech prediction, decoded and scored apart
(``evaluation.text.is_nonspeech``).
"""

import csv
import logging
import math
import re
from collections import Counter
from pathlib import Path

import speechbrain as sb

from whisper_finetuning.common.errors import RecipeError
from whisper_finetuning.data.audio import CHUNK_SECONDS, NON_FINITE, audio_info, has_non_finite

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("ID", "duration", "wav", "wrd")
DATA_ROOT = "data_root"  # $data_root in a manifest is replaced by data_folder
DOLLAR_NAME = re.compile(r"\$([\w.]+)")  # a placeholder in an audio path
DATA_ROOT_NAME = re.compile(r"\$data_root(?![\w.])")
BOM = "\ufeff"
BAD_ROW_POLICIES = ("skip", "error")  # the on_bad_row hparam


class DataError(RecipeError, ValueError):
    """A manifest or audio file that cannot be used."""


REPLAY, NONSPEECH = "replay", "nonspeech"  # the split names of replay_csv and nonspeech_csv
# Splits whose rows must fit Whisper's 30 s window; every other split is a test set.
WINDOWED_SPLITS = ("train", "valid", REPLAY, NONSPEECH)


def decodes_longform(name):
    """Whether split ``name`` is a test set, whose rows over 30 s are decoded long-form rather
    than bad rows (training and validation need clips of at most 30 s)."""
    return name not in WINDOWED_SPLITS


def training_sources(hparams):
    """``named_manifests``' training sources: ``{REPLAY or NONSPEECH: manifest}`` of the
    ``replay_csv`` and ``nonspeech_csv`` that ``hparams`` name."""
    sources = {REPLAY: hparams.get("replay_csv"), NONSPEECH: hparams.get("nonspeech_csv")}
    return {name: csv for name, csv in sources.items() if csv}


def keep_test_name(keep_test_csv):
    """The keep test set's name (its manifest's stem), or None without one."""
    return Path(keep_test_csv).stem if keep_test_csv else None


def named_manifests(train_csv, valid_csv, test_csvs, sources=None, keep_test_csv=None):
    """``{split name: manifest}``: train, valid, the training ``sources`` (``{REPLAY or
    NONSPEECH: manifest}``), each test manifest and the keep test set (decoded as one) under
    its file's stem (the name its outputs carry); a stem that names another split is an
    error."""
    manifests = {"train": train_csv, "valid": valid_csv, **(sources or {})}
    for csv_path in [*test_csvs, *([keep_test_csv] if keep_test_csv else [])]:
        name = Path(csv_path).stem
        if name in manifests:
            raise DataError(f"test manifest {csv_path}: its name '{name}' is taken")
        manifests[name] = csv_path
    return manifests


def has_no_rows(csv_path):
    """True for a readable manifest with a header and no rows (``check_format`` refuses it)."""
    try:
        with open(csv_path, newline="") as f:
            return next(csv.DictReader(f), None) is None
    except OSError:
        return False  # check_format says what is wrong


def check_format(csv_path, duplicates=True):
    """Raise a ``DataError`` naming the file, line, column and what was found if the manifest
    cannot be read as SpeechBrain reads it (``duplicates``: a repeated ID too)."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f, skipinitialspace=True)
            header = next(reader, None)
            if header is None:
                raise DataError(f"manifest {csv_path} is empty: line 1 must be its header")
            _check_header(csv_path, header)
            at = {name: i for i, name in enumerate(header)}
            first_line = {}
            for fields in reader:
                where = f"manifest {csv_path}, line {reader.line_num}"
                if len(fields) != len(header):
                    raise DataError(f"{where}: {len(fields)} fields, the header has {len(header)}")
                row = dict(zip(header, fields, strict=True))
                _check_cells(where, row, at, first_line if duplicates else None)
                first_line.setdefault(row["ID"], reader.line_num)
    except OSError as error:
        raise DataError(f"cannot read manifest {csv_path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise DataError(f"manifest {csv_path}: not UTF-8 text ({error.reason})") from None
    except csv.Error as error:
        raise DataError(f"manifest {csv_path}, line {reader.line_num}: {error}") from None
    if not first_line:
        raise DataError(f"manifest {csv_path} has a header but no rows")


def _check_header(csv_path, header):
    """Every required column, each spelled exactly; no column named twice."""
    first = {}
    for i, name in enumerate(header, start=1):
        if name in first:
            raise DataError(
                f"manifest {csv_path}, line 1, column {i}: {name!r} is the name of column "
                f"{first[name]} too"
            )
        first[name] = i
    for column in REQUIRED_COLUMNS:
        if column in header:
            continue
        for i, name in enumerate(header, start=1):
            if name.strip(BOM + " \t").lower() == column.lower():
                hint = " (a byte-order mark: save it as UTF-8 without BOM)" if BOM in name else ""
                raise DataError(
                    f"manifest {csv_path}, line 1, column {i}: found {name!r} where "
                    f"'{column}' was expected{hint}"
                )
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DataError(f"manifest {csv_path} lacks column(s) {', '.join(missing)}")


def _check_cells(where, row, at, first_line):
    """A row's ID (non-empty, new unless ``first_line`` is None), duration and the ``$`` names
    of its audio path."""
    if not row["ID"].strip():
        raise DataError(f"{where}, column {at['ID'] + 1} (ID): empty")
    if first_line is not None and row["ID"] in first_line:
        raise DataError(
            f"{where}, column {at['ID'] + 1} (ID): {row['ID']!r} is the ID of line "
            f"{first_line[row['ID']]} too"
        )
    try:
        seconds = float(row["duration"])
    except ValueError:
        seconds = math.nan
    if not seconds >= 0 or math.isinf(seconds):
        raise DataError(
            f"{where}, column {at['duration'] + 1} (duration): found {row['duration']!r} "
            "where a number of seconds was expected"
        )
    unknown = [name for name in DOLLAR_NAME.findall(row["wav"]) if name != DATA_ROOT]
    if unknown:
        raise DataError(
            f"{where}, column {at['wav'] + 1} (wav): found ${unknown[0]} in "
            f"{row['wav']!r}; only ${DATA_ROOT} is replaced (by data_folder)"
        )


def load_manifest(csv_path, data_folder):
    """A SpeechBrain dataset from a CSV manifest, ``$data_root`` replaced by ``data_folder``."""
    check_format(csv_path)
    # Read here, not by SpeechBrain's from_csv, which fails on any other $word in any cell
    # (a transcript's "$100").
    data, root = {}, str(data_folder)
    with open(csv_path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f, skipinitialspace=True):
            utt_id = row.pop("ID")
            row = {k: DATA_ROOT_NAME.sub(lambda _: root, v) for k, v in row.items()}
            data[utt_id] = {**row, "duration": float(row["duration"])}
    return sb.dataio.dataset.DynamicItemDataset(data)


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
    dataset.pipeline.add_static_keys(["language"])  # a manifest without the column has it now
    return dataset


def check_languages(named, data_folder, whisper):
    """Resolve the languages of every manifest in ``{name: csv}`` before anything is written
    (a manifest that does not load is left to the data checks, which name its problem)."""
    for name, csv_path in named.items():
        try:
            dataset = load_manifest(csv_path, data_folder)
        except DataError:
            continue
        resolve_languages(dataset, name, whisper)


def _over_window(info):
    """Whether audio (``audio_info``; None: unreadable) is longer than Whisper's window."""
    return info is not None and info.duration > CHUNK_SECONDS


def _row_problem(row, whisper, longform=False):
    """Why a manifest row cannot be used, or None; with ``longform`` (a test set), audio over
    30 s is decoded long-form, and its label, never teacher-forced, may be of any length."""
    info = audio_info(row["wav"])
    over_window = _over_window(info)
    n_tokens = whisper.decoder_positions(row["wrd"])
    if n_tokens > whisper.max_positions and not (longform and over_window):
        return f"label of {n_tokens} tokens exceeds the decoder's {whisper.max_positions}"
    if info is None:
        return "missing or unreadable audio"
    if info.frames == 0:
        return "empty audio"
    if over_window and not longform:
        return f"audio of {info.duration:.1f} s exceeds Whisper's {CHUNK_SECONDS} s window"
    if has_non_finite(info, row["wav"]):
        return NON_FINITE
    return None


def check_rows(dataset, name, whisper, on_bad_row="skip"):
    """Drop (or refuse) rows that cannot be used; logs one line per kind of problem. A test
    set's rows over 30 s are usable (``decodes_longform``)."""
    longform = decodes_longform(name)
    problems = {
        utt_id: _row_problem(row, whisper, longform) for utt_id, row in dataset.data.items()
    }
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


def split_longform(datasets):
    """Take each test set's rows over 30 s out of it: ``(datasets, {name: {ID: row}})``. The
    batched test search decodes what is left; the rows taken are decoded long-form and scored
    with their set (``decoding.longform.score_rows``)."""
    taken = {}
    for name, dataset in datasets.items():
        if not decodes_longform(name):
            continue
        rows = {utt_id: dataset.data[utt_id] for utt_id in dataset.data_ids}
        long = {utt_id: row for utt_id, row in rows.items() if _over_window(audio_info(row["wav"]))}
        if not long:
            continue
        taken[name] = long
        with dataset.output_keys_as(["id"]):
            datasets[name] = dataset.filtered_sorted(
                key_test={"id": lambda utt_id, long=long: utt_id not in long}
            )
    return datasets, taken
