"""Contribute this recipe to SpeechBrain: one command writes the recipe folder and its test row.

    python -m whisper_finetuning.upstream --hparams hparams/whisper_small.yaml \\
        --dataset CommonVoice --speechbrain ~/speechbrain \\
        [--result_url URL] [--hf_repo REPO] [--script train.py]

writes, into the SpeechBrain checkout, ``recipes/<Dataset>/ASR/whisper_finetune/`` with

- ``train.py``: the recipe script, copied unchanged (by default the ``train.py`` next to the
  ``hparams/`` folder of ``--hparams``);
- ``hparams/<name>.yaml``: the given hyperparameters with the dataset's values set (the
  ``dataset`` preparer, test sets, group columns, language, output folder), with its comments
  kept;
- the dataset's prepare script: a link to SpeechBrain's own (``recipes/<Dataset>/<x>_prepare.py``)
  where the checkout has it, else a thin script calling this package's preparer;
- ``README.md`` (what it is, the command, a results table, the URLs) and
  ``extra_requirements.txt`` naming this package;

and appends the recipe's row to ``tests/recipes/<Dataset>.csv`` in SpeechBrain's format, whose
``test_debug_flags`` run the recipe on SpeechBrain's tiny sample (``tests/samples``) and whose
``test_debug_checks`` name the files and the training loss that run must leave.

It refuses to overwrite: an existing recipe folder or a row for the same hparams file is an
error and nothing is written. Errors are one ``error: ...`` line and exit status 2.
"""

import argparse
import csv
import io
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import ruamel.yaml
from ruamel.yaml.comments import CommentedSeq, TaggedScalar

from whisper_finetuning.training.defaults import ADVANCED

PACKAGE_NAME = "whisper-finetuning"
RECIPE_FOLDER_NAME = "whisper_finetune"
TASK = "ASR"
# SpeechBrain's recipe CSV columns (tests/recipes/<Dataset>.csv); a CSV that already exists
# keeps its own header (some have more columns, e.g. performance).
CSV_FIELDS = [
    "Task",
    "Dataset",
    "Script_file",
    "Hparam_file",
    "Data_prep_file",
    "Readme_file",
    "Result_url",
    "HF_repo",
    "test_debug_flags",
    "test_debug_checks",
]
# SpeechBrain's tiny sample, relative to the checkout's root (where recipe tests run).
SAMPLE_AUDIO_FOLDER = "tests/samples/ASR/"
SAMPLE_MANIFEST = "tests/samples/annotation/ASR_train.csv"
DEBUG_EPOCHS = 2
# The training loss the debug run must end under: a random-looking model starts near
# ln(vocabulary) ~ 11 nats, so this only catches a diverging or broken run.
DEBUG_MAX_TRAIN_LOSS = 15
# Settings that keep the debug run small, each added only where the recipe knows the key.
DEBUG_SETTINGS = {
    "batch_size": 2,
    "test_batch_size": 2,
    "grad_accumulation_factor": 1,
    "num_workers": 0,
    "decode_max_tokens": 16,
    "test_beam_size": 1,
    "zero_shot_eval": False,
    "diagnose_after_training": False,
    # The sample is the train, valid and test set at once: overlap is expected here.
    "data_checks": "warn",
}
# What every run of train.py leaves in its output folder: SpeechBrain's experiment files, the
# training log and the test set's WER (named after the sample manifest).
DEBUG_OUTPUT_FILES = [
    "train.py",
    "hyperparams.yaml",
    "env.log",
    "log.txt",
    "train_log.txt",
    f"wer_{Path(SAMPLE_MANIFEST).stem}.txt",
]


@dataclass(frozen=True)
class DatasetRecipe:
    """What the recipe needs to know about one of SpeechBrain's datasets."""

    name: str  # SpeechBrain's folder and CSV name (recipes/<name>, tests/recipes/<name>.csv)
    preparer: str  # the yaml's ``dataset``: a key of whisper_finetuning.data.prepare.PREPARERS
    prepare_script: str  # SpeechBrain's own preparer, in recipes/<name>/
    test_sets: tuple[str, ...]  # the manifests the preparer writes for testing
    group_columns: tuple[str, ...]  # manifest columns reported per value
    language: str | None  # None: a !PLACEHOLDER, given on the command line
    output_folder: str  # !ref value; <model> is the hparams file's name
    debug_whisper_hub: str  # the checkpoint of the debug run on SpeechBrain's English sample
    debug_language: str | None  # the debug run's --language where the yaml has a placeholder


DATASETS = {
    recipe.name: recipe
    for recipe in (
        DatasetRecipe(
            name="LibriSpeech",
            preparer="librispeech",
            prepare_script="librispeech_prepare.py",
            test_sets=("test-clean", "test-other"),
            group_columns=("spk_id", "gender"),
            language="english",
            output_folder="results/LibriSpeech/<model>/<seed>",
            debug_whisper_hub="openai/whisper-tiny.en",
            debug_language=None,
        ),
        DatasetRecipe(
            name="CommonVoice",
            preparer="common_voice",
            prepare_script="common_voice_prepare.py",
            test_sets=("test",),
            group_columns=("accent", "gender"),
            language=None,
            output_folder="results/CommonVoice/<model>_<language>/<seed>",
            debug_whisper_hub="openai/whisper-tiny",
            debug_language="english",
        ),
    )
}


class UpstreamError(Exception):
    """Input that cannot be contributed, or a contribution that would overwrite one."""


# ---------------------------------------------------------------------------- yaml ------


def _yaml():
    """A round-trip YAML that writes HyperPyYAML as people write it: comments and quotes
    kept, ``True``/``False``/``null``, lists indented under their key, no line wrapping."""
    yaml = ruamel.yaml.YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=4, sequence=6, offset=4)
    yaml.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    yaml.representer.add_representer(
        bool,
        lambda rep, value: rep.represent_scalar("tag:yaml.org,2002:bool", str(value)),
    )
    return yaml


def load_complete_hparams(hparams_file: Path):
    """The hyperparameters of ``hparams_file`` as one round-trip mapping (comments kept)."""
    try:
        mapping = _yaml().load(hparams_file.read_text())
    except ruamel.yaml.YAMLError as error:
        raise UpstreamError(f"{hparams_file}: malformed YAML: {_first_line(error)}") from None
    if not isinstance(mapping, dict):
        raise UpstreamError(f"{hparams_file}: expected key: value pairs")
    return mapping


def _first_line(error):
    """The first non-empty line of an error message."""
    return next((line for line in str(error).splitlines() if line.strip()), repr(error))


def _ref(text):
    """A ``!ref`` scalar."""
    return TaggedScalar(text, tag="!ref")


def _flow_list(items):
    """A ``[a, b]`` list."""
    seq = CommentedSeq(items)
    seq.fa.set_flow_style()
    return seq


def _replace_list(hparams, key, items):
    """Set ``hparams[key]`` to a block list of ``items``, keeping the comment lines that
    followed the old list (ruamel keeps them on its last item)."""
    new = CommentedSeq(items)
    old = hparams.get(key)
    if isinstance(old, CommentedSeq) and len(old) and (len(old) - 1) in old.ca.items:
        new.ca.items[len(new) - 1] = old.ca.items[len(old) - 1]
    hparams[key] = new


def set_dataset_values(hparams, recipe: DatasetRecipe, model_name: str):
    """Set ``recipe``'s dataset values in ``hparams`` (a round-trip mapping), in place."""
    hparams["dataset"] = recipe.preparer
    _replace_list(
        hparams, "test_csv", [_ref(f"<manifest_folder>/{name}.csv") for name in recipe.test_sets]
    )
    hparams["group_columns"] = _flow_list(list(recipe.group_columns))
    hparams["language"] = (
        recipe.language if recipe.language else TaggedScalar("", tag="!PLACEHOLDER")
    )
    output_folder = recipe.output_folder.replace("<model>", model_name)
    if "seed" not in hparams:
        output_folder = output_folder.replace("/<seed>", "")
    hparams["output_folder"] = _ref(output_folder)


def dump_hparams(hparams) -> str:
    """The YAML text of ``hparams``, with end-of-line comments after tagged values (which
    ruamel puts on a line of their own) back on their line."""
    stream = io.StringIO()
    _yaml().dump(hparams, stream)
    lines = []
    for line in stream.getvalue().splitlines():
        stripped = line.lstrip()
        column = len(line) - len(stripped)
        if (
            stripped.startswith("#")
            and lines
            and lines[-1].strip()
            and not lines[-1].lstrip().startswith("#")
            and column > len(lines[-1])
        ):
            lines[-1] = lines[-1] + " " * (column - len(lines[-1])) + stripped
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------- paths ------


@dataclass(frozen=True)
class RecipePaths:
    """The files of the contributed recipe, relative to the SpeechBrain checkout's root."""

    folder: Path
    script: Path
    hparams: Path
    prepare: Path
    readme: Path
    requirements: Path
    tests_csv: Path

    @classmethod
    def for_dataset(cls, recipe: DatasetRecipe, hparams_name: str):
        folder = Path("recipes", recipe.name, TASK, RECIPE_FOLDER_NAME)
        return cls(
            folder=folder,
            script=folder / "train.py",
            hparams=folder / "hparams" / hparams_name,
            prepare=folder / recipe.prepare_script,
            readme=folder / "README.md",
            requirements=folder / "extra_requirements.txt",
            tests_csv=Path("tests", "recipes", f"{recipe.name}.csv"),
        )


def find_script(hparams_file: Path, script: Path | None) -> Path:
    """The recipe script: ``script`` if given, else the ``train.py`` next to the ``hparams/``
    folder that holds ``hparams_file`` (or next to the file itself)."""
    if script is not None:
        if not script.is_file():
            raise UpstreamError(f"no such script: {script}")
        return script
    folder = hparams_file.resolve().parent
    candidates = [folder.parent / "train.py"] if folder.name == "hparams" else []
    candidates.append(folder / "train.py")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise UpstreamError(f"no train.py next to {hparams_file}; name the recipe with --script")


def check_checkout(speechbrain: Path):
    """Fail unless ``speechbrain`` looks like a SpeechBrain checkout (recipes/, tests/recipes/)."""
    if not (speechbrain / "recipes").is_dir() or not (speechbrain / "tests/recipes").is_dir():
        raise UpstreamError(
            f"{speechbrain} is not a SpeechBrain checkout (no recipes/ and tests/recipes/)"
        )


# ---------------------------------------------------------------------- CSV row ------


def debug_flags(hparams, recipe: DatasetRecipe) -> str:
    """Flags that run the recipe on SpeechBrain's tiny sample, from the checkout's root."""
    flags = {
        "data_folder": SAMPLE_AUDIO_FOLDER,
        "train_csv": SAMPLE_MANIFEST,
        "valid_csv": SAMPLE_MANIFEST,
        "test_csv": f"[{SAMPLE_MANIFEST}]",
        "number_of_epochs": DEBUG_EPOCHS,
        "skip_prep": True,
        "whisper_hub": recipe.debug_whisper_hub,
    }
    if recipe.language is None and recipe.debug_language:
        flags["language"] = recipe.debug_language
    known = {**ADVANCED, **hparams}  # advanced settings are accepted without the yaml naming them
    flags.update({key: value for key, value in DEBUG_SETTINGS.items() if key in known})
    return " ".join(f"--{key}={value}" for key, value in flags.items())


def debug_checks() -> str:
    """What the debug run must leave: its files and a finite, non-diverging training loss."""
    return (
        f"file_exists=[{','.join(DEBUG_OUTPUT_FILES)}] "
        f"performance_check=[train_log.txt, train loss, <{DEBUG_MAX_TRAIN_LOSS}, "
        f"epoch: {DEBUG_EPOCHS}]"
    )


def read_csv_rows(csv_path: Path) -> tuple[list[str], list[dict]]:
    """The header and rows of a recipe CSV (SpeechBrain's header when it does not exist)."""
    if not csv_path.is_file() or not csv_path.read_text().strip():
        return list(CSV_FIELDS), []
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f, skipinitialspace=True)
        rows = list(reader)
        return list(reader.fieldnames or CSV_FIELDS), rows


def append_csv_row(csv_path: Path, header: list[str], row: dict):
    """Append ``row`` to ``csv_path`` (writing ``header`` first when the file is new)."""
    new = not csv_path.is_file() or not csv_path.read_text().strip()
    if not new and not csv_path.read_text().endswith("\n"):
        with open(csv_path, "a", newline="") as f:
            f.write("\n")
    with open(csv_path, "w" if new else "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, lineterminator="\n")
        if new:
            writer.writeheader()
        writer.writerow({field: row.get(field, "") for field in header})


# ------------------------------------------------------------------------ README ------


def hf_url(repo: str | None) -> str:
    """A Hugging Face model URL from a repository id or URL ('' when none)."""
    if not repo:
        return ""
    return repo if repo.startswith(("http://", "https://")) else f"https://huggingface.co/{repo}"


def readme_text(
    recipe: DatasetRecipe, paths: RecipePaths, result_url: str, hf_repo: str, own_prepare: bool
):
    """The recipe's README: what it is, the command, a results table and the URLs
    (``own_prepare``: the prepare script is SpeechBrain's own)."""
    prepare_note = (
        f"`{paths.prepare.name}` is SpeechBrain's preparer of the same corpus"
        if own_prepare
        else f"`{paths.prepare.name}` runs that preparer on its own"
    )
    hparams_rel = paths.hparams.relative_to(paths.folder)
    language = " --language=<language, e.g. german>" if recipe.language is None else ""
    tests = ", ".join(recipe.test_sets)
    results_cell = f"[results]({result_url})" if result_url else "-"
    model_cell = f"[model]({hf_repo})" if hf_repo else "-"
    links = [f"- Training results (logs, checkpoints): {result_url}" if result_url else ""]
    links.append(f"- Fine-tuned model on Hugging Face: {hf_repo}" if hf_repo else "")
    links_text = "\n".join(line for line in links if line) or "- (none yet)"
    return f"""# {recipe.name}: fine-tuning Whisper (whisper-finetuning)

Fine-tune a pretrained Whisper checkpoint on {recipe.name} with SpeechBrain, keeping the
checkpoint with the best validation score, then decode the test sets ({tests}) with it.
Training, decoding and scoring come from the `{PACKAGE_NAME}` package; `train.py` prepares
the data through its `{recipe.preparer}` preparer ({prepare_note}).

## Installing the extra dependencies

```
pip install -r extra_requirements.txt
```

## How to run

```
python train.py {hparams_rel} --data_folder=/path/to/{recipe.name}{language}
```

Another Whisper size: add `--whisper_hub=openai/whisper-<size>` (and a batch size that fits).

## Results

| Hyperparameters | Test sets | WER | Training results | Model |
|---|---|---|---|---|
| {hparams_rel.name} | {tests} | see the results | {results_cell} | {model_cell} |

The WER of each test set is in `wer_<test set>.txt` of the output folder.

## Links

{links_text}

## About SpeechBrain

- Website: https://speechbrain.github.io/
- Code: https://github.com/speechbrain/speechbrain/
"""


def thin_prepare_script(recipe: DatasetRecipe) -> str:
    """A prepare script that calls this package's preparer of ``recipe``'s corpus."""
    function = Path(recipe.prepare_script).stem
    return f'''"""Prepare {recipe.name} manifests (train, valid and test CSVs) with {PACKAGE_NAME}'s
preparer: what train.py runs unless skip_prep is True.

    python {recipe.prepare_script} DATA_FOLDER SAVE_FOLDER
"""

import sys

from whisper_finetuning.data.prepare import prepare


def {function}(data_folder, save_folder, **options):
    """Write the manifests of the corpus in ``data_folder`` into ``save_folder``."""
    return prepare("{recipe.preparer}", data_folder, save_folder, **options)


if __name__ == "__main__":
    {function}(sys.argv[1], sys.argv[2])
'''


# --------------------------------------------------------------------------- main ------


def contribute(
    hparams_file: Path,
    dataset: str,
    speechbrain: Path,
    result_url: str = "",
    hf_repo: str = "",
    script: Path | None = None,
) -> RecipePaths:
    """Write the recipe folder into the ``speechbrain`` checkout and append its CSV row.

    Everything is checked before anything is written; returns the written paths (relative
    to the checkout).
    """
    recipe = next((r for name, r in DATASETS.items() if name.lower() == dataset.lower()), None)
    if recipe is None:
        raise UpstreamError(f"unknown dataset '{dataset}'; choose one of: {', '.join(DATASETS)}")
    if not hparams_file.is_file():
        raise UpstreamError(f"hyperparameter file not found: {hparams_file}")
    check_checkout(speechbrain)
    script_file = find_script(hparams_file, script)
    paths = RecipePaths.for_dataset(recipe, hparams_file.name)
    if (speechbrain / paths.folder).exists():
        raise UpstreamError(f"{speechbrain / paths.folder} exists; refusing to overwrite it")
    header, rows = read_csv_rows(speechbrain / paths.tests_csv)
    missing = [field for field in CSV_FIELDS if field not in header]
    if missing:
        raise UpstreamError(f"{speechbrain / paths.tests_csv} lacks the columns {missing}")
    if any(row.get("Hparam_file", "").strip() == str(paths.hparams) for row in rows):
        raise UpstreamError(
            f"{speechbrain / paths.tests_csv} already has a row for {paths.hparams}; "
            "refusing to add another"
        )
    hparams = load_complete_hparams(hparams_file)
    set_dataset_values(hparams, recipe, hparams_file.stem)
    hparams_text = dump_hparams(hparams)
    hf_link = hf_url(hf_repo)

    speechbrain_prepare = Path("recipes", recipe.name, recipe.prepare_script)
    (speechbrain / paths.hparams).parent.mkdir(parents=True)
    shutil.copy2(script_file, speechbrain / paths.script)
    (speechbrain / paths.hparams).write_text(hparams_text)
    own_prepare = (speechbrain / speechbrain_prepare).is_file()
    if own_prepare:  # SpeechBrain's convention: a link to the dataset's preparer
        os.symlink(os.path.relpath(speechbrain_prepare, paths.folder), speechbrain / paths.prepare)
    else:
        (speechbrain / paths.prepare).write_text(thin_prepare_script(recipe))
    (speechbrain / paths.readme).write_text(
        readme_text(recipe, paths, result_url, hf_link, own_prepare)
    )
    (speechbrain / paths.requirements).write_text(
        f"# The training, decoding and scoring library of this recipe.\n{PACKAGE_NAME}\n"
    )
    row = {
        "Task": TASK,
        "Dataset": recipe.name,
        "Script_file": str(paths.script),
        "Hparam_file": str(paths.hparams),
        "Data_prep_file": str(paths.prepare),
        "Readme_file": str(paths.readme),
        "Result_url": result_url,
        "HF_repo": hf_link,
        "test_debug_flags": debug_flags(hparams, recipe),
        "test_debug_checks": debug_checks(),
    }
    append_csv_row(speechbrain / paths.tests_csv, header, row)
    return paths


class _OneLineErrorParser(argparse.ArgumentParser):
    """Argument errors as one ``error: ...`` line and exit status 2."""

    def error(self, message):
        self.exit(2, f"error: {message}\n")


def main(argv=None) -> int:
    """Parse the command line, contribute the recipe; 0 on success, 2 on an error."""
    parser = _OneLineErrorParser(
        prog="python -m whisper_finetuning.upstream",
        description="Write this recipe into a SpeechBrain checkout, with its recipe-test row.",
    )
    parser.add_argument("--hparams", type=Path, required=True, help="the recipe's yaml")
    parser.add_argument(
        "--dataset", required=True, help=f"SpeechBrain's dataset: {', '.join(DATASETS)}"
    )
    parser.add_argument("--speechbrain", type=Path, required=True, help="the SpeechBrain checkout")
    parser.add_argument("--result_url", default="", help="where the training results are")
    parser.add_argument("--hf_repo", default="", help="the fine-tuned model's HF repository")
    parser.add_argument(
        "--script", type=Path, default=None, help="the recipe script (default: next to hparams/)"
    )
    args = parser.parse_args(argv)
    try:
        paths = contribute(
            args.hparams,
            args.dataset,
            args.speechbrain,
            result_url=args.result_url,
            hf_repo=args.hf_repo,
            script=args.script,
        )
    except (UpstreamError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.speechbrain / paths.folder} and a row of {paths.tests_csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
