"""SHA-256 checksums of the files a run writes and later reads back (standard library only).

A file is hashed when it is written and checked when it is read: a checkpoint's files (listed
in its ``CKPT.yaml``), encoder-cache entries, and exported model folders (``SHA256SUMS``, the
format ``sha256sum -c SHA256SUMS`` checks).
"""

import hashlib
import os
from pathlib import Path

from whisper_finetuning.common.files import write_text

SUMS_FILE = "SHA256SUMS"


def sha256_file(path):
    """The SHA-256 of a file's bytes, as hex."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sha256_files(folder, names):
    """``{name: sha256}`` of files of ``folder``."""
    return {name: sha256_file(Path(folder) / name) for name in names}


def damage(path, expected):
    """Why ``path`` is not the file whose SHA-256 is ``expected`` (None when it is)."""
    if not os.path.isfile(path):
        return "is missing"
    if sha256_file(path) == expected:
        return None
    if os.path.getsize(path) == 0:
        return "is empty"
    return "is damaged (its SHA-256 differs from the one recorded when it was written)"


def write_sums(folder):
    """Write ``folder/SHA256SUMS``: every file under ``folder`` (but itself), sorted."""
    folder = Path(folder)
    names = sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != SUMS_FILE
    )
    lines = [f"{digest}  {name}\n" for name, digest in sha256_files(folder, names).items()]
    write_text(folder / SUMS_FILE, "".join(lines))


def read_sums(folder):
    """``{relative name: sha256}`` from ``folder/SHA256SUMS``; None when there is none."""
    path = Path(folder) / SUMS_FILE
    if not path.is_file():
        return None
    sums = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            raise ValueError(f"{path}, line {number}: not a '<sha256>  <file>' line")
        sums[name] = digest
    return sums


def first_damaged(folder, sums):
    """``(path, why)`` of the first file of ``sums`` under ``folder`` that does not match, or
    None when all do."""
    for name, digest in sums.items():
        why = damage(Path(folder) / name, digest)
        if why:
            return Path(folder) / name, why
    return None
