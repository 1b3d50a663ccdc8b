"""Result files written so no reader ever sees half of one, and JSON-lines logs.

Standard library only: the review server and the diagnosis import it without torch.
"""

import json
import os


def write_text(path, text):
    """Write text through a temporary sibling and a rename: the file is whole or absent."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(tmp, path)


def write_json(path, data):
    """Write JSON (indented) atomically."""
    write_text(path, json.dumps(data, indent=2))


def append_jsonl(path, record):
    """Append one JSON record as a line (machine-readable logs)."""
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")
