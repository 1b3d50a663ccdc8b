"""What a comparison reads from each run folder, and the refusals when runs cannot be compared.

A run folder (train.py's ``output_folder``) must be finished (``save/fit_done.json``); each
compared test set's ``utterances_NAME.jsonl`` and ``summary_NAME.json`` are its selected
checkpoint's (``decoding`` writes those it lacks). The valid curves come from ``epochs.jsonl``.
"""

import csv
from dataclasses import dataclass
from pathlib import Path

from whisper_finetuning.analysis.diagnosis.records import (
    EPOCHS_FILE,
    RUN_FILE,
    last_record_per_key,
    read_json,
    read_jsonl,
)
from whisper_finetuning.common.errors import RecipeError

FIT_DONE = Path("save") / "fit_done.json"  # training/runs.py writes it when fit ends
DECODED_FILES = (("utterances", "jsonl"), ("summary", "json"))  # per test set, by the recipe


@dataclass
class Run:
    """One finished run: its folder, label, selection metric and valid curve."""

    folder: Path
    label: str
    selection_metric: str
    epochs: list  # epochs.jsonl records, the last one logged per epoch

    def utterances(self, name):
        """The test set ``name``'s scored utterances by the selected checkpoint."""
        return read_jsonl(self._decoded(name, "utterances", "jsonl"), [])

    def nonspeech(self, name):
        """The test set ``name``'s non-speech rows (empty transcripts) as decoded: ``{id:
        words written}``; empty when it has none."""
        path = self._path(name, "nonspeech", "jsonl")
        rows = read_jsonl(path, []) if path.exists() else []
        return {row["id"]: row["hyp_words"] for row in rows}

    def summary(self, name):
        """The test set ``name``'s summary (headline, intervals, selected epoch)."""
        return read_json(self._decoded(name, "summary", "json"))

    def test_sets(self):
        """The test sets run.json names (manifest stems), in its order."""
        return list(self.test_manifests())

    def test_manifests(self):
        """``{name: manifest}`` of the test sets run.json names, in its order."""
        info = read_json(self.folder / RUN_FILE)
        return {Path(csv_path).stem: csv_path for csv_path in info["test_csv"]}

    def has_decoded(self, name):
        """Whether the selected checkpoint's utterances and summary of test set ``name`` are
        in the folder."""
        return all(self._path(name, kind, ext).exists() for kind, ext in DECODED_FILES)

    def _decoded(self, name, kind, extension):
        path = self._path(name, kind, extension)
        if not path.exists():
            raise RecipeError(
                f"{self.folder} has no {path.name}: its selected checkpoint did not decode "
                f"test set '{name}' (python -m whisper_finetuning.compare decodes it)"
            )
        return path

    def _path(self, name, kind, extension):
        return self.folder / f"{kind}_{name}.{extension}"


def load_runs(folders):
    """The runs in ``folders``; refuses fewer than two, a folder given twice, a folder that is
    no run and an unfinished run."""
    if len(folders) < 2:
        raise RecipeError(f"a comparison needs at least two runs, got {len(folders)}")
    resolved = [Path(f).resolve() for f in folders]
    if len(set(resolved)) < len(resolved):
        raise RecipeError("a run folder is given twice")
    names = [p.name for p in resolved]
    runs = []
    for given, folder in zip(folders, resolved, strict=True):
        if not (folder / RUN_FILE).exists():
            raise RecipeError(f"{given} is not a train.py run folder (no {RUN_FILE})")
        if not (folder / FIT_DONE).exists():
            raise RecipeError(f"{given} is unfinished: training has not ended (no {FIT_DONE})")
        info = read_json(folder / RUN_FILE)
        epochs = []
        if (folder / EPOCHS_FILE).exists():
            epochs = last_record_per_key(read_jsonl(folder / EPOCHS_FILE, []), lambda r: r["epoch"])
        label = folder.name if names.count(folder.name) == 1 else str(given)
        runs.append(Run(folder, label, info.get("selection_metric", "WER"), epochs))
    return runs


def manifest_ids(csv_path):
    """The utterance IDs of a manifest (its ``ID`` column)."""
    with open(csv_path, newline="") as f:
        return {row["ID"] for row in csv.DictReader(f)}


def test_manifests(runs, test_csv=()):
    """``{name: manifest}`` of the test sets to compare: the ``test_csv`` manifests, else every
    test set a run names in run.json (a run not decoded on one is decoded by ``decoding``);
    refuses a given manifest that is missing, two manifests of one name, and runs whose
    run.json records other contents for a test set of the same name."""
    if test_csv:
        manifests = {}
        for csv_path in test_csv:
            if not Path(csv_path).is_file():
                raise RecipeError(f"test manifest {csv_path} not found")
            name = Path(csv_path).stem
            if name in manifests:
                raise RecipeError(f"two test manifests are named '{name}': rename one")
            manifests[name] = str(Path(csv_path).resolve())
        return manifests
    manifests, recorded = {}, {}
    for run in runs:
        hashes = read_json(run.folder / RUN_FILE).get("manifest_sha256", {})
        for name, csv_path in run.test_manifests().items():
            manifests.setdefault(name, csv_path)
            if hashes.get(name) is None:
                continue
            first = recorded.setdefault(name, (run.label, hashes[name]))
            if first[1] != hashes[name]:
                raise RecipeError(
                    f"the runs' test sets differ: {first[0]} and {run.label} were tested on "
                    f"other manifests named '{name}' (run.json manifest_sha256)"
                )
    return manifests


def test_set_names(runs):
    """The test sets the runs name in run.json (those of the first run); refuses when the runs
    name other sets (a review does not decode)."""
    first = runs[0].test_sets()
    for run in runs[1:]:
        if run.test_sets() != first:
            raise RecipeError(
                f"the runs' test sets differ: {runs[0].label} has {', '.join(first)}, "
                f"{run.label} has {', '.join(run.test_sets())}"
            )
    return first


def same_utterances(runs, name, csv_path=None):
    """Each run's scored utterances of test set ``name`` as ``{label: {id: utterance}}``;
    refuses when the runs scored other utterances or references (or, with ``csv_path``, not
    that manifest's)."""
    decoded = {}
    nonspeech = {run.label: set(run.nonspeech(name)) for run in runs}
    for run in runs:
        by_id = {u["id"]: u for u in run.utterances(name)}
        unscorable = set(run.summary(name).get("unscorable_ids", []))
        listed = set(by_id) | unscorable | nonspeech[run.label]
        if csv_path is not None and listed != manifest_ids(csv_path):
            raise RecipeError(
                f"{run.label}'s test set '{name}' holds other utterances than {csv_path}"
            )
        decoded[run.label] = by_id
    reference = runs[0].label
    references = {i: u["ref"] for i, u in decoded[reference].items()}
    for label, by_id in decoded.items():
        same_nonspeech = nonspeech[label] == nonspeech[reference]
        if {i: u["ref"] for i, u in by_id.items()} != references or not same_nonspeech:
            raise RecipeError(
                f"test set '{name}' differs between {reference} and {label} "
                f"(other utterances or references)"
            )
    return decoded
