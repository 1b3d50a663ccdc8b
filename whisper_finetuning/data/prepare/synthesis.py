"""What the espeak-ng corpora share: the command-line tools they run and their seeded hash."""

import hashlib
import shutil
import subprocess

MANIFEST_HEADER = ("ID", "duration", "wav", "spk_id", "dialect", "language", "wrd")
REQUIRED_TOOLS = ("espeak-ng", "sox")
INSTALL_HINT = "run `apt-get install espeak-ng sox` (or `make demo`, which installs them)"


def check_tools() -> None:
    """Raise a one-line RuntimeError if a command-line tool needed for synthesis is missing."""
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(f"{' and '.join(missing)} not found: {INSTALL_HINT}")


def run_tool(cmd: list[str], item: str) -> None:
    """Run one tool for ``item``, turning a failure into a RuntimeError that shows its stderr."""
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed for {item}: {result.stderr.strip()}")


def fraction(seed, *key) -> float:
    """A number in [0, 1) fixed by the seed and the key."""
    digest = hashlib.sha256(":".join(map(str, (seed, *key))).encode()).digest()
    return int.from_bytes(digest[:8]) / 2**64
