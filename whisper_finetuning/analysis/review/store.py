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


def read_judgments(path):
    """All judgment lines in file order; a torn last line (a crash mid-write) is ignored."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def latest(records):
    """{(reviewer, utterance id): the last record}, in order of first appearance."""
    kept = {}
    for record in records:
        kept[(record["reviewer"], record["id"])] = record
    return kept
