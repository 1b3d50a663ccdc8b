"""Pseudo-label manifests: the audio to label, the journal of labels, the filters.

Labels are appended a batch at a time to a journal next to the output (``NAME.all.csv``: every
labelled row, whatever the filters say), flushed to disk before the next batch starts. A run
that is killed loses at most the batch it was writing (a cut last line is dropped when the
journal is reopened); a rerun labels only the rows the journal lacks. The output manifest is
then written whole from the journal with the filters applied, so a rerun with other
thresholds refilters without labelling anything again. Standard library only.
"""

import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

from whisper_finetuning.common.errors import RecipeError
from whisper_finetuning.common.files import write_csv
from whisper_finetuning.common.label_sources import LABEL_SOURCE
from whisper_finetuning.data.manifests import DATA_ROOT
from whisper_finetuning.data.prepare.shards import AUDIO_EXTENSIONS

LABEL_COLUMNS = (LABEL_SOURCE, "mean_logprob", "no_speech_prob", "compression_ratio")
REFERENCE_WER = "reference_wer"  # empty where the input row had no reference transcript
BASE_COLUMNS = ("ID", "duration", "wav", "wrd")


class PseudoLabelError(RecipeError, ValueError):
    """Input or an earlier output that the labeller cannot use."""


def journal_path(output):
    """Where the labels of ``output`` (a manifest path) are journaled."""
    output = Path(output)
    return output.with_name(f"{output.stem}.all{output.suffix}")


def input_rows(source, data_folder=None):
    """The rows to label from an audio file, a folder of audio files (searched recursively;
    ID: the path inside it without the extension) or a CSV manifest (``ID``, ``wav``; its
    ``wrd``, where given, is the reference; ``$data_root`` means ``data_folder``, by default
    the manifest's folder). Each row: ``ID``, ``wav`` as written, ``path`` to read, and the
    manifest's other columns."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix[1:].lower() in AUDIO_EXTENSIONS)
        if not files:
            raise PseudoLabelError(f"{source} holds no audio ({', '.join(AUDIO_EXTENSIONS)})")
        return [_file_row(p, p.relative_to(source).with_suffix("").as_posix()) for p in files]
    if source.suffix.lower() == ".csv":
        return _manifest_rows(source, Path(data_folder or source.parent))
    if source.is_file():
        return [_file_row(source, source.stem)]
    raise PseudoLabelError(f"{source} is not an audio file, a folder or a CSV manifest")


def _file_row(path, utt_id):
    path = str(path.resolve())
    return {"ID": utt_id, "wav": path, "path": path}


def _manifest_rows(csv_path, data_folder):
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, skipinitialspace=True))
    except OSError as error:
        raise PseudoLabelError(f"cannot read manifest {csv_path}: {error.strerror}") from None
    missing = [c for c in ("ID", "wav") if rows and c not in rows[0]]
    if not rows or missing:
        raise PseudoLabelError(f"manifest {csv_path} needs rows with ID and wav columns")
    seen = set()
    for line, row in enumerate(rows, start=2):
        if row["ID"] in seen:
            raise PseudoLabelError(f"manifest {csv_path}, line {line}: ID {row['ID']!r} repeats")
        seen.add(row["ID"])
        row["path"] = row["wav"].replace(f"${DATA_ROOT}", str(data_folder))
    return rows


def output_columns(rows):
    """The journal's and the output's header: the manifest columns, the labeller's, then the
    input's other columns (speaker, language, ...) as they were."""
    known = {*BASE_COLUMNS, *LABEL_COLUMNS, REFERENCE_WER, "path"}
    extra = [c for c in (rows[0] if rows else {}) if c not in known]
    return [*BASE_COLUMNS, *LABEL_COLUMNS, REFERENCE_WER, *extra]


class Journal:
    """The append-only CSV of every label so far (``journal_path``)."""

    def __init__(self, path, header):
        self.path, self.header = Path(path), list(header)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows = self._read() if self.path.exists() else []
        if not self.path.exists() or self.path.stat().st_size == 0:
            self._append([self.header])

    def _read(self):
        """The complete rows; a line cut short by a kill is removed from the file."""
        data = self.path.read_bytes()
        if not data.endswith(b"\n"):
            data = data[: data.rfind(b"\n") + 1]
            os.truncate(self.path, len(data))
        lines = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
        if lines and lines[0] != self.header:
            raise PseudoLabelError(
                f"{self.path} was written with the columns {', '.join(lines[0])}, not "
                f"{', '.join(self.header)}: remove it or choose another --output"
            )
        return [dict(zip(self.header, fields, strict=True)) for fields in lines[1:]]

    @property
    def labelled(self):
        """IDs already in the journal."""
        return {row["ID"] for row in self.rows}

    def add(self, rows):
        """Append labelled rows (dicts with every header column) and flush them to disk."""
        self._append([[row[c] for c in self.header] for row in rows])
        self.rows.extend(rows)

    def _append(self, lines):
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(lines)
            f.flush()
            os.fsync(f.fileno())


@dataclass(frozen=True)
class Filters:
    """Thresholds a pseudo-label must pass (None: that filter is off). ``wer_threshold``
    applies to rows with a reference only (WER in percent, distil-whisper's 10)."""

    wer_threshold: float | None = 10.0
    max_no_speech_prob: float | None = None
    min_mean_logprob: float | None = None
    max_compression_ratio: float | None = None

    def failed(self, row):
        """The names of the filters ``row`` (a journal row) fails; ``empty`` for no text."""
        checks = {
            "empty": not row["wrd"].strip(),
            "wer_threshold": _above(row[REFERENCE_WER], self.wer_threshold),
            "max_no_speech_prob": _above(row["no_speech_prob"], self.max_no_speech_prob),
            "min_mean_logprob": self.min_mean_logprob is not None
            and float(row["mean_logprob"]) < self.min_mean_logprob,
            "max_compression_ratio": _above(row["compression_ratio"], self.max_compression_ratio),
        }
        return [name for name, fails in checks.items() if fails]


def _above(value, threshold):
    return threshold is not None and value != "" and float(value) > threshold


def write_filtered(journal, order, output, filters):
    """Write ``output`` with the journal rows of ``order`` (IDs, input order) that pass
    ``filters``; returns ``{filter name: rows it removes}`` (a row may fail several) and
    the number kept."""
    by_id = {row["ID"]: row for row in journal.rows}
    rows = [by_id[utt_id] for utt_id in order if utt_id in by_id]
    removed = {name: 0 for name in ("empty", *Filters.__dataclass_fields__)}
    kept = []
    for row in rows:
        failed = filters.failed(row)
        for name in failed:
            removed[name] += 1
        if not failed:
            kept.append([row[c] for c in journal.header])
    write_csv(output, journal.header, kept)
    return removed, len(kept)


def word_error_rate(errors, words):
    """WER in percent, formatted for the manifest (empty without reference words)."""
    return "" if not words else f"{100 * errors / words:.2f}"


def number(value):
    """A confidence value as the manifest stores it."""
    return f"{value:.4f}" if math.isfinite(value) else str(value)
