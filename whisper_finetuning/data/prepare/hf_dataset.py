"""Manifests from a Hugging Face dataset folder, read offline with the ``datasets`` library.

``data_folder`` holds one of:

* a dataset written by ``save_to_disk`` (a ``DatasetDict``, or one ``Dataset``: split ``train``);
* parquet or arrow files, split by their names as ``datasets.load_dataset`` does
  (``train-*.parquet``, ``data/test-00000-of-00001.parquet``, ...);
* an ``audiofolder``: audio files described by ``metadata.csv`` or ``metadata.jsonl`` (a
  ``file_name`` column), at the top (split ``train``) or in one folder per split.

Audio stays where the dataset keeps it. ``wav`` is ``hf://$data_root#SPLIT/COLUMN/ROW``, the row's
audio decoded on read (any rate or channel count, resampled to 16 kHz mono like a file), or for
an audiofolder the file itself; ``copy_audio`` writes 16 kHz mono float WAVs under
``<save_folder>/audio/`` instead. Rows are checked and counted like every other source's.
"""

import csv
import json
import os
from pathlib import Path

import soundfile as sf

from whisper_finetuning.data import audio_sources
from whisper_finetuning.data.audio import SAMPLE_RATE, AudioError, read_audio
from whisper_finetuning.data.prepare.corpora import (
    BASE_COLUMNS,
    DATA_ROOT,
    Utterance,
    _outputs,
    _require,
    write_manifest,
)

TEXT_COLUMNS = ("sentence", "text", "transcription")  # tried in this order
SPEAKER_COLUMNS = ("speaker_id", "client_id", "speaker")
LANGUAGE_COLUMNS = ("language", "locale")
GROUP_COLUMNS = ("gender", "accent", "accents", "dialect", "age")  # carried when present
METADATA_FILES = ("metadata.csv", "metadata.jsonl")
AUDIOFOLDER_PATH_COLUMN = "file_name"
LANGUAGE = "language"  # the manifest column a language column goes to
COPY_FOLDER = "audio"


def prepare_hf(
    data_folder,
    save_folder,
    audio_column="audio",
    text_column=None,
    train_splits=("train",),
    valid_splits=("validation",),
    test_splits=("test",),
    id_column=None,
    speaker_column=None,
    language_column=None,
    group_columns=None,
    copy_audio=False,
) -> dict:
    """Prepare a Hugging Face dataset folder; each test split gets ``<split>.csv``.

    ``text_column`` None: the first of sentence/text/transcription present. ``id_column`` None:
    the audio's file name without extension, else ``<split>_<row>``. ``speaker_column`` and
    ``language_column`` None: the first of speaker_id/client_id/speaker (language/locale)
    present, if any. ``group_columns`` None: those of gender/accent/accents/dialect/age present.
    """
    _require(data_folder, "Hugging Face dataset folder")
    data_folder = str(data_folder)
    train_splits, valid_splits, test_splits = map(_names, (train_splits, valid_splits, test_splits))
    roles = {"audio": audio_column, "id": id_column, "text": text_column}
    roles |= {"speaker": speaker_column, "language": language_column}
    tables = {
        split: _open_split(data_folder, split, roles, group_columns)
        for split in dict.fromkeys([*train_splits, *valid_splits, *test_splits])
    }  # every split and column is checked before any manifest is written

    def utterances(splits):
        for split in splits:
            yield from tables[split].utterances(save_folder if copy_audio else None)

    outputs = _outputs(save_folder, test_splits)
    groups = [(outputs["train"], train_splits), (outputs["valid"], valid_splits)]
    groups += [(path, [split]) for path, split in zip(outputs["test"], test_splits, strict=True)]
    for csv_path, splits in groups:
        extras = list(dict.fromkeys(c for split in splits for c in tables[split].extra_columns))
        write_manifest(csv_path, data_folder, utterances(splits), extras)
    return outputs


def _names(value):
    """Split names as a list (one name may be given as a string)."""
    return [value] if isinstance(value, str) else list(value)


class _Split:
    """The rows of one split and which of their columns fill which manifest column."""

    def __init__(self, name, where, columns, roles, group_columns):
        self.name, self.where = name, where
        self.columns = {}
        for role, candidates in (
            ("text", TEXT_COLUMNS),
            ("id", ()),
            ("speaker", SPEAKER_COLUMNS),
            ("language", LANGUAGE_COLUMNS),
        ):
            chosen = roles[role]
            if chosen is not None and chosen not in columns:
                raise ValueError(self._missing(f"{role} column '{chosen}'", columns, role))
            if chosen is None:
                chosen = next((c for c in candidates if c in columns), None)
            if role == "text" and chosen is None:
                tried = "/".join(TEXT_COLUMNS)
                raise ValueError(self._missing(f"text column ({tried})", columns, role))
            self.columns[role] = chosen
        if group_columns is None:
            group_columns = [c for c in GROUP_COLUMNS if c in columns]
        group_columns = _names(group_columns)
        for column in group_columns:
            if column not in columns:
                raise ValueError(self._missing(f"group column '{column}'", columns, "group"))
        clashes = set(group_columns) & {*BASE_COLUMNS, LANGUAGE}
        if clashes:
            raise ValueError(
                f"{where}: group columns {sorted(clashes)} clash with manifest columns"
            )
        self.group_columns = group_columns
        self.extra_columns = self.group_columns + [LANGUAGE] * bool(self.columns["language"])

    def _missing(self, what, columns, role):
        """The one-line message for a column that is not there."""
        option = "group_columns" if role == "group" else f"{role}_column"
        return (
            f"{self.where} split '{self.name}' has no {what} (columns: {', '.join(columns)}); "
            f"set prep_options {option}"
        )

    def utterance(self, index, row, wav, audio_name):
        """One manifest row candidate; the ID falls back on the audio's name, then the index."""
        if self.columns["id"]:
            utt_id = _text(row.get(self.columns["id"]))
        elif audio_name:
            utt_id = Path(audio_name).stem
        else:
            utt_id = f"{self.name}_{index:06d}"
        extras = {c: _text(row.get(c)) for c in self.group_columns}
        if self.columns["language"]:
            extras[LANGUAGE] = _text(row.get(self.columns["language"]))
        speaker = _text(row.get(self.columns["speaker"])) if self.columns["speaker"] else ""
        return Utterance(utt_id, wav, speaker, _text(row.get(self.columns["text"])), extras)


class _DatasetSplit(_Split):
    """A split of a ``save_to_disk`` folder or of parquet/arrow files: audio in ``hf://``."""

    def __init__(self, folder, name, roles, group_columns):
        self.rows = audio_sources.hf_split(folder, name, roles["audio"])
        self.audio_column = roles["audio"]
        super().__init__(name, folder, self.rows.column_names, roles, group_columns)

    def utterances(self, copy_to=None):
        """The split's rows; with ``copy_to``, their audio copied to 16 kHz WAVs there."""
        for index, row in enumerate(self.rows):
            wav = audio_sources.hf_reference(DATA_ROOT, self.name, self.audio_column, index)
            if copy_to is not None:
                wav = _copy_audio(wav.replace(DATA_ROOT, self.where), copy_to, self.name, index)
            audio_path = (row[self.audio_column] or {}).get("path")
            yield self.utterance(index, row, wav, audio_path)


class _AudiofolderSplit(_Split):
    """A split of an audiofolder: its metadata rows, each naming an audio file."""

    def __init__(self, folder, name, roles, group_columns):
        metadata = _metadata_file(folder, name)
        self.folder = metadata.parent.relative_to(folder).as_posix()
        self.rows = _read_metadata(metadata)
        columns = list(dict.fromkeys(c for row in self.rows for c in row))
        if AUDIOFOLDER_PATH_COLUMN not in columns:
            raise ValueError(f"{metadata} has no '{AUDIOFOLDER_PATH_COLUMN}' column")
        super().__init__(name, str(metadata), columns, roles, group_columns)

    def utterances(self, copy_to=None):
        """The split's rows, ``wav`` pointing at their audio files (already files: not copied)."""
        for index, row in enumerate(self.rows):
            name = row.get(AUDIOFOLDER_PATH_COLUMN) or ""  # none: missing audio
            path = os.path.normpath(os.path.join(self.folder, name))
            yield self.utterance(index, row, f"{DATA_ROOT}/{Path(path).as_posix()}", path)


def _open_split(folder, name, roles, group_columns):
    """The split ``name`` of the dataset in ``folder``, its columns checked."""
    top = Path(folder)
    audiofolder = any(
        (where / m).is_file() for where in (top, *top.iterdir()) for m in METADATA_FILES
    )
    kind = _AudiofolderSplit if audiofolder else _DatasetSplit
    return kind(folder, name, roles, group_columns)


def _metadata_file(folder, split):
    """An audiofolder split's metadata: ``<split>/metadata.*``, or the top one for ``train``."""
    for where in (Path(folder) / split, *([Path(folder)] if split == "train" else [])):
        for name in METADATA_FILES:
            if (where / name).is_file():
                return where / name
    found = sorted(p.parent.name for m in METADATA_FILES for p in Path(folder).glob(f"*/{m}"))
    splits = ", ".join(
        found + ["train"] * any((Path(folder) / m).is_file() for m in METADATA_FILES)
    )
    raise ValueError(f"audiofolder {folder} has no split '{split}' (splits: {splits})")


def _read_metadata(path):
    """The rows of an audiofolder's ``metadata.csv`` or ``metadata.jsonl``."""
    with open(path, newline="", encoding="utf-8") as f:
        if path.suffix == ".csv":
            return list(csv.DictReader(f))
        rows = []
        for number, line in enumerate(f, 1):
            try:
                rows += [json.loads(line)] if line.strip() else []
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {number}: not JSON ({error.msg})") from None
        return rows


def _text(value):
    """A cell as manifest text (None -> empty), surrounding whitespace removed."""
    return "" if value is None else str(value).strip()


def _copy_audio(ref, save_folder, split, index):
    """Decode ``ref`` to a 16 kHz mono float WAV under ``save_folder``; its path, or ``ref``
    itself when it cannot be decoded (the manifest then counts it as unreadable)."""
    target = Path(save_folder) / COPY_FOLDER / split / f"{index:06d}.wav"
    try:
        wav = read_audio(ref)
    except AudioError:
        return ref
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp.wav")
    sf.write(tmp, wav.numpy(), SAMPLE_RATE, subtype="FLOAT")
    os.replace(tmp, target)
    return str(target.resolve())
