"""Keep freed memory in the process (glibc), so that each training step and each batch of the
encoder cache's pass do not page-fault their large tensors in again.

glibc gives every allocation above its mmap threshold (at most 32 MB) fresh pages from the
system and returns them on free. A decoder step over Whisper's 51865-token vocabulary makes
several larger tensors (the tied embedding's gradient, the output projection's, the logits of a
decoding step's batch), and so does the encoder (tiny.en's feed-forward activations are 74 MB
a layer for 8 clips at the 30 s window): each step and batch zero-fills all their pages again.
Served from the heap, which is never trimmed, freed blocks are reused instead; the peak
resident memory hardly moves (measured in docs/speed.md).
"""

import ctypes
import ctypes.util
import sys

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
NEVER_TRIM = 2**31 - 1  # the largest threshold mallopt takes, in bytes


def _mallopt():
    """glibc's mallopt, or None where there is none (macOS, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return None


def keep_freed_memory():
    """Serve every allocation from the heap and keep freed heap memory (glibc on Linux).

    Returns whether it was applied: False elsewhere, where nothing changes.
    """
    mallopt = _mallopt()
    return (
        bool(mallopt)
        and bool(mallopt(M_MMAP_MAX, 0))
        and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
    )


def return_freed_memory(threshold):
    """Give every allocation above ``threshold`` bytes its own pages, returned when freed, so
    that the resident peak is the peak of the live tensors (glibc's default keeps some freed
    blocks of up to 32 MB resident). For measurements; returns whether it was applied."""
    mallopt = _mallopt()
    return bool(mallopt) and bool(mallopt(M_MMAP_THRESHOLD, threshold))
