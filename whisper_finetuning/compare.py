"""Compare finished runs on the same test set: which run is better beyond noise.

Each run's checkpoint selected by its selection metric, on each test set the runs were
tested on (or the ``--test_csv`` manifests; a run not decoded on one is decoded first, by
train.py's test stage in its folder): WER, CER, BLEU and chrF with 95% intervals,
every pair's paired difference with a speaker-blocked bootstrap interval, Holm-corrected
across the pairs, overall and per group, a verdict per pair, and the runs' valid curves
(``analysis/comparison``). Writes ``comparison.md``, ``comparison.json`` and
``comparison_curves.png`` into ``--output_folder``.

Usage: python -m whisper_finetuning.compare EXP1 EXP2 [...] [--test_csv CSV ...]
"""

import argparse
import logging
import sys

from whisper_finetuning.analysis.comparison import report
from whisper_finetuning.common.errors import RecipeError


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="train.py output folders")
    parser.add_argument(
        "--test_csv",
        nargs="+",
        default=[],
        help="test manifests to compare on (default: every test set of the runs)",
    )
    parser.add_argument("--output_folder", default=".", help="where the comparison is written")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        result = report.build(args.runs, args.test_csv)
        path = report.write(result, args.output_folder)
    except (RecipeError, OSError, ValueError) as error:
        sys.exit(f"error: {error}")
    for name, test in result["test_sets"].items():
        for row in test["overall"][result["decision_metric"]]:
            print(f"{name}, {row['a']} vs {row['b']}: {row['verdict']}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
