"""Run a hyperparameter sweep on Optuna: each trial one train.py run in its own folder.

Grid, random or TPE sampling; the study in an RDB storage (SQLite in the output folder by
default; a database URL lets several processes or machines run one study); resumable after a
kill (rerun the same command after twice ``heartbeat_seconds``); optional pruning on the
valid metric; a trial whose train.py fails is recorded with its error and the next one runs.
Trials are chosen by valid only; the test sets are decoded for the chosen trial alone. Writes
``sweep.md`` and ``sweep.json`` into the output folder when every trial has ended
(``sweeps/``; the spec's keys: ``sweeps/spec.py``).

Usage: python -m whisper_finetuning.sweep SPEC
"""

import argparse
import json
import logging
import sys
from pathlib import Path

from optuna.trial import TrialState

from whisper_finetuning.common.errors import RecipeError
from whisper_finetuning.sweeps import report, spec, study, trials


def test_summaries(folder):
    """The chosen trial's test summaries, by test set name."""
    info = json.loads((Path(folder) / "run.json").read_text())
    names = [Path(csv_path).stem for csv_path in info["test_csv"]]
    return {n: json.loads((Path(folder) / f"summary_{n}.json").read_text()) for n in names}


def chosen(done):
    """The best finished trial; refuses a study whose every trial failed (none was pruned:
    the pruner compares with finished trials)."""
    if not done.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        failed = study.failed_by_the_recipe(done)
        last = failed[-1].user_attrs[study.ERROR]
        raise RecipeError(f"every trial failed ({len(failed)}); the last: {last}")
    return done.best_trial


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="the sweep's YAML specification")
    parser.add_argument("--seed", type=int, help="the sampler's seed (overrides the spec's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        sweep = spec.load(args.spec)
        if args.seed is not None:
            sweep.seed = args.seed
        done = study.run(sweep)
        if not study.finished(done, sweep):
            print("trials are still running in another process; it writes the report")
            return 0
        best = chosen(done)
        folder = best.user_attrs["folder"]
        trials.decode_tests(sweep, best.params, Path(folder))
        path = report.write(report.build(sweep, done, test_summaries(folder)), sweep.output_folder)
    except (RecipeError, OSError, ValueError) as error:
        sys.exit(f"error: {error}")
    print(f"chosen: trial {best.number} ({folder}); wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
