"""Keep freed memory in the process (glibc), so that each training step does not page-fault
its large tensors in again.

glibc gives every allocation above its mmap threshold (at most 32 MB) fresh pages from the
system and returns them on free. A decoder step over Whisper's 51865-token vocabulary makes
several larger tensors (the tied embedding's gradient, the output projection's, the logits of a
decoding step's batch), so every step zero-fills all their pages again. Served from the heap,
which is never trimmed, freed blocks are reused instead; the peak resident memory stays what it
was (README: Speed).
"""

import ctypes
import ctypes.util
import sys

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
NEVER_TRIM = 2**31 - 1  # the largest threshold mallopt takes, in bytes


def keep_freed_memory():
    """Serve every allocation from the heap and keep freed heap memory (glibc on Linux).

    Returns whether it was applied: False elsewhere (macOS, musl), where nothing changes.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
