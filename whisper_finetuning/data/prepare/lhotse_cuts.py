"""Manifests from Lhotse CutSets (``cuts_<split>.jsonl.gz``, as icefall/k2 recipes write them).

A cut of at most 30 s is one row: its ID, its supervisions' texts in time order joined by a
space, and the first supervision's speaker, gender and language; custom supervision fields
become group columns. A cut over 30 s is split by its supervisions: one row per supervision
(the supervision's ID, the span of the cut it covers); a supervision itself over 30 s stays a
row that the recipe skips or refuses like any other audio over 30 s (``on_bad_row``).

``wav`` is ``lhotse://$data_root/<cuts file>#<cut ID>[/<supervision ID>]``: Lhotse loads the
audio from the recording the cut points into (relative recording paths are relative to the
working directory, as in Lhotse itself).
"""

from pathlib import Path

from whisper_finetuning.data import audio_sources
from whisper_finetuning.data.audio import CHUNK_SECONDS
from whisper_finetuning.data.prepare.corpora import (
    BASE_COLUMNS,
    DATA_ROOT,
    Utterance,
    _outputs,
    _require,
    resolve,
    write_manifest,
)

CUTS_PATTERN = "*cuts_{split}.jsonl.gz"
GENDER, LANGUAGE = "gender", "language"


def prepare_lhotse(
    data_folder,
    save_folder,
    train_splits=("train",),
    valid_splits=("dev",),
    test_splits=("test",),
) -> dict:
    """Prepare the CutSets ``*cuts_<split>.jsonl.gz`` in ``data_folder``; each test split gets
    ``<split>.csv``."""
    _require(data_folder, "Lhotse manifest folder")
    cuts_files = {
        split: f"{DATA_ROOT}/{_cuts_file(data_folder, split)}"
        for split in dict.fromkeys([*train_splits, *valid_splits, *test_splits])
    }  # the files as the manifests name them; read as the recipe will resolve them
    cuts = {
        split: _read_cuts(resolve(cuts_file, data_folder))
        for split, cuts_file in cuts_files.items()
    }

    def utterances(names):
        for name in names:
            for cut in cuts[name].values():
                yield from _cut_rows(cut, cuts_files[name])

    outputs = _outputs(save_folder, test_splits)
    groups = [(outputs["train"], train_splits), (outputs["valid"], valid_splits)]
    groups += [(path, [split]) for path, split in zip(outputs["test"], test_splits, strict=True)]
    for csv_path, names in groups:
        supervisions = [
            s for name in names for cut in cuts[name].values() for s in cut.supervisions
        ]
        write_manifest(csv_path, data_folder, utterances(names), _extra_columns(supervisions))
    return outputs


def _read_cuts(path):
    """The cuts of one CutSet file; a cut, torn or garbage file is one ValueError naming it."""
    try:
        return audio_sources.lhotse_cuts(path)
    except (OSError, EOFError, ValueError, KeyError, TypeError) as error:  # gzip, JSON, fields
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"{path} is not a readable Lhotse CutSet: {reason}") from None


def _cuts_file(data_folder, split):
    """The name of the one CutSet file of ``split``, or a one-line error."""
    found = sorted(Path(data_folder).glob(CUTS_PATTERN.format(split=split)))
    if len(found) != 1:
        pattern = CUTS_PATTERN.format(split=split)
        present = ", ".join(p.name for p in sorted(Path(data_folder).glob("*cuts_*.jsonl.gz")))
        what = "no" if not found else f"{len(found)} files matching"
        raise ValueError(f"{data_folder} has {what} {pattern} (cut files: {present or 'none'})")
    return found[0].name


def _extra_columns(supervisions):
    """Group columns: gender, custom fields (first seen first), language; those with values."""
    custom = dict.fromkeys(key for s in supervisions for key in (s.custom or {}))
    columns = [GENDER] * any(s.gender for s in supervisions) + list(custom)
    columns += [LANGUAGE] * any(s.language for s in supervisions)
    clashes = set(columns) & set(BASE_COLUMNS)
    if clashes:
        raise ValueError(f"custom supervision fields {sorted(clashes)} clash with manifest columns")
    return columns


def _cut_rows(cut, cuts_file):
    """The manifest rows of one cut: the whole cut, or one per supervision if over 30 s."""
    supervisions = sorted(cut.supervisions, key=lambda s: s.start)
    if cut.duration <= CHUNK_SECONDS:
        wav = audio_sources.lhotse_reference(cuts_file, cut.id)
        text = " ".join(s.text.strip() for s in supervisions if s.text)
        yield _utterance(cut.id, wav, text, supervisions[0] if supervisions else None)
        return
    for supervision in supervisions:
        wav = audio_sources.lhotse_reference(cuts_file, cut.id, supervision.id)
        yield _utterance(supervision.id, wav, supervision.text or "", supervision)


def _utterance(utt_id, wav, text, supervision):
    """A manifest row candidate with the speaker, gender, language and custom fields of
    ``supervision`` (None: a cut without supervisions, which has no transcript)."""
    if supervision is None:
        return Utterance(utt_id, wav, "", "", {})
    extras = {key: str(value) for key, value in (supervision.custom or {}).items()}
    extras[GENDER] = supervision.gender or ""
    extras[LANGUAGE] = supervision.language or ""
    return Utterance(utt_id, wav, supervision.speaker or "", text.strip(), extras)
