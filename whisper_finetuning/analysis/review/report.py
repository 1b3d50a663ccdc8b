"""What a review leaves behind: summary.md, the corrections manifest, the export command.

Corrections become a manifest with the valid manifest's columns and ``wrd`` replaced by the
correction, for re-scoring the candidates against them and as candidates for label fixes.
When reviewers corrected the same utterance differently, the latest correction is kept and the
utterance is listed as conflicting.
"""

from pathlib import Path

import ruamel.yaml

from whisper_finetuning.common.files import write_csv

CORRECTIONS_FILE = "corrections.csv"


def corrections(latest):
    """({utt_id: latest correction}, [ids whose reviewers disagree]) of non-empty corrections."""
    kept, seen = {}, {}
    for judgment in sorted(latest.values(), key=lambda j: j["time"]):
        text = judgment["correction"].strip()
        if text:
            kept[judgment["id"]] = text
            seen.setdefault(judgment["id"], set()).add(text)
    return kept, sorted(i for i, texts in seen.items() if len(texts) > 1)


def write_corrections(path, columns, rows, corrected):
    """Write the corrections manifest atomically; returns the number of rows."""
    fixed = [{**rows[utt_id], "wrd": text} for utt_id, text in corrected.items()]
    write_csv(path, columns, [[row.get(column, "") for column in columns] for row in fixed])
    return len(corrected)


def checkpoint_epochs(exp):
    """Epochs of the checkpoints kept in ``EXP/save`` (CKPT.yaml meta ``epoch``)."""
    epochs = set()
    for meta_file in Path(exp).glob("save/CKPT+*/CKPT.yaml"):
        with open(meta_file) as f:
            meta = ruamel.yaml.YAML(typ="safe").load(f) or {}
        if "epoch" in meta:
            epochs.add(int(meta["epoch"]))
    return epochs


def export_command(exp, epoch):
    """The command that exports ``epoch``, or None when its checkpoint was not kept."""
    if epoch is None or epoch not in checkpoint_epochs(exp):
        return None
    return f"python -m whisper_finetuning.export_hf {exp} DEST --epoch {epoch}"


def _percent(p):
    """'70.0% [39.7-89.2]' for a proportion, '-' when there is none."""
    if not p["n"]:
        return "-"
    lo, hi = p["ci95"]
    return f"{100 * p['rate']:.1f}% [{100 * lo:.1f}-{100 * hi:.1f}] ({p['k']}/{p['n']})"


def headline(summary):
    """One line: which epoch humans prefer, how clearly, and whether min-WER is that epoch."""
    verdict = summary["verdict"]
    preferred, min_wer = verdict["preferred_epoch"], verdict["min_wer_epoch"]
    count = _count(summary)
    if preferred is None:
        return f"no candidate was judged best yet ({count})"
    best = _percent(summary["preference"][str(preferred)])
    if preferred == min_wer:
        choice = f"humans prefer epoch {preferred}, the min-WER checkpoint"
    else:
        duel = summary["head_to_head"][str(preferred)]
        choice = (
            f"humans prefer epoch {preferred} over min-WER epoch {min_wer} "
            f"({duel['wins']} wins, {duel['losses']} losses head to head)"
        )
    strength = "decisive" if verdict["decisive"] else "not decisive"
    return f"{choice}: best in {best} of decided judgments; {strength}; {count}"


def markdown(summary):
    """summary.md: the headline, then tables of preference, acceptability and agreement."""
    return "\n".join(epoch_lines(summary)) + "\n"


def epoch_lines(summary):
    """The lines of an epoch review's summary.md."""
    lines = ["# Human review", "", f"**{headline(summary)}**", ""]
    if summary["verdict"].get("export_command"):
        lines += ["Export it:", "", f"    {summary['verdict']['export_command']}", ""]
    lines += ["## Preference (95% Wilson intervals)", ""]
    lines += [
        "*best*: share of the decided judgments (ties left out) that chose this epoch's "
        "transcript; *vs min-WER*: wins among the judgments that put exactly one of the two "
        "first; *acceptable*: share of its transcripts marked acceptable.",
        "",
    ]
    lines += ["| epoch | roles | valid WER | best | vs min-WER (wins/losses) | acceptable |"]
    lines += ["|---|---|---|---|---|---|"]
    for epoch, p in summary["preference"].items():
        info = summary["candidates"].get(epoch, {})
        duel = summary["head_to_head"].get(epoch)
        duel_text = f"{_percent(duel)}" if duel else "(min-WER)"
        wer = f"{info['WER']:.2f}" if "WER" in info else "-"
        accept = _percent(summary["acceptability"]["overall"][epoch])
        roles = ", ".join(info.get("roles", []))
        lines.append(f"| {epoch} | {roles} | {wer} | {_percent(p)} | {duel_text} | {accept} |")
    return lines + shared_sections(summary, "epoch")


def shared_sections(summary, kind):
    """The lines every summary.md ends with: ties, acceptability per group, agreement between
    reviewers and corrections; ``kind`` names a candidate (``epoch``, ``run``)."""
    lines = ["", f"Ties: {summary['ties']}; undecided: {summary['undecided']}.", ""]
    for column, values in summary["acceptability"]["per_group"].items():
        names = list(summary["preference"])
        lines += [f"## Acceptable per {column}", ""]
        lines += [f"| {column} | " + " | ".join(f"{kind} {e}" for e in names) + " |"]
        lines += ["|---|" + "---|" * len(names)]
        for value, rates in values.items():
            lines.append(f"| {value} | " + " | ".join(_percent(rates[e]) for e in names) + " |")
        lines.append("")
    lines += ["## Agreement between reviewers", ""]
    pairs = summary["agreement"]["best"] + summary["agreement"]["acceptable"]
    if not pairs:
        lines += ["No utterance was judged by two reviewers.", ""]
    else:
        lines += ["| on | reviewers | n | agreement | Cohen's kappa |", "|---|---|---|---|---|"]
        for key in ("best", "acceptable"):
            for pair in summary["agreement"][key]:
                kappa = "-" if pair["kappa"] is None else f"{pair['kappa']:.3f}"
                names = " & ".join(pair["reviewers"])
                lines.append(
                    f"| {key} | {names} | {pair['n']} | {pair['agreement']:.3f} | {kappa} |"
                )
        lines.append("")
    fixes = summary["corrections"]
    lines += ["## Corrections", "", f"{fixes['n']} corrected transcripts"]
    if fixes.get("file"):
        lines[-1] += f" in `{fixes['file']}`"
    if fixes["conflicting"]:
        lines[-1] += f"; reviewers disagree on {', '.join(fixes['conflicting'])}"
    return lines


def _count(summary):
    return f"{summary['n_judgments']} judgment(s) by {len(summary['reviewers'])} reviewer(s)"


def runs_headline(summary):
    """One line of a review across runs: which run humans prefer, and how clearly."""
    preferred = summary["verdict"]["preferred_run"]
    if preferred is None:
        return f"no candidate was judged best yet ({_count(summary)})"
    best = _percent(summary["preference"][preferred])
    strength = "decisive" if summary["verdict"]["decisive"] else "not decisive"
    ranking = " > ".join(r["run"] for r in summary["ranking"] if r["rank"] is not None)
    return (
        f"humans prefer run {preferred}: best in {best} of decided judgments; {strength}; "
        f"ranking {ranking}; {_count(summary)}"
    )


def runs_markdown(summary):
    """summary.md of a review across runs: the headline, the runs ranked, then as ``markdown``."""
    lines = ["# Human review across runs", "", f"**{runs_headline(summary)}**", ""]
    if summary["verdict"].get("export_command"):
        lines += ["Export it:", "", f"    {summary['verdict']['export_command']}", ""]
    preferred = summary["verdict"]["preferred_run"]
    lines += [f"Test set `{summary['test_set']}`, each run's selected checkpoint.", ""]
    lines += ["## Ranking (95% Wilson intervals)", ""]
    lines += [
        "*best*: share of the decided judgments (ties left out) that chose this run's "
        "transcript; *vs first*: wins against the first-ranked run among the judgments that "
        "put exactly one of the two first; *acceptable*: share of its transcripts marked "
        "acceptable.",
        "",
    ]
    lines += ["| rank | run | selected epoch | test WER | best | vs first (wins/losses) "
              "| acceptable |"]  # fmt: skip
    lines += ["|---|---|---|---|---|---|---|"]
    for row in summary["ranking"]:
        run = row["run"]
        info = summary["candidates"].get(run, {})
        duel = summary["head_to_head"].get(run)
        duel_text = _percent(duel) if duel else ("(first)" if run == preferred else "-")
        wer = "-" if info.get("WER") is None else f"{info['WER']:.2f}"
        epoch = "-" if info.get("selected_epoch") is None else info["selected_epoch"]
        accept = _percent(summary["acceptability"]["overall"][run])
        rank = "-" if row["rank"] is None else row["rank"]
        lines.append(
            f"| {rank} | {run} | {epoch} | {wer} | {_percent(row)} | {duel_text} | {accept} |"
        )
    lines += shared_sections(summary, "run")
    return "\n".join(lines) + "\n"
