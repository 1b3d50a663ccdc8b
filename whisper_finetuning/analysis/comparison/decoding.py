"""A run's selected checkpoint decoded on a test set it has no utterances of, by train.py.

train.py rerun in a finished run's folder trains no more and only decodes: with the run's own
settings (its ``hyperparams.yaml``, and the SpeechBrain run options run.json records) and
``--test_csv=[MANIFEST]``, its test stage decodes the manifest with the selected checkpoint
and the run's test search, and writes ``utterances_NAME.jsonl`` and ``summary_NAME.json``
into the folder as after training; a later comparison reuses them. The zero-shot pass, the
long-form and keep test sets and the diagnosis are left out: the run has them already.
"""

import json
import logging
import subprocess
import sys
from pathlib import Path

import ruamel.yaml

from whisper_finetuning.analysis.diagnosis.records import RUN_FILE, read_json
from whisper_finetuning.common.errors import RecipeError

logger = logging.getLogger(__name__)

RECIPE = Path(__file__).resolve().parents[3] / "train.py"
HPARAMS_FILE = "hyperparams.yaml"  # the run's yaml with its overrides, as SpeechBrain saved it
# SpeechBrain takes these as run options from the command line: hyperparams.yaml keeps the
# yaml's value, run.json's settings the one the run used.
RUN_OPTIONS = ("precision", "grad_accumulation_factor", "max_grad_norm")
ONLY_THE_TEST_SET = [
    "--decode_test_sets=True",  # a sweep's trial was trained with it False
    "--zero_shot_eval=False",
    "--longform_test_csv=[]",
    "--keep_test_csv=null",
    "--diagnose_after_training=False",
    "--noprogressbar",
]


def trained_in(run):
    """The run's settings file; refuses a run whose settings name another output folder (it
    was moved, or started from another directory): train.py writes where they say."""
    hparams_file = run.folder / HPARAMS_FILE
    if not hparams_file.is_file():
        raise RecipeError(f"{run.folder} has no {HPARAMS_FILE}: its checkpoint cannot be decoded")
    output_folder = ruamel.yaml.YAML().load(hparams_file.read_text())["output_folder"]
    if Path(output_folder).resolve() != run.folder:
        raise RecipeError(
            f"{hparams_file} names output_folder {output_folder}, which is not {run.folder} "
            "from here: decode from the directory the run was started in, where it was trained"
        )
    return hparams_file


def command(run, manifest):
    """The train.py command line that decodes ``manifest`` with the run's selected
    checkpoint."""
    settings = read_json(run.folder / RUN_FILE).get("settings", {})
    run_options = [f"--{key}={settings[key]}" for key in RUN_OPTIONS if key in settings]
    return [
        sys.executable,
        str(RECIPE),
        str(trained_in(run)),
        f"--test_csv={json.dumps([str(Path(manifest).resolve())])}",  # JSON is YAML
        *run_options,
        *ONLY_THE_TEST_SET,
    ]


def decode(run, name, manifest):
    """Decode test set ``name`` (``manifest``) with the run's selected checkpoint into its
    folder."""
    if not Path(manifest).is_file():
        raise RecipeError(f"test manifest {manifest} not found: {run.label} cannot decode it")
    if not any((run.folder / "save").glob("CKPT+*")):
        raise RecipeError(f"{run.label} has no checkpoint in save/ to decode test set '{name}'")
    logger.info(
        "%s has no utterances of test set '%s': decoding %s with its selected checkpoint "
        "(train.py's test stage)",
        run.label,
        name,
        manifest,
    )
    done = subprocess.run(command(run, manifest), capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()] or ["(no output)"]
        raise RecipeError(
            f"decoding test set '{name}' with {run.label}'s selected checkpoint failed "
            f"(train.py exit status {done.returncode}): {lines[-1].removeprefix('error: ')}"
        )
    if not run.has_decoded(name):
        raise RecipeError(f"train.py decoded no test set '{name}' into {run.folder}")
    logger.info("%s: wrote utterances_%s.jsonl (a later comparison reuses it)", run.label, name)


def decode_missing(runs, manifests):
    """Decode each test set of ``manifests`` (``{name: manifest}``) with each run that has
    not: its utterances are then in every run's folder."""
    for run in runs:
        own = run.test_sets()
        for name, manifest in manifests.items():
            if not run.has_decoded(name):
                decode(run, name, manifest)
            elif name not in own:
                logger.info(
                    "%s: test set '%s' was decoded earlier: reusing utterances_%s.jsonl",
                    run.label,
                    name,
                    name,
                )
