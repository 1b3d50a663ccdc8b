"""Where a manifest's ``wav`` points, and the encoded audio bytes found there.

This is the one place that resolves a ``wav`` reference; reading, hashing (encoder cache, data
checks) and serving (review page) all go through it. A reference is one of:

* ``path/to/clip.flac``: an audio file;
* ``path/to/shard.tar#KEY.flac@OFFSET+SIZE``: a member of an uncompressed tar shard, whose data
  are bytes ``[OFFSET, OFFSET + SIZE)`` of the tar file (found once, when preparing), so a read
  is one seek whatever the member's position in the shard;
* ``hf://DATASET_DIR#SPLIT/COLUMN/ROW``: the audio stored in row ``ROW`` of a Hugging Face
  dataset (``save_to_disk`` folder, or parquet/arrow files) as encoded bytes or a file path;
* ``lhotse://CUTS_FILE#CUT_ID`` or ``#CUT_ID/SUPERVISION_ID``: a Lhotse cut (or the span of one
  of its supervisions), loaded by Lhotse and handed on as a float WAV at its own rate.

Standard library only at import: ``datasets`` and ``lhotse`` are imported when a reference of
theirs is first read, and each process opens a dataset or cut manifest once.
"""

import functools
import io
import os
import re
from pathlib import Path

HF_SCHEME = "hf://"
LHOTSE_SCHEME = "lhotse://"
TAR_MEMBER = re.compile(r"(?P<shard>.+\.tar)#(?P<member>[^@]+)@(?P<offset>\d+)\+(?P<size>\d+)")
HF_ROW = re.compile(r"(?P<folder>.+)#(?P<split>[^/]+)/(?P<column>.+)/(?P<row>\d+)")
LHOTSE_CUT = re.compile(r"(?P<cuts>.+)#(?P<cut>[^/]+)(?:/(?P<supervision>.+))?")
# Leading bytes of the encoded formats, for naming audio that comes without a file name.
MAGIC_SUFFIXES = ((b"RIFF", ".wav"), (b"fLaC", ".flac"), (b"OggS", ".ogg"), (b"ID3", ".mp3"))
READ_CHUNK = 1 << 20
SAVE_TO_DISK_FILES = ("dataset_dict.json", "state.json")  # a DatasetDict, or one Dataset


class AudioSourceError(OSError):
    """A reference whose audio cannot be found or loaded."""


def tar_reference(shard, member, offset, size):
    """The reference of a tar member whose data start at byte ``offset`` of ``shard``."""
    return f"{shard}#{member}@{offset}+{size}"


def hf_reference(dataset_folder, split, column, row):
    """The reference of the audio in row ``row`` of a Hugging Face dataset split."""
    return f"{HF_SCHEME}{dataset_folder}#{split}/{column}/{row}"


def lhotse_reference(cuts_file, cut_id, supervision_id=None):
    """The reference of a Lhotse cut, or of the span of one of its supervisions."""
    span = f"/{supervision_id}" if supervision_id is not None else ""
    return f"{LHOTSE_SCHEME}{cuts_file}#{cut_id}{span}"


def is_file(ref):
    """True if ``ref`` names an audio file rather than audio inside a container."""
    ref = os.fspath(ref)
    return not (ref.startswith((HF_SCHEME, LHOTSE_SCHEME)) or TAR_MEMBER.fullmatch(ref))


def exists(ref):
    """True if the file, shard, dataset or cut manifest ``ref`` points into is there."""
    ref = os.fspath(ref)
    if ref.startswith(HF_SCHEME):
        return os.path.isdir(_parse(HF_ROW, ref, HF_SCHEME)["folder"])
    if ref.startswith(LHOTSE_SCHEME):
        return os.path.isfile(_parse(LHOTSE_CUT, ref, LHOTSE_SCHEME)["cuts"])
    member = TAR_MEMBER.fullmatch(ref)
    return os.path.isfile(member["shard"] if member else ref)


def soundfile_input(ref):
    """What soundfile opens for ``ref``: the file's path, or its encoded bytes in memory."""
    ref = os.fspath(ref)
    return ref if is_file(ref) else io.BytesIO(read_bytes(ref))


def open_binary(ref):
    """The encoded audio of ``ref`` as a readable binary file (for hashing or serving)."""
    ref = os.fspath(ref)
    return open(ref, "rb") if is_file(ref) else io.BytesIO(read_bytes(ref))


def digest_update(digest, ref):
    """Feed the encoded audio of ``ref`` to a hashlib ``digest``, a chunk at a time."""
    with open_binary(ref) as f:
        while chunk := f.read(READ_CHUNK):
            digest.update(chunk)


def read_bytes(ref):
    """The encoded audio (a whole audio file's bytes) that ``ref`` points at."""
    ref = os.fspath(ref)
    if ref.startswith(HF_SCHEME):
        return _hf_bytes(ref)
    if ref.startswith(LHOTSE_SCHEME):
        return _lhotse_bytes(ref)
    member = TAR_MEMBER.fullmatch(ref)
    path = member["shard"] if member else ref
    try:
        with open(path, "rb") as f:
            if not member:
                return f.read()
            f.seek(int(member["offset"]))
            data = f.read(int(member["size"]))
    except OSError as error:
        raise AudioSourceError(f"cannot read {path}: {error.strerror}") from None
    if len(data) != int(member["size"]):
        raise AudioSourceError(f"{path} is shorter than its index says: prepare it again")
    return data


def audio_name(ref):
    """A file name for the audio of ``ref`` whose suffix tells its format (for MIME types)."""
    ref = os.fspath(ref)
    member = TAR_MEMBER.fullmatch(ref)
    if member:
        return member["member"]
    if ref.startswith(HF_SCHEME):
        path = _hf_audio(ref)["path"]
        if path and os.path.splitext(path)[1]:
            return os.path.basename(path)
    if not is_file(ref):
        head = read_bytes(ref)[:4]
        suffix = next((s for magic, s in MAGIC_SUFFIXES if head.startswith(magic)), ".mp3")
        return f"audio{suffix}"
    return os.path.basename(ref)


def _parse(pattern, ref, scheme):
    """The named parts of a scheme reference, or AudioSourceError if it is malformed."""
    match = pattern.fullmatch(ref[len(scheme) :])
    if not match:
        raise AudioSourceError(f"malformed audio reference {ref}")
    return match


@functools.lru_cache(maxsize=16)
def hf_split(folder, split, audio_column):
    """One split of a Hugging Face dataset folder (``save_to_disk``, or parquet/arrow files)
    with ``audio_column`` left encoded as {bytes, path}; ValueError names what is missing."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # a local folder: never ask the Hub
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    try:
        if any(os.path.isfile(os.path.join(folder, name)) for name in SAVE_TO_DISK_FILES):
            loaded = datasets.load_from_disk(folder)
        else:
            loaded = datasets.load_dataset(folder)
    except FileNotFoundError:
        raise ValueError(
            f"no Hugging Face dataset in {folder}: no save_to_disk files, parquet/arrow files "
            "or audiofolder metadata.csv/metadata.jsonl"
        ) from None
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as error:
        damaged = damaged_data_file(folder)
        if damaged:
            path, reason = damaged
            raise ValueError(
                f"cannot load the Hugging Face dataset in {folder}: {path} is damaged "
                f"({reason}); write or download it again"
            ) from None
        first_line = _first_line(error)
        raise ValueError(
            f"cannot load the Hugging Face dataset in {folder}: {first_line}"
        ) from None
    splits = loaded if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    if split not in splits:
        raise ValueError(f"{folder} has no split '{split}' (splits: {', '.join(splits)})")
    rows = splits[split]
    if audio_column not in rows.column_names:
        raise ValueError(
            f"{folder} split '{split}' has no audio column '{audio_column}' "
            f"(columns: {', '.join(rows.column_names)}); set prep_options audio_column"
        )
    try:
        return rows.cast_column(audio_column, datasets.Audio(decode=False))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{folder} column '{audio_column}' is not audio: {error}") from None


def _first_line(error):
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def damaged_data_file(folder):
    """``(path, reason)`` of the first arrow or parquet file under ``folder`` that pyarrow
    cannot read whole (cut, overwritten, not that format), or None when all read. Run once
    loading failed, to name the file: it reads every data file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def read_arrow(path):
        try:  # save_to_disk writes the stream format; the file format is read too
            with pa.memory_map(str(path)) as source:
                pa.ipc.open_stream(source).read_all()
        except pa.ArrowInvalid as stream_error:
            try:
                with pa.memory_map(str(path)) as source:
                    pa.ipc.open_file(source).read_all()
            except pa.ArrowInvalid:
                raise stream_error from None

    readers = {".arrow": read_arrow, ".parquet": lambda path: pq.ParquetFile(path).read()}
    for path in sorted(Path(folder).rglob("*")):
        read = readers.get(path.suffix)
        if read is None or not path.is_file():
            continue
        try:
            read(path)
        except (OSError, ValueError, pa.ArrowException) as error:
            return path, _first_line(error)
    return None


@functools.lru_cache(maxsize=16)
def _hf_audio_column(folder, split, column):
    """Only the audio column of a split: a row read decodes nothing else."""
    return hf_split(folder, split, column).select_columns([column])


def _hf_audio(ref):
    """The {bytes, path} of the audio that an ``hf://`` reference points at."""
    parts = _parse(HF_ROW, ref, HF_SCHEME)
    try:
        rows = _hf_audio_column(parts["folder"], parts["split"], parts["column"])
    except (OSError, ValueError) as error:
        raise AudioSourceError(f"cannot open {ref}: {error}") from None
    row = int(parts["row"])
    if row >= len(rows):
        raise AudioSourceError(f"{ref}: split {parts['split']} has only {len(rows)} rows")
    audio = rows[row][parts["column"]]
    return audio or {"bytes": None, "path": None}


def _hf_bytes(ref):
    """The encoded audio of an ``hf://`` reference: stored bytes, or the file it names."""
    audio = _hf_audio(ref)
    if audio["bytes"]:
        return audio["bytes"]
    if not audio["path"]:
        raise AudioSourceError(f"{ref} holds no audio")
    folder = _parse(HF_ROW, ref, HF_SCHEME)["folder"]
    return read_bytes(os.path.join(folder, audio["path"]))  # an absolute path stays as it is


@functools.lru_cache(maxsize=16)
def lhotse_cuts(cuts_file):
    """The cuts of a Lhotse manifest by ID."""
    from lhotse import CutSet

    return {cut.id: cut for cut in CutSet.from_file(cuts_file)}


@functools.lru_cache(maxsize=4)  # the checks read a clip's header and then its bytes
def _lhotse_bytes(ref):
    """The samples of a Lhotse cut (or supervision span), as a float WAV at the cut's rate."""
    import soundfile as sf

    parts = _parse(LHOTSE_CUT, ref, LHOTSE_SCHEME)
    try:
        cut = lhotse_cuts(parts["cuts"])[parts["cut"]]
        if parts["supervision"] is not None:
            cut = supervision_span(cut, parts["supervision"])
        samples = cut.load_audio()
    except KeyError as error:
        raise AudioSourceError(f"{ref}: no cut or supervision {error}") from None
    except Exception as error:  # Lhotse raises whatever its audio backends raise
        raise AudioSourceError(f"cannot load {ref}: {error}") from None
    buffer = io.BytesIO()
    sf.write(buffer, samples.T, cut.sampling_rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def supervision_span(cut, supervision_id):
    """The part of ``cut`` that one of its supervisions covers (KeyError if it has none)."""
    for supervision in cut.supervisions:
        if supervision.id == supervision_id:
            return cut.truncate(offset=supervision.start, duration=supervision.duration)
    raise KeyError(supervision_id)
