"""The reviewers' judgments: an append-only JSON-lines log where the last word counts.

Every action on the page appends the full state of one reviewer's judgment of one utterance,
flushed and fsynced, so neither a reload nor a crash loses a mark. Reading keeps, per reviewer
and utterance, the last line: later judgments supersede earlier ones without rewriting history.
"""

import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path

REVIEW_FOLDER = "review"
JUDGMENTS_FILE = "judgments.jsonl"
TIE = "tie"  # a judgment's "best" when its candidates are equally good
# Who judged what and how: a line without these is not a judgment.
JUDGMENT_FIELDS = {"reviewer", "id", "best"}


def judgments_path(exp):
    """``EXP/review/judgments.jsonl``."""
    return Path(exp) / REVIEW_FOLDER / JUDGMENTS_FILE


class JudgmentLog:
    """Appends judgments durably; one writer lock per log."""

    def __init__(self, path):
        self.path = Path(path)
        self.lock = threading.Lock()

    def append(self, record):
        """Write ``record`` (stamped with the UTC time) as one line, on disk before returning."""
        record = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), **record}
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as out:
                out.write(line)
                out.flush()
                os.fsync(out.fileno())
        return record


def read_judgment_log(path):
    """The judgments in file order, and the numbers of the lines skipped as not judgments
    (not JSON, not UTF-8, or without a judgment's keys); a torn last line (a crash mid-write,
    no newline) is ignored and not counted."""
    path = Path(path)
    if not path.is_file():
        return [], []
    records, skipped = [], []
    lines = path.read_bytes().split(b"\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except (ValueError, RecursionError):  # also bad UTF-8 and huge integers
            record = None
        if _is_judgment(record):
            records.append(record)
        elif number < len(lines):  # the last piece has no newline: torn, not foreign
            skipped.append(number)
    return records, skipped


def _is_judgment(record):
    """Whether a parsed line holds what ``ReviewSession.judge`` appends."""
    return (
        isinstance(record, dict)
        and JUDGMENT_FIELDS <= set(record)
        and isinstance(record["reviewer"], str)
        and isinstance(record["id"], str)
    )


def read_judgments(path):
    """The judgments in file order (see ``read_judgment_log``)."""
    return read_judgment_log(path)[0]


def latest(records):
    """{(reviewer, utterance id): the last record}, in order of first appearance."""
    kept = {}
    for record in records:
        kept[(record["reviewer"], record["id"])] = record
    return kept
