"""What a comparison reads from each run folder, and the refusals when runs cannot be compared.

A run folder (train.py's ``output_folder``) must be finished (``save/fit_done.json``) and hold
each compared test set's ``utterances_NAME.jsonl`` and ``summary_NAME.json``, written by its
selected checkpoint. The valid curves come from ``epochs.jsonl``.
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

    def summary(self, name):
        """The test set ``name``'s summary (headline, intervals, selected epoch)."""
        return read_json(self._decoded(name, "summary", "json"))

    def test_sets(self):
        """The test sets run.json names (manifest stems), in its order."""
        return [Path(csv_path).stem for csv_path in read_json(self.folder / RUN_FILE)["test_csv"]]

    def _decoded(self, name, kind, extension):
        path = self.folder / f"{kind}_{name}.{extension}"
        if not path.exists():
            raise RecipeError(
                f"{self.folder} has no {path.name}: its selected checkpoint did not decode "
                f"test set '{name}' (decoding here is not supported; add the set to the run's "
                f"test_csv)"
            )
        return path


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


def test_set_names(runs, test_csv=()):
    """The test sets to compare: the ``test_csv`` manifests' stems, else those of the first
    run; refuses when the runs were not decoded on the same sets."""
    if test_csv:
        return [Path(p).stem for p in test_csv]
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
    for run in runs:
        by_id = {u["id"]: u for u in run.utterances(name)}
        unscorable = set(run.summary(name).get("unscorable_ids", []))
        if csv_path is not None and set(by_id) | unscorable != manifest_ids(csv_path):
            raise RecipeError(
                f"{run.label}'s test set '{name}' holds other utterances than {csv_path}"
            )
        decoded[run.label] = by_id
    reference = runs[0].label
    references = {i: u["ref"] for i, u in decoded[reference].items()}
    for label, by_id in decoded.items():
        if {i: u["ref"] for i, u in by_id.items()} != references:
            raise RecipeError(
                f"test set '{name}' differs between {reference} and {label} "
                f"(other utterances or references)"
            )
    return decoded
