"""Result files that no reader ever sees half of, and JSON-lines logs.

Every file a run or a tool writes goes through ``atomic_path``: written under a temporary
sibling name, flushed to disk, then renamed into place, so it is whole or absent. Standard
library only: the review server and the diagnosis import it without torch.
"""

import contextlib
import csv
import io
import json
import os


@contextlib.contextmanager
def atomic_path(path):
    """A temporary sibling of ``path`` to write to (same extension); renamed to ``path`` once
    the block ends without error, and removed otherwise."""
    folder, name = os.path.split(os.fspath(path))
    tmp = os.path.join(folder, f".{os.getpid()}.tmp.{name}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path, text):
    """Write text atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        out.write(text)


def write_json(path, data):
    """Write JSON (indented) atomically."""
    write_text(path, json.dumps(data, indent=2))


def write_jsonl(path, records):
    """Write JSON records, one per line, atomically."""
    write_text(path, "".join(json.dumps(record) + "\n" for record in records))


def write_csv(path, header, rows):
    """Write a CSV (a header, then rows as sequences) atomically, creating its folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, text.getvalue())


def append_jsonl(path, record):
    """Append one JSON record as a line (machine-readable logs)."""
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")
