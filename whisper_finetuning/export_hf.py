"""Export a run's min-WER checkpoint (or another kept epoch's) as a Hugging Face Whisper directory.

The directory loads with ``transformers.pipeline``; ``--ct2`` adds ``DEST_DIR/ctranslate2`` for
faster-whisper; ``--epoch N`` exports epoch N's checkpoint (e.g. the one a human review
preferred, kept with ``review_checkpoints: True``). It says which checkpoint it took; one taken
before any validation (a run stopped in its first epoch) only with ``--allow_unvalidated``.
Adapters (``adapter: lora``) are merged into the weights; ``--adapter_only`` writes PEFT's
adapter folder instead.

Usage: python -m whisper_finetuning.export_hf EXPERIMENT_FOLDER DEST_DIR [--ct2] [--epoch N]
    [--allow_unvalidated] [--adapter_only]
"""

import argparse
import sys
from pathlib import Path

from whisper_finetuning.common.errors import RecipeError
from whisper_finetuning.export.huggingface import describe, export


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment_folder", type=Path, help="a train.py output folder")
    parser.add_argument("dest_dir", type=Path, help="new Hugging Face model directory")
    parser.add_argument("--ct2", action="store_true", help="also write DEST_DIR/ctranslate2")
    parser.add_argument("--epoch", type=int, help="export this epoch's checkpoint (if kept)")
    parser.add_argument(
        "--allow_unvalidated",
        action="store_true",
        help="with no validated checkpoint, export the latest intra-epoch one",
    )
    parser.add_argument(
        "--adapter_only",
        action="store_true",
        help="write the PEFT adapter folder (PeftModel.from_pretrained) instead of a merged model",
    )
    args = parser.parse_args(argv)
    try:
        dest, checkpoint = export(
            args.experiment_folder,
            args.dest_dir,
            args.ct2,
            args.epoch,
            args.allow_unvalidated,
            args.adapter_only,
        )
    except (RecipeError, OSError, ValueError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"exported {describe(checkpoint)} to {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
