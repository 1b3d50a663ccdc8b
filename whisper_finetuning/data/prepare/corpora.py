"""Manifest preparation for Whisper fine-tuning.

Turns dataset layouts (LibriSpeech, Common Voice, a generic folder of audio plus a transcript
TSV, and the Swiss German corpora STT4SG-350, SDS-200 and SwissDial) into SpeechBrain CSV
manifests with the columns ``ID,duration,wav,spk_id,wrd`` followed by dataset-specific
grouping columns (gender, accent, dialect, ...) used for per-group error rates; ``prepare``
also dispatches to the espeak-ng corpora (``accent_corpus``, ``swiss_corpus``),
Hugging Face datasets (``hf_dataset``), Lhotse cuts (``lhotse_cuts``) and tar shards
(``data.prepare.shards``), which write their manifests with this module's ``write_manifest``.

* ``wav`` is written as ``$data_root/<relative path>`` (or an audio reference into a shard or
  dataset, see whisper_finetuning/data/audio_sources.py) so the manifests stay valid when the corpus
  moves; the recipe substitutes ``data_folder`` at load time.
* ``wrd`` keeps the source transcript (only surrounding whitespace is stripped):
  Whisper is trained on cased, punctuated text, so normalising would hurt it.
* Rows that cannot be used (missing or unreadable audio, empty transcript, ...)
  are skipped and counted, never fatal; each manifest gets one summary line.
* Manifests are written atomically and never rewritten once they exist, so an
  interrupted or repeated run is safe and cheap.
"""

import csv
import hashlib
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from whisper_finetuning.common.files import write_csv
from whisper_finetuning.data import audio_sources
from whisper_finetuning.data.audio import audio_duration

logger = logging.getLogger(__name__)

DATA_ROOT = "$data_root"
BASE_COLUMNS = ("ID", "duration", "wav", "spk_id", "wrd")
DURATION_DECIMALS = 3

# Why a row is left out of a manifest; the summary line lists them in this order.
MISSING_AUDIO = "missing audio"
UNREADABLE_AUDIO = "unreadable audio"
EMPTY_TRANSCRIPT = "empty transcript"
DUPLICATE_ID = "duplicate ID"
DOLLAR_VARIABLE = "'$name' in audio path"
SKIP_REASONS = (MISSING_AUDIO, UNREADABLE_AUDIO, EMPTY_TRANSCRIPT, DUPLICATE_ID, DOLLAR_VARIABLE)

# The recipe replaces $data_root in an audio path and refuses any other such name there.
DOLLAR_VARIABLE_PATTERN = re.compile(r"\$[\w.]+")

LIBRISPEECH_SPEAKERS_FILE = "SPEAKERS.TXT"
COMMON_VOICE_CLIPS_DIR = "clips"
COMMON_VOICE_ACCENT_COLUMNS = ("accents", "accent")  # newer releases use "accents"

TSV_PATH_COLUMN = "path"
TSV_TEXT_COLUMN = "text"
TSV_SPEAKER_COLUMN = "speaker"
# Accepted values of the split column, mapped to the manifest they go to.
SPLIT_NAMES = {"train": "train", "valid": "valid", "dev": "valid", "test": "test"}
# Hash-based split when the TSV has no split column: bucket < 80 -> train,
# < 90 -> valid, else test (80/10/10).
HASH_BUCKETS = 100
TRAIN_BUCKETS = 80
VALID_BUCKETS = 10


class Utterance(NamedTuple):
    """One candidate manifest row before its audio has been checked."""

    id: str
    wav: str  # the manifest's audio reference: "$data_root/<relative path>", or see audio_sources
    spk_id: str
    wrd: str
    extras: dict[str, str]  # grouping columns, e.g. gender/accent/dialect


def write_manifest(
    csv_path: str,
    data_folder: str,
    utterances: Iterable[Utterance],
    extra_columns: Iterable[str] = (),
) -> str:
    """Write the usable ``utterances`` to ``csv_path`` and return ``csv_path``.

    Does nothing if ``csv_path`` exists (``utterances`` is then not consumed, so
    callers can pass a lazy generator). Unusable rows are skipped and counted.
    """
    if os.path.exists(csv_path):
        logger.info("%s exists, skipping, already prepared", csv_path)
        return csv_path
    extra_columns = tuple(extra_columns)
    skipped = Counter()
    seen_ids = set()
    rows = []
    for utt in utterances:
        reason = _skip_reason(utt, data_folder, seen_ids)
        if reason is None:
            duration = audio_duration(resolve(utt.wav, data_folder))
            if duration is None:
                reason = UNREADABLE_AUDIO
        if reason is not None:
            skipped[reason] += 1
            logger.debug("%s: skipping %s (%s)", csv_path, utt.id, reason)
            continue
        seen_ids.add(utt.id)
        rows.append(
            [
                utt.id,
                f"{duration:.{DURATION_DECIMALS}f}",
                utt.wav,
                utt.spk_id,
                utt.wrd,
                *(utt.extras.get(column, "") for column in extra_columns),
            ]
        )
    write_csv(csv_path, [*BASE_COLUMNS, *extra_columns], rows)
    logger.info("%s: wrote %d rows", csv_path, len(rows))
    if not rows:
        logger.warning("%s is empty", csv_path)
    if skipped:
        details = ", ".join(f"{skipped[reason]} {reason}" for reason in SKIP_REASONS)
        logger.warning("%s: skipped %d rows: %s", csv_path, skipped.total(), details)
    return csv_path


def _skip_reason(utt: Utterance, data_folder: str, seen_ids: set[str]) -> str | None:
    """Why ``utt`` cannot be used, checking the cheap conditions before reading audio."""
    if not utt.wrd:
        return EMPTY_TRANSCRIPT
    if not audio_sources.exists(resolve(utt.wav, data_folder)):
        return MISSING_AUDIO
    if utt.id in seen_ids:
        return DUPLICATE_ID
    if DOLLAR_VARIABLE_PATTERN.search(utt.wav.replace(DATA_ROOT, "")):
        return DOLLAR_VARIABLE
    return None


def resolve(wav, data_folder):
    """A manifest audio reference with ``$data_root`` replaced, as the recipe loads it."""
    return wav.replace(DATA_ROOT, str(data_folder))


def _require(path: str | Path, what: str) -> None:
    """Raise a one-line FileNotFoundError if ``path`` does not exist."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} not found: {path}")


def _read_tsv(path: str | Path, quoting: int = csv.QUOTE_MINIMAL):
    """Read a tab-separated file with a header row: ``(column names, rows as dicts)``.

    Fields missing from a short row come back as None.
    """
    with open(path, newline="", encoding="utf-8") as tsv:
        reader = csv.DictReader(tsv, delimiter="\t", quoting=quoting)
        return list(reader.fieldnames or []), list(reader)


def _outputs(save_folder: str, test_names: Iterable[str] = ("test",)) -> dict:
    """The return value shared by all preparers: manifest paths by role."""
    return {
        "train": os.path.join(save_folder, "train.csv"),
        "valid": os.path.join(save_folder, "valid.csv"),
        "test": [os.path.join(save_folder, f"{name}.csv") for name in test_names],
    }


def prepare_librispeech(
    data_folder,
    save_folder,
    train_splits=("train-clean-100",),
    valid_splits=("dev-clean",),
    test_splits=("test-clean", "test-other"),
) -> dict:
    """Prepare LibriSpeech (``<split>/<spk>/<chapter>/<spk>-<chapter>.trans.txt`` + flac).

    Train splits are concatenated into ``train.csv``, valid splits into
    ``valid.csv``; each test split gets ``<split>.csv``. The upper-case,
    unpunctuated transcripts are kept as they are. ``gender`` comes from
    ``SPEAKERS.TXT`` when the corpus root has it.
    """
    _require(data_folder, "LibriSpeech data_folder")
    transcripts = {}
    for split in (*train_splits, *valid_splits, *test_splits):
        _require(os.path.join(data_folder, split), f"LibriSpeech split '{split}'")
        transcripts[split] = sorted(Path(data_folder, split).glob("*/*/*.trans.txt"))
        if not transcripts[split]:
            raise FileNotFoundError(f"no */*/*.trans.txt under {Path(data_folder, split)}")
    genders = _librispeech_genders(Path(data_folder, LIBRISPEECH_SPEAKERS_FILE))

    def utterances(splits):
        for split in splits:
            for trans_file in transcripts[split]:
                chapter_dir = trans_file.parent
                speaker = chapter_dir.parent.name
                for line in trans_file.read_text(encoding="utf-8").splitlines():
                    utt_id, _, text = line.strip().partition(" ")
                    if utt_id:
                        yield Utterance(
                            utt_id,
                            f"{DATA_ROOT}/{split}/{speaker}/{chapter_dir.name}/{utt_id}.flac",
                            speaker,
                            text.strip(),
                            {"gender": genders.get(speaker, "")},
                        )

    outputs = _outputs(save_folder, test_splits)
    groups = [(outputs["train"], train_splits), (outputs["valid"], valid_splits)]
    groups += [
        (csv_path, (split,)) for csv_path, split in zip(outputs["test"], test_splits, strict=True)
    ]
    for csv_path, splits in groups:
        write_manifest(csv_path, data_folder, utterances(splits), ["gender"])
    return outputs


def _librispeech_genders(speakers_file: Path) -> dict[str, str]:
    """Map speaker ID to gender (F/M) from LibriSpeech's ``SPEAKERS.TXT``, if present.

    Lines look like ``19   | F | train-clean-100  | 25.19 | Kara Shallenberg``;
    lines starting with ``;`` are comments.
    """
    if not speakers_file.is_file():
        return {}
    genders = {}
    for line in speakers_file.read_text(encoding="utf-8").splitlines():
        fields = [field.strip() for field in line.split("|")]
        if not line.startswith(";") and len(fields) >= 2:
            genders[fields[0]] = fields[1]
    return genders


def prepare_common_voice(
    data_folder, save_folder, train_tsv="train.tsv", valid_tsv="dev.tsv", test_tsv="test.tsv"
) -> dict:
    """Prepare a Common Voice release (``<x>.tsv`` files and ``clips/*.mp3``).

    ``spk_id`` is the ``client_id``; ``accent`` (from ``accents`` or ``accent``)
    and ``gender`` are carried for per-group scoring, empty when absent.
    """
    _require(data_folder, "Common Voice data_folder")
    tsv_paths = [os.path.join(data_folder, name) for name in (train_tsv, valid_tsv, test_tsv)]
    for tsv_path in tsv_paths:
        _require(tsv_path, "Common Voice TSV")

    def utterances(tsv_path):
        # Common Voice TSVs are unquoted: a sentence may start with a literal '"'.
        _, rows = _read_tsv(tsv_path, quoting=csv.QUOTE_NONE)
        for row in rows:
            accent = next((row[c] for c in COMMON_VOICE_ACCENT_COLUMNS if row.get(c)), "")
            clip = row["path"] or ""
            yield Utterance(
                Path(clip).stem,
                f"{DATA_ROOT}/{COMMON_VOICE_CLIPS_DIR}/{clip}",
                row["client_id"] or "",
                (row["sentence"] or "").strip(),
                {"accent": accent, "gender": row.get("gender") or ""},
            )

    outputs = _outputs(save_folder)
    csv_paths = [outputs["train"], outputs["valid"], *outputs["test"]]
    for csv_path, tsv_path in zip(csv_paths, tsv_paths, strict=True):
        write_manifest(csv_path, data_folder, utterances(tsv_path), ["accent", "gender"])
    return outputs


def prepare_tsv_folder(
    data_folder, save_folder, transcripts="transcripts.tsv", split_column="split"
) -> dict:
    """Prepare a folder of audio files described by one transcript TSV.

    The TSV needs ``path`` (relative to ``data_folder``) and ``text`` columns;
    ``speaker`` and ``split_column`` (train/valid/test, or dev) are optional and
    every other column is carried into the manifests. Standard CSV quoting
    applies (as written by ``csv`` or pandas). Without a split column the
    rows are split 80/10/10 by a stable hash of the speaker (of the path when
    there is no speaker), so speakers never straddle splits and reruns agree.
    """
    _require(data_folder, "data_folder")
    tsv_path = os.path.join(data_folder, transcripts)
    _require(tsv_path, "transcript TSV")
    columns, rows = _read_tsv(tsv_path)
    for required in (TSV_PATH_COLUMN, TSV_TEXT_COLUMN):
        if required not in columns:
            raise ValueError(f"{tsv_path} has no '{required}' column (columns: {columns})")
    special = {TSV_PATH_COLUMN, TSV_TEXT_COLUMN, TSV_SPEAKER_COLUMN, split_column}
    extra_columns = [column for column in columns if column not in special]
    clashes = set(extra_columns) & set(BASE_COLUMNS)
    if clashes:
        raise ValueError(f"{tsv_path}: columns {sorted(clashes)} clash with manifest columns")

    by_split = {"train": [], "valid": [], "test": []}
    for row in rows:
        relative_path = row[TSV_PATH_COLUMN] or ""
        by_split[_split_of(row, split_column, tsv_path)].append(
            Utterance(
                _tsv_id(relative_path),
                f"{DATA_ROOT}/{relative_path}",
                row.get(TSV_SPEAKER_COLUMN) or "",
                (row[TSV_TEXT_COLUMN] or "").strip(),
                {column: row[column] or "" for column in extra_columns},
            )
        )

    outputs = _outputs(save_folder)
    csv_paths = [outputs["train"], outputs["valid"], *outputs["test"]]
    for csv_path, utterances in zip(csv_paths, by_split.values(), strict=True):
        write_manifest(csv_path, data_folder, utterances, extra_columns)
    return outputs


def _tsv_id(relative_path: str) -> str:
    """Utterance ID from a relative audio path: ``a/b/c.wav`` -> ``a_b_c``."""
    return os.path.splitext(relative_path)[0].replace("/", "_")


def _split_of(row: dict[str, str], split_column: str, tsv_path: str) -> str:
    """The manifest a TSV row belongs to: its split column, else a stable speaker hash."""
    if split_column in row:
        value = (row[split_column] or "").strip().lower()
        if value not in SPLIT_NAMES:
            raise ValueError(
                f"{tsv_path}: unknown {split_column} '{value}' for {row[TSV_PATH_COLUMN]}; "
                f"expected one of: {', '.join(SPLIT_NAMES)}"
            )
        return SPLIT_NAMES[value]
    return hash_split(row.get(TSV_SPEAKER_COLUMN) or row[TSV_PATH_COLUMN] or "")


def hash_split(key: str) -> str:
    """Assign ``key`` to train/valid/test (80/10/10) by SHA-1, stable across runs and hosts."""
    bucket = int(hashlib.sha1(key.encode("utf-8")).hexdigest(), 16) % HASH_BUCKETS
    if bucket < TRAIN_BUCKETS:
        return "train"
    return "valid" if bucket < TRAIN_BUCKETS + VALID_BUCKETS else "test"


# The Swiss German corpora pair dialect speech with Standard German text: every row is
# prompted as German and keeps its dialect region or canton as a group column.
SWISS_GERMAN = "german"
SWISS_COLUMNS = ("dialect", "canton", "gender", "age", "language")


def _swiss_utterance(utt_id, path, row, text, dialect, speaker_column="client_id"):
    """One Swiss German row (audio at ``path``, relative to the data folder): Standard German
    text, the dialect and the speaker's metadata."""
    extras = {column: (row.get(column) or "").strip() for column in ("canton", "gender", "age")}
    extras.update(dialect=dialect, language=SWISS_GERMAN)
    wav = f"{DATA_ROOT}/{path}"
    return Utterance(utt_id, wav, row.get(speaker_column) or "", (text or "").strip(), extras)


def _find_audio(data_folder, folders, relative):
    """``folder/relative`` for the first of ``folders`` (under ``data_folder``) holding it,
    else under the first folder (then counted as missing audio)."""
    for folder in folders:
        if os.path.isfile(os.path.join(data_folder, folder, relative)):
            return f"{folder}/{relative}"
    return f"{folders[0]}/{relative}" if folders else relative


def prepare_stt4sg350(
    data_folder, save_folder, train_tsv="train_all.tsv", valid_tsv="valid.tsv", test_tsv="test.tsv"
) -> dict:
    """Prepare STT4SG-350 (v2.1 release): ``train_all.tsv`` (or ``train_balanced.tsv``),
    ``valid.tsv``, ``test.tsv`` and the audio folders ``clips__train_valid*/`` and
    ``clips__test/`` holding ``<speaker>/<clip>.flac`` as named by the ``path`` column.

    ``wrd`` is the Standard German ``sentence``; ``dialect`` is ``dialect_region``;
    ``spk_id`` is ``client_id``; ``canton``, ``gender`` and ``age`` are kept when present.
    """
    _require(data_folder, "STT4SG-350 data_folder")
    clip_folders = sorted(
        entry.name
        for entry in os.scandir(data_folder)
        if entry.is_dir() and entry.name.startswith("clips__")
    )
    outputs = _outputs(save_folder)
    csv_paths = [outputs["train"], outputs["valid"], *outputs["test"]]
    for csv_path, tsv_name in zip(csv_paths, (train_tsv, valid_tsv, test_tsv), strict=True):
        tsv_path = os.path.join(data_folder, tsv_name)
        _require(tsv_path, "STT4SG-350 TSV")
        _, rows = _read_tsv(tsv_path)
        folders = [f for f in clip_folders if ("test" in f) == (tsv_name == test_tsv)]
        utterances = (
            _swiss_utterance(
                _tsv_id(row["path"] or ""),
                _find_audio(data_folder, folders, row["path"] or ""),
                row,
                row.get("sentence"),
                (row.get("dialect_region") or "").strip(),
            )
            for row in rows
        )
        write_manifest(csv_path, data_folder, utterances, SWISS_COLUMNS)
    return outputs


def prepare_sds200(data_folder, save_folder, splits_folder="splits") -> dict:
    """Prepare SDS-200: ``splits/train.tsv``, ``valid.tsv``, ``test.tsv`` with the export's
    columns (``clip_path``, ``sentence``, ``client_id``, ``canton``, ``zipcode``, ``age``,
    ``gender``, ...) and the dated audio folder ``export_YYYYMMDD_clips*/``.

    ``wrd`` is the Standard German ``sentence``; ``dialect`` is the speaker's ``canton``.
    """
    _require(data_folder, "SDS-200 data_folder")
    clip_folders = sorted(
        entry.name for entry in os.scandir(data_folder) if entry.is_dir() and "_clips" in entry.name
    )
    outputs = _outputs(save_folder)
    csv_paths = [outputs["train"], outputs["valid"], *outputs["test"]]
    for csv_path, split in zip(csv_paths, ("train", "valid", "test"), strict=True):
        tsv_path = os.path.join(data_folder, splits_folder, f"{split}.tsv")
        _require(tsv_path, "SDS-200 split TSV")
        _, rows = _read_tsv(tsv_path)
        utterances = (
            _swiss_utterance(
                _tsv_id(row["clip_path"] or ""),
                _find_audio(data_folder, clip_folders, row["clip_path"] or ""),
                row,
                row.get("sentence"),
                (row.get("canton") or "").strip(),
            )
            for row in rows
        )
        write_manifest(csv_path, data_folder, utterances, SWISS_COLUMNS)
    return outputs


SWISSDIAL_SENTENCES = "sentences_ch_de_transcribed.json"
SWISSDIAL_DIALECTS = ("ch_ag", "ch_be", "ch_bs", "ch_gr", "ch_lu", "ch_sg", "ch_vs", "ch_zh")


def prepare_swissdial(data_folder, save_folder, text="de") -> dict:
    """Prepare SwissDial: ``sentences_ch_de_transcribed.json`` (a list of ``{"id", "de",
    "ch_be", ...}``) and one folder per dialect (``ch_be/`` or ``be/``) holding
    ``ch_be_NNNN.wav`` for sentence ``NNNN``.

    ``wrd`` is the Standard German ``de`` text (``text: dialect``: the dialect's own
    transcription). SwissDial has no released split: sentences are split 80/10/10 by a
    stable hash of their id, so a sentence and its dialect versions share a split. Each
    dialect has one speaker, who is ``spk_id`` and ``dialect``.
    """
    import json

    sentences_path = os.path.join(data_folder, SWISSDIAL_SENTENCES)
    _require(sentences_path, "SwissDial sentences")
    if text not in ("de", "dialect"):
        raise ValueError(f"SwissDial text must be 'de' or 'dialect', not '{text}'")
    with open(sentences_path, encoding="utf-8") as f:
        sentences = json.load(f)
    by_split = {"train": [], "valid": [], "test": []}
    for sentence in sentences:
        index = int(sentence["id"])
        for dialect in SWISSDIAL_DIALECTS:
            if dialect not in sentence:
                continue
            name = f"{dialect}_{index:04d}.wav"
            folders = [dialect, dialect.removeprefix("ch_")]
            path = _find_audio(data_folder, folders, name)
            label = sentence["de"] if text == "de" else sentence[dialect]
            by_split[hash_split(str(index))].append(
                _swiss_utterance(
                    f"{dialect}_{index:04d}", path, {"client_id": dialect}, label, dialect
                )
            )
    outputs = _outputs(save_folder)
    csv_paths = [outputs["train"], outputs["valid"], *outputs["test"]]
    for csv_path, utterances in zip(csv_paths, by_split.values(), strict=True):
        write_manifest(csv_path, data_folder, utterances, SWISS_COLUMNS)
    return outputs
