"""Read a training run into one shape, whichever tool produced it.

Three layouts are understood: this recipe's experiment folder (``epochs.jsonl``, ``log/``,
``valid/``, ``run.json``), a transformers Trainer's ``trainer_state.json`` and a SpeechBrain
``train_log.txt``. Every reader fills a ``RunRecords``; what a layout does not log stays
empty, and the analyses say what they cannot do without it.
"""

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

TRAINER_STATE = "trainer_state.json"
TRAIN_LOG = "train_log.txt"
EPOCHS_FILE = "epochs.jsonl"
STEPS_FILE = Path("log") / "steps.jsonl"
TRAIN_UTTERANCES_FILE = Path("log") / "train_utterances.jsonl"
RUN_FILE = "run.json"
VALID_UTTERANCES = re.compile(r"utterances_epoch(\d+)\.jsonl$")
# SpeechBrain FileTrainLogger: "epoch: 1, lr: 5.16e-05 - train loss: 1.90 - valid loss: ..."
LOG_ITEM = re.compile(r"^\s*(.+?)\s*:\s*([-+0-9.eEinfaINF]+)\s*$")
STAGE_KEYS = {
    "train": {"loss": "train_loss"},
    "valid": {"loss": "loss", "wer": "WER", "cer": "CER"},
}


@dataclass
class RunRecords:
    """Everything an analysis may use; empty containers mean "not logged"."""

    source: str  # "experiment", "trainer_state" or "train_log"
    files: list = field(default_factory=list)  # the files read
    epochs: list = field(default_factory=list)  # one dict per validation, keys as epochs.jsonl
    steps: list = field(default_factory=list)  # one dict per logged step, keys as steps.jsonl
    train_utterances: list = field(default_factory=list)
    valid_utterances: dict = field(default_factory=dict)  # epoch -> list of utterance dicts
    run_config: dict = field(default_factory=dict)
    train_transcripts: list = field(default_factory=list)  # for the leakage check
    notes: list = field(default_factory=list)  # facts about the logs a reader should know
    kept_checkpoint: dict = field(default_factory=dict)  # what the foreign trainer kept


def read_jsonl(path, notes):
    """JSON lines of ``path``; a line cut short by a crash is skipped and noted."""
    records = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            notes.append(f"{path}: line {number} is not JSON and was skipped")
    return records


def read_json(path):
    """A JSON file; a ``ValueError`` naming the file when it is not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None


def last_record_per_key(rows, key):
    """One record per key, the last one logged: a resumed epoch re-logs what followed its
    checkpoint. The order of first appearance is kept."""
    latest = {}
    for row in rows:
        latest[key(row)] = row
    return list(latest.values())


def load(folder):
    """The run in ``folder``: this recipe's layout first, then a trainer_state.json, then a
    train_log.txt. Raises ``FileNotFoundError`` when none is there."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    if (folder / EPOCHS_FILE).exists() or (folder / STEPS_FILE).exists():
        return _load_experiment(folder)
    state = _find_trainer_state(folder)
    if state is not None:
        return load_trainer_state(state)
    if (folder / TRAIN_LOG).exists():
        return load_train_log(folder / TRAIN_LOG)
    raise FileNotFoundError(
        f"{folder} has no {EPOCHS_FILE}, {TRAINER_STATE} or {TRAIN_LOG}: nothing to diagnose"
    )


def _load_experiment(folder):
    """This recipe's experiment folder (see CONTRACTS: epochs, steps, utterances, run.json)."""
    records = RunRecords("experiment")
    notes = records.notes
    if (folder / EPOCHS_FILE).exists():
        records.epochs = read_jsonl(folder / EPOCHS_FILE, notes)
        records.files.append(EPOCHS_FILE)
    elif (folder / TRAIN_LOG).exists():
        records.epochs = load_train_log(folder / TRAIN_LOG).epochs
        records.files.append(TRAIN_LOG)
    logs = (
        (STEPS_FILE, "steps", lambda r: r.get("step")),
        (TRAIN_UTTERANCES_FILE, "train_utterances", lambda r: (r.get("epoch"), r.get("id"))),
    )
    for name, attribute, key in logs:
        if (folder / name).exists():
            setattr(records, attribute, last_record_per_key(read_jsonl(folder / name, notes), key))
            records.files.append(str(name))
    for path in sorted((folder / "valid").glob("utterances_epoch*.jsonl")):
        epoch = int(VALID_UTTERANCES.search(path.name).group(1))
        records.valid_utterances[epoch] = read_jsonl(path, notes)
        records.files.append(f"valid/{path.name}")
    if (folder / RUN_FILE).exists():
        records.run_config = read_json(folder / RUN_FILE)
        records.files.append(RUN_FILE)
    records.train_transcripts = _train_transcripts(folder, records)
    return records


def _train_transcripts(folder, records):
    """Training transcripts: the logged references, else the train manifest's ``wrd``."""
    if records.train_utterances:
        return sorted({u["ref"] for u in records.train_utterances if u.get("ref") is not None})
    candidates = [records.run_config.get("train_csv"), folder / "manifests" / "train.csv"]
    for manifest in candidates:
        if manifest and Path(manifest).exists():
            with open(manifest, newline="") as f:
                rows = list(csv.DictReader(f))
            if rows and "wrd" in rows[0]:
                records.files.append(str(manifest))
                return [row["wrd"] for row in rows]
    return []


def _find_trainer_state(folder):
    """``folder/trainer_state.json``, else the one of the latest ``checkpoint-N`` inside."""
    if (folder / TRAINER_STATE).exists():
        return folder / TRAINER_STATE
    found = sorted(
        folder.glob(f"checkpoint-*/{TRAINER_STATE}"),
        key=lambda p: int(p.parent.name.split("-")[-1]) if p.parent.name[11:].isdigit() else -1,
    )
    return found[-1] if found else None


def _epoch_index(epoch):
    """The 1-based epoch a fractional Trainer epoch (0.5, 1.0, ...) falls in."""
    return max(1, math.ceil(round(epoch, 6)))


def load_trainer_state(path):
    """A transformers Trainer run: train-loss entries become steps, eval entries epochs.

    The Trainer logs ``loss`` as the mean over the last ``logging_steps`` steps and
    ``epoch`` as a fraction; evaluations carry ``eval_loss`` and ``eval_wer`` (as the
    metric returned it: a fraction or a percentage).
    """
    path = Path(path)
    state = read_json(path)
    records = RunRecords("trainer_state", files=[str(path)])
    for entry in state.get("log_history", []):
        if "loss" in entry and "step" in entry and "epoch" in entry:
            epoch = _epoch_index(entry["epoch"])
            records.steps.append(
                {
                    "epoch": epoch,
                    "step": entry["step"],
                    "position": round(entry["epoch"] - (epoch - 1), 6),
                    "loss": entry["loss"],
                    "lr": entry.get("learning_rate"),
                }
            )
        elif "eval_loss" in entry:
            epoch = entry.get("epoch")
            if epoch is not None and float(epoch).is_integer():
                epoch = int(epoch)
            record = {"epoch": epoch, "step": entry.get("step"), "loss": entry["eval_loss"]}
            if "eval_wer" in entry:
                record["WER"] = entry["eval_wer"]
            if "eval_cer" in entry:
                record["CER"] = entry["eval_cer"]
            records.epochs.append(record)
    if state.get("best_model_checkpoint"):
        records.kept_checkpoint = {
            "checkpoint": state["best_model_checkpoint"],
            "best_metric": state.get("best_metric"),
        }
    records.notes.append(
        "the Trainer's logged loss is the mean over each logging interval "
        f"(logging_steps={state.get('logging_steps')}), not one batch's loss"
    )
    return records


def parse_train_log_line(line):
    """One SpeechBrain FileTrainLogger line as ``{"epoch", "lr", "train_loss", "loss", "WER",
    ...}``; ``None`` for lines that are not an epoch's stats (e.g. ``test set: ...``)."""
    sections = [s.strip() for s in line.strip().split(" - ")]
    if not sections or not sections[0].startswith("epoch:"):
        return None
    record = {}
    for item in sections[0].split(","):
        match = LOG_ITEM.match(item)
        if match:
            record[match.group(1).strip().replace(" ", "_")] = float(match.group(2))
    for section in sections[1:]:
        for item in section.split(","):
            match = LOG_ITEM.match(item)
            if not match:
                continue
            stage, _, name = match.group(1).strip().partition(" ")
            key = STAGE_KEYS.get(stage, {}).get(name.lower(), f"{stage}_{name}")
            record[key] = float(match.group(2))
    if "epoch" not in record:
        return None
    record["epoch"] = int(record["epoch"])
    return record


def load_train_log(path):
    """A SpeechBrain ``train_log.txt``: one record per epoch (the last line of an epoch wins,
    as a resumed run logs it again)."""
    path = Path(path)
    by_epoch = {}
    for line in path.read_text().splitlines():
        record = parse_train_log_line(line)
        if record is not None:
            by_epoch[record["epoch"]] = record
    records = RunRecords("train_log", files=[path.name])
    records.epochs = [by_epoch[e] for e in sorted(by_epoch)]
    records.notes.append(
        "train_log.txt gives one train loss per epoch, the epoch mean of the batch losses in "
        "SpeechBrain, so it lags the loss at the epoch's end"
    )
    return records
