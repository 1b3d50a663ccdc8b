"""WebDataset-style tar shards: write them from any manifest, prepare manifests from them.

A shard is an uncompressed tar whose members are grouped by key (a member's name up to the first
``.`` of its base name, as WebDataset does): ``KEY.flac`` (or wav, mp3, ogg, opus) with
``KEY.json`` (the transcript under ``text``, the speaker under ``speaker``, any other field a
group column) or ``KEY.txt`` (the transcript alone). The shards of split ``S`` are
``S-*.tar`` or ``S/*.tar`` in the data folder; the ID of a row is its key (``/`` -> ``_``).

Preparing reads each shard's tar headers once and writes every member's byte range into its
``wav`` reference (``$data_root/S-000000.tar#KEY.flac@OFFSET+SIZE``): reading an utterance is one
seek into its shard, so the recipe's shuffling, duration sorting and dynamic batches, the encoder
cache (keyed by the member's bytes) and exact resuming (the sampler's position in the
checkpoint) work as they do for audio files.
"""

import csv
import json
import logging
import os
import posixpath
import tarfile
from collections import Counter
from io import BytesIO
from pathlib import Path

from whisper_finetuning.data import audio_sources
from whisper_finetuning.data.prepare.corpora import (
    BASE_COLUMNS,
    DATA_ROOT,
    Utterance,
    _outputs,
    _require,
    resolve,
)
from whisper_finetuning.data.prepare.corpora import write_manifest as write_csv_manifest

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = ("flac", "wav", "mp3", "ogg", "opus")
TEXT_FIELDS = ("text", "sentence", "transcription", "wrd")  # tried in this order
SPEAKER_FIELDS = ("speaker", "spk_id", "speaker_id", "client_id")
SHARD_PATTERNS = ("{split}-*.tar", "{split}/*.tar")
SHARD_NAME = "{stem}-{index:06d}.tar"
TEXT_FIELD, SPEAKER_FIELD = "text", "speaker"  # what write_shards writes
DEFAULT_SHARD_MB = 256
MEGABYTE = 1 << 20


def prepare_shards(
    data_folder,
    save_folder,
    train_splits=("train",),
    valid_splits=("valid",),
    test_splits=("test",),
    text_field=None,
    speaker_field=None,
) -> dict:
    """Prepare the shards of each split; each test split gets ``<split>.csv``.

    ``text_field`` None: the first of text/sentence/transcription/wrd in a key's JSON, else its
    ``.txt``; ``speaker_field`` None: the first of speaker/spk_id/speaker_id/client_id.
    """
    _require(data_folder, "shard folder")
    splits = {
        split: _read_split(data_folder, split, text_field, speaker_field)
        for split in dict.fromkeys([*train_splits, *valid_splits, *test_splits])
    }
    outputs = _outputs(save_folder, test_splits)
    groups = [(outputs["train"], train_splits), (outputs["valid"], valid_splits)]
    groups += [(path, [split]) for path, split in zip(outputs["test"], test_splits, strict=True)]
    for csv_path, names in groups:
        extras = list(dict.fromkeys(c for name in names for c in splits[name][1]))
        rows = (utt for name in names for utt in splits[name][0])
        write_csv_manifest(csv_path, data_folder, rows, extras)
    return outputs


def _read_split(data_folder, split, text_field, speaker_field):
    """(utterances, group columns) of one split's shards; a one-line error if it has none or a
    named field is in none of its JSON members."""
    shards = []
    for pattern in SHARD_PATTERNS:
        shards += sorted(Path(data_folder).glob(pattern.format(split=split)))
    if not shards:
        compressed = sorted(Path(data_folder).glob(f"{split}-*.tar.*"))
        hint = f"; {compressed[0].name} is compressed: decompress it" if compressed else ""
        patterns = " or ".join(p.format(split=split) for p in SHARD_PATTERNS)
        raise ValueError(f"no shards for split '{split}' in {data_folder} ({patterns}){hint}")
    samples = [s for shard in shards for s in _samples(shard, data_folder)]
    fields = list(dict.fromkeys(f for s in samples for f in s["json"]))
    for role, chosen in (("text", text_field), ("speaker", speaker_field)):
        if chosen is not None and chosen not in fields:
            raise ValueError(
                f"no JSON member of split '{split}' has the {role} field '{chosen}' "
                f"(fields: {', '.join(fields) or 'none'}); set prep_options {role}_field"
            )
    text_field = text_field or next((f for f in TEXT_FIELDS if f in fields), None)
    speaker_field = speaker_field or next((f for f in SPEAKER_FIELDS if f in fields), None)
    extras = [f for f in fields if f not in (text_field, speaker_field, *BASE_COLUMNS)]
    utterances = []
    for sample in samples:
        metadata = sample["json"]
        text = metadata.get(text_field) if text_field in metadata else sample["txt"]
        utterances.append(
            Utterance(
                sample["key"].replace("/", "_"),
                sample["wav"],
                _text(metadata.get(speaker_field)),
                _text(text),
                {f: _text(metadata.get(f)) for f in extras},
            )
        )
    return utterances, extras


def _samples(shard, data_folder):
    """The samples of one shard in order: key, audio reference, JSON fields, text file."""
    relative = f"{DATA_ROOT}/{shard.relative_to(data_folder).as_posix()}"
    try:
        tar = tarfile.open(shard, "r:")
    except (tarfile.TarError, OSError) as error:
        raise ValueError(f"{shard} is not an uncompressed tar file: {error}") from None
    samples = {}
    size = shard.stat().st_size
    with tar:
        for member in _members(tar, shard):
            if not member.isfile():
                continue
            if member.offset_data + member.size > size:
                raise ValueError(
                    f"{shard} is truncated: {member.name} ends at byte "
                    f"{member.offset_data + member.size}, the file has {size} bytes; write it "
                    "again (write_shards)"
                )
            folder, base = posixpath.split(member.name)
            stem, _, extension = base.partition(".")
            key = posixpath.join(folder, stem)
            sample = samples.setdefault(key, {"key": key, "wav": None, "json": {}, "txt": None})
            extension = extension.lower()
            if extension in AUDIO_EXTENSIONS and sample["wav"] is None:
                sample["wav"] = audio_sources.tar_reference(
                    relative, member.name, member.offset_data, member.size
                )
            elif extension == "json":
                sample["json"] = _json_fields(tar.extractfile(member).read(), shard, member.name)
            elif extension == "txt":
                sample["txt"] = tar.extractfile(member).read().decode("utf-8")
    for sample in samples.values():  # a key without audio names no file: missing audio
        sample["wav"] = sample["wav"] or f"{relative}#{sample['key']}"
    return list(samples.values())


def _members(tar, shard):
    """The members of an open shard; a damaged header is one ValueError naming the shard."""
    try:
        yield from tar
    except (tarfile.TarError, EOFError) as error:
        raise ValueError(f"{shard} is damaged: {error}; write it again (write_shards)") from None


def _json_fields(data, shard, name):
    """The scalar fields of a JSON member (nested values are not manifest columns)."""
    try:
        fields = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{shard}: {name} is not JSON: {error}") from None
    if not isinstance(fields, dict):
        raise ValueError(f"{shard}: {name} is not a JSON object")
    return {k: v for k, v in fields.items() if isinstance(v, str | int | float | bool)}


def _text(value):
    """A field as manifest text (None -> empty), surrounding whitespace removed."""
    return "" if value is None else str(value).strip()


def write_shards(manifests, data_folder, output, shard_mb=DEFAULT_SHARD_MB):
    """Write each manifest's rows into ``<output>/<manifest stem>-NNNNNN.tar`` shards of at
    most ``shard_mb`` MB (a bigger clip gets a shard of its own); returns
    ``{stem: {"shards", "utterances", "skipped"}}``. Rows whose audio cannot be read are
    skipped and counted; shards that exist are never overwritten (ValueError)."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    plans = {Path(m).stem: _manifest_rows(m) for m in manifests}
    for stem in plans:
        taken = sorted(output.glob(f"{stem}-*.tar"))
        if taken:
            raise ValueError(f"{taken[0]} exists: choose an empty --output folder")
    summary = {}
    for stem, rows in plans.items():
        writer = _ShardWriter(output, stem, shard_mb * MEGABYTE)
        skipped = Counter()
        for row in rows:
            ref = resolve(row["wav"], data_folder)
            try:
                audio = audio_sources.read_bytes(ref)
                extension = Path(audio_sources.audio_name(ref)).suffix.lower().lstrip(".")
            except OSError:
                skipped["unreadable audio"] += 1
                continue
            if extension not in AUDIO_EXTENSIONS:
                skipped[f"audio format {extension or 'unknown'}"] += 1
                continue
            metadata = {TEXT_FIELD: row["wrd"]}
            if "spk_id" in row:
                metadata[SPEAKER_FIELD] = row["spk_id"]
            metadata |= {c: v for c, v in row.items() if c not in BASE_COLUMNS}
            writer.add(row["ID"], extension, audio, json.dumps(metadata, ensure_ascii=False))
        writer.close()
        summary[stem] = {
            "shards": writer.index,
            "utterances": writer.count,
            "skipped": dict(skipped),
        }
    return summary


def _manifest_rows(csv_path):
    """The rows of a manifest, checked for what a shard needs: IDs usable as keys."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = reader.fieldnames or []
    except OSError as error:
        raise ValueError(f"cannot read manifest {csv_path}: {error.strerror}") from None
    missing = [c for c in ("ID", "wav", "wrd") if c not in columns]
    if missing:
        raise ValueError(f"manifest {csv_path} lacks column(s) {', '.join(missing)}")
    clashes = {TEXT_FIELD, SPEAKER_FIELD} & set(columns)
    if clashes:
        raise ValueError(f"manifest {csv_path}: columns {sorted(clashes)} name shard JSON fields")
    for row in rows:
        if "." in row["ID"] or "/" in row["ID"]:
            raise ValueError(
                f"manifest {csv_path}: ID '{row['ID']}' has a '.' or '/', which a shard key "
                "cannot hold (WebDataset splits keys there)"
            )
    return rows


class _ShardWriter:
    """Tar shards written one at a time, each atomically, byte-identical on a rerun."""

    def __init__(self, folder, stem, max_bytes):
        self.folder, self.stem, self.max_bytes = folder, stem, max_bytes
        self.index = self.count = self.size = 0
        self.tar = None

    def add(self, key, extension, audio, metadata):
        """Add one sample: its audio and its JSON."""
        if self.tar is not None and self.size + len(audio) > self.max_bytes:
            self.close()
        if self.tar is None:
            self.path = self.folder / SHARD_NAME.format(stem=self.stem, index=self.index)
            self.tmp = self.path.with_suffix(".tar.tmp")
            self.tar = tarfile.open(self.tmp, "w", format=tarfile.PAX_FORMAT)
            self.size = 0
        for name, data in ((f"{key}.{extension}", audio), (f"{key}.json", metadata.encode())):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            self.tar.addfile(info, BytesIO(data))
        self.size += len(audio)
        self.count += 1

    def close(self):
        """Finish the open shard, if any, and move it into place."""
        if self.tar is None:
            return
        self.tar.close()
        os.replace(self.tmp, self.path)
        self.tar = None
        self.index += 1
        logger.info("wrote %s", self.path)
