"""``comparison.json`` and ``comparison.md``: the runs' scores with 95% intervals, every pair's
paired difference and verdict, overall and per group, and the valid curves' plot."""

import itertools
import os

from scipy.stats import binomtest

from whisper_finetuning.analysis.comparison import decoding, pairs, runs
from whisper_finetuning.analysis.comparison.plots import valid_curves
from whisper_finetuning.analysis.diagnosis.stats import BOOTSTRAP_SAMPLES
from whisper_finetuning.common.files import write_json, write_text
from whisper_finetuning.evaluation.selection import SELECTION_METRICS

JSON_FILE, MARKDOWN_FILE, CURVES_FILE = "comparison.json", "comparison.md", "comparison_curves.png"


def decision_metric(compared):
    """The metric the verdicts use: the runs' common selection metric, else WER."""
    chosen = {run.selection_metric for run in compared}
    return chosen.pop() if len(chosen) == 1 else "WER"


def curve(run, metric_name):
    """A run's valid loss and ``metric_name`` per epoch."""
    return [
        {"epoch": r["epoch"], "loss": r.get("loss"), metric_name: r.get(metric_name)}
        for r in run.epochs
    ]


def build(folders, test_csv=()):
    """The comparison of the runs in ``folders`` as the ``comparison.json`` dict; a run not
    decoded on a compared test set is decoded first (``decoding``)."""
    compared = runs.load_runs(folders)
    manifests = runs.test_manifests(compared, test_csv)
    decoding.decode_missing(compared, manifests)
    decide = decision_metric(compared)
    group_columns = list(
        dict.fromkeys(
            c
            for run in compared
            for c in runs.read_json(run.folder / "run.json").get("group_columns", [])
        )
    )
    result = {
        "runs": [
            {"label": r.label, "folder": str(r.folder), "selection_metric": r.selection_metric}
            for r in compared
        ],
        "decision_metric": decide,
        "alpha": pairs.ALPHA,
        "bootstrap_samples": BOOTSTRAP_SAMPLES,
        "curves": {r.label: curve(r, decide) for r in compared},
        "test_sets": {},
    }
    for name, csv_path in manifests.items():
        # A given manifest must hold the decoded utterances; the runs' own may have moved.
        decoded = runs.same_utterances(compared, name, csv_path if test_csv else None)
        utterances = [u for by_id in decoded.values() for u in by_id.values()]
        pairs.add_speakers(utterances, csv_path)  # blocks: the manifest's speakers
        scores = {}
        for run in compared:
            summary = run.summary(name)
            scores[run.label] = {
                "selected_epoch": summary.get("epoch"),
                "n_utterances": summary["n_utterances"],
                **{
                    key: summary[key]
                    for m in SELECTION_METRICS
                    for key in (m.lower(), f"{m.lower()}_ci95")
                },
            }
        result["test_sets"][name] = {
            "scores": scores,
            **pairs.compare(decoded, group_columns, decide),
        }
        written = {run.label: run.nonspeech(name) for run in compared}
        if any(written.values()):
            result["test_sets"][name]["nonspeech"] = nonspeech_pairs(written)
    return result


def nonspeech_pairs(written):
    """Words on the non-speech rows, pair by pair (``written``: ``{label: {id: words}}``, the
    same rows for every run): the rows where only one run wrote words and the exact McNemar
    test on them (two-sided binomial, p 0.5)."""
    rows = sorted(next(iter(written.values())))
    result = {
        "n": len(rows),
        "with_words": {label: sum(words[i] > 0 for i in rows) for label, words in written.items()},
        "pairs": [],
    }
    for a, b in itertools.combinations(written, 2):
        only_a = sum(written[a][i] > 0 and written[b][i] == 0 for i in rows)
        only_b = sum(written[b][i] > 0 and written[a][i] == 0 for i in rows)
        p = binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else 1.0
        result["pairs"].append({"a": a, "b": b, "only_a": only_a, "only_b": only_b, "p": p})
    return result


def _number(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def _interval(ci95):
    return "-" if ci95 is None or ci95[0] is None else f"{ci95[0]:.2f} to {ci95[1]:.2f}"


def _pair_table(rows, label, group=None):
    """Pairs as table rows; with ``group`` (column, {value: rows}) one row per value and pair."""
    lead = f"| {group[0]} " if group else ""
    lines = [
        f"{lead}| pair | {label} difference (a - b) | 95% CI | p | p (Holm) | verdict |",
        "|---" * (7 if group else 6) + "|",
    ]
    valued = group[1].items() if group else [(None, rows)]
    for value, value_rows in valued:
        for r in value_rows:
            lines.append(
                ("" if value is None else f"| {value} ")
                + f"| {r['a']} - {r['b']} | {_number(r['difference'])} | {_interval(r['ci95'])} "
                f"| {_number(r['p'], 4)} | {_number(r['p_holm'], 4)} | {r['verdict']} |"
            )
    return lines + [""]


def _nonspeech_lines(nonspeech):
    """Words on the non-speech rows per run, and the pairs' exact McNemar tests."""
    n = nonspeech["n"]
    lines = ["### non-speech rows with words", ""]
    lines += [f"- {label}: {k} of {n}" for label, k in nonspeech["with_words"].items()]
    lines += ["", "| pair | only a wrote words | only b wrote words | exact McNemar p |"]
    lines.append("|---|---|---|---|")
    for r in nonspeech["pairs"]:
        lines.append(f"| {r['a']} - {r['b']} | {r['only_a']} | {r['only_b']} | {r['p']:.4f} |")
    return lines + [""]


def markdown(result, plotted):
    """The comparison as Markdown."""
    decide = result["decision_metric"]
    lines = [
        "# Comparison of runs",
        "",
        f"Each run's checkpoint selected by its selection metric; verdicts by {decide} "
        f"(the runs' common selection metric, else WER): a pair's Holm-adjusted p below "
        f"{result['alpha']} across the pairs. Paired bootstrap ({result['bootstrap_samples']} "
        "resamples of whole blocks, the same for both runs).",
        "",
    ]
    for name, test in result["test_sets"].items():
        lines += [
            f"## test set {name} (blocks: {test['blocked_by']})",
            "",
            "| run | epoch | n | " + " | ".join(f"{m} | 95% CI" for m in SELECTION_METRICS) + " |",
            "|---|---|---|" + "---|---|" * len(SELECTION_METRICS),
        ]
        for label, s in test["scores"].items():
            cells = " | ".join(
                f"{_number(s[m.lower()])} | {_interval(s[f'{m.lower()}_ci95'])}"
                for m in SELECTION_METRICS
            )
            lines.append(f"| {label} | {s['selected_epoch']} | {s['n_utterances']} | {cells} |")
        lines.append("")
        if "nonspeech" in test:
            lines += _nonspeech_lines(test["nonspeech"])
        for metric_name, rows in test["overall"].items():
            lines += [f"### {metric_name}", ""] + _pair_table(rows, metric_name)
        for column, values in test["per_group"].items():
            lines += [f"### {decide} per {column}", ""]
            lines += _pair_table(None, decide, (column, values))
    if plotted:
        lines += ["## valid curves", "", f"![valid loss and {decide} per epoch]({plotted})", ""]
    return "\n".join(lines)


def write(result, folder):
    """Write ``comparison.json``, ``comparison.md`` and the curves' plot into ``folder``."""
    os.makedirs(folder, exist_ok=True)
    plotted = valid_curves(result["curves"], result["decision_metric"], folder, CURVES_FILE)
    write_json(os.path.join(folder, JSON_FILE), result)
    write_text(os.path.join(folder, MARKDOWN_FILE), markdown(result, plotted))
    return os.path.join(folder, MARKDOWN_FILE)
