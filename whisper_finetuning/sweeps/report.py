"""``sweep.json`` and ``sweep.md``: every trial, the chosen one's test scores, how far it is
from the others in intervals (the winner's curse), and which trials' curves show loss falling
while the metric stalls (seed 001's warning to watch every candidate's curves)."""

import json
from pathlib import Path

from optuna.trial import TrialState

from whisper_finetuning.analysis.comparison.pairs import BLOCK, paired_difference
from whisper_finetuning.analysis.diagnosis import Unavailable, checks, records
from whisper_finetuning.common.files import write_json, write_text
from whisper_finetuning.sweeps import trials
from whisper_finetuning.sweeps.study import ERROR

JSON_FILE, MARKDOWN_FILE = "sweep.json", "sweep.md"


def warning_sign(folder):
    """Seed 001's warning sign in a trial's curves, or None: the valid loss still falling
    after the epoch its selection metric was best (the diagnosis's own best-epoch checks)."""
    run = records.load(folder)
    try:
        loss_epoch, _ = checks.best_epochs(run)
        metric, metric_epoch = checks.best_metric_epoch(run)
    except Unavailable:
        return None
    if loss_epoch is None or loss_epoch <= metric_epoch:
        return None
    return (
        f"valid loss kept falling until epoch {loss_epoch} while {metric} was best at epoch "
        f"{metric_epoch}: loss and metric disagree (python -m whisper_finetuning.diagnose)"
    )


def valid_utterances(folder, epoch):
    path = Path(folder) / "valid" / f"utterances_epoch{epoch}.jsonl"
    return {u["id"]: u for u in map(json.loads, path.read_text().splitlines())}


def winners_curse(best, others, metric):
    """The best trial minus each other finished trial on the same valid utterances, at each
    one's selected epoch, with a paired bootstrap interval."""
    chosen = valid_utterances(best["folder"], best["selected_epoch"])
    ids = sorted(chosen)
    block = BLOCK if ids and BLOCK in chosen[ids[0]] else None
    rows = []
    for other in others:
        theirs = valid_utterances(other["folder"], other["selected_epoch"])
        if sorted(theirs) != ids:
            continue  # another valid set: not comparable
        difference = paired_difference(
            [chosen[i] for i in ids], [theirs[i] for i in ids], metric, block
        )
        lo, hi = difference["ci95"]
        within = lo is None or lo <= 0 <= hi
        rows.append({"trial": other["number"], **difference, "within_noise": within})
    return rows


def trial_rows(spec, study):
    rows = []
    for trial in study.get_trials(deepcopy=False):
        if trial.state == TrialState.WAITING:
            continue
        folder = trial.user_attrs.get("folder", str(trials.trial_folder(spec, trial.number)))
        row = {
            "number": trial.number,
            "state": trial.state.name,
            "params": trial.params,
            "value": trial.value,
            "folder": folder,
            "selected_epoch": None,
            "warning": None,
            "error": trial.user_attrs.get(ERROR),  # train.py's, when the trial failed
        }
        if trial.state == TrialState.COMPLETE:
            row["selected_epoch"] = trials.selected_value(folder, spec.selection_metric)[0]
            row["warning"] = warning_sign(folder)
        rows.append(row)
    return rows


def build(spec, study, test_summaries):
    """The ``sweep.json`` dict; ``test_summaries``: the chosen trial's test summaries."""
    rows = trial_rows(spec, study)
    best = next(r for r in rows if r["number"] == study.best_trial.number)
    others = [r for r in rows if r["state"] == "COMPLETE" and r is not best]
    curse = winners_curse(best, others, spec.selection_metric)
    return {
        "study_name": spec.study_name,
        "storage": spec.storage,
        "sampler": spec.sampler,
        "selection_metric": spec.selection_metric,
        "n_trials": spec.n_trials,
        "trials": rows,
        "best": {**best, "test": test_summaries},
        "winners_curse": curse,
        "n_within_noise": sum(r["within_noise"] for r in curse),
    }


def _number(value):
    return "-" if value is None else f"{value:.2f}"


def markdown(result):
    metric = result["selection_metric"]
    best = result["best"]
    lines = [
        f"# Sweep {result['study_name']}",
        "",
        f"{result['sampler']} sampler, {result['n_trials']} trials, chosen by valid {metric} "
        f"only (storage {result['storage']}). The test sets were decoded for the chosen trial "
        "alone.",
        "",
        f"| trial | state | {', '.join(best['params'])} | valid {metric} | epoch "
        "| warning or error |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["trials"]:
        values = ", ".join(str(v) for v in row["params"].values())
        lines.append(
            f"| {row['number']} | {row['state']} | {values} | {_number(row['value'])} "
            f"| {row['selected_epoch'] or '-'} | {row['warning'] or row['error'] or ''} |"
        )
    lines += ["", f"## chosen: trial {best['number']} ({best['folder']})", ""]
    for name, summary in best["test"].items():
        scores = ", ".join(
            f"{m} {_number(summary[m.lower()])} (95% CI {_number(summary[m.lower() + '_ci95'][0])}"
            f"-{_number(summary[m.lower() + '_ci95'][1])})"
            for m in ("WER", "CER", "BLEU", "chrF")
            if summary.get(m.lower() + "_ci95")
        )
        lines.append(f"- test set {name}: {scores}, n={summary['n_utterances']}")
    curse = result["winners_curse"]
    lines += [
        "",
        "## the winner's curse",
        "",
        f"The best of several noisy valid scores is optimistic: its test score above is the "
        f"honest estimate. {result['n_within_noise']} of {len(curse)} other finished trials are "
        f"within noise of the chosen one on valid {metric} (paired bootstrap, 95% interval "
        "of chosen minus other contains 0): among those, the choice is a coin toss.",
        "",
        f"| other trial | valid {metric} difference (chosen - other) | 95% CI | within noise |",
        "|---|---|---|---|",
    ]
    for row in curse:
        lo, hi = row["ci95"]
        interval = "-" if lo is None else f"{lo:.2f} to {hi:.2f}"
        lines.append(
            f"| {row['trial']} | {_number(row['difference'])} | {interval} "
            f"| {'yes' if row['within_noise'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def write(result, folder):
    write_json(Path(folder) / JSON_FILE, result)
    write_text(Path(folder) / MARKDOWN_FILE, markdown(result))
    return Path(folder) / MARKDOWN_FILE
