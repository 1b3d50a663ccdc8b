"""Diagnose why training loss and WER disagree, and say which checkpoint to trust.

Reads this recipe's experiment folder, a transformers ``trainer_state.json`` or a
SpeechBrain ``train_log.txt`` and writes ``EXPERIMENT_FOLDER/diagnostics/`` with ``report.md``,
``diagnostics.json`` and PNG plots (``analysis/diagnosis``).

Usage: python -m whisper_finetuning.diagnose EXPERIMENT_FOLDER
"""

import argparse
import os
import sys

from whisper_finetuning.analysis.diagnosis.run import OUTPUT_FOLDER, run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "experiment_folder",
        help="a train.py output folder, or a folder with a trainer_state.json or train_log.txt",
    )
    args = parser.parse_args(argv)
    try:
        diagnostics = run(args.experiment_folder)
    except (OSError, ValueError) as error:
        sys.exit(f"error: {error}")
    for sentence in diagnostics["verdict"]:
        print(f"- {sentence}")
    print(f"wrote {os.path.join(args.experiment_folder, OUTPUT_FOLDER, 'report.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
