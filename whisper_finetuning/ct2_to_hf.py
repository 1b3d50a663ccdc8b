"""Convert a CTranslate2 (faster-whisper) Whisper model into a Hugging Face Whisper directory.

Usage: python -m whisper_finetuning.ct2_to_hf SRC_DIR DEST_DIR
"""

import argparse
import sys
from pathlib import Path

from whisper_finetuning.model.ct2 import convert


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src_dir", type=Path, help="CTranslate2 Whisper model directory")
    parser.add_argument("dest_dir", type=Path, help="new Hugging Face model directory")
    args = parser.parse_args(argv)
    try:
        convert(args.src_dir, args.dest_dir)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.dest_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
