"""Aggregate human judgments: preference, acceptability, reviewer agreement and the verdict.

One judgment is a reviewer's last word on one utterance (see ``store.latest``). Its
``best`` is the list of epochs of the option chosen (several when candidates wrote the same
transcript), ``"tie"``, or null when not decided yet; ``acceptable`` maps epoch -> bool.
Rates carry 95% Wilson score intervals, which stay inside [0, 1] and behave for small counts.
"""

import itertools
import math

from whisper_finetuning.analysis.review.store import TIE

Z95 = 1.959963984540054


def wilson(k, n, z=Z95):
    """95% Wilson score interval of k successes in n trials ([lo, hi]; None when n == 0)."""
    if n == 0:
        return None
    p = k / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return [max(0.0, center - half), min(1.0, center + half)]


def proportion(k, n):
    """{k, n, rate, ci95} of k successes in n."""
    return {"k": k, "n": n, "rate": k / n if n else None, "ci95": wilson(k, n)}


def cohen_kappa(pairs):
    """Observed agreement and Cohen's kappa of two raters' labels [(a, b)].

    Kappa is None when chance agreement is already 1 (both raters always gave one label).
    """
    n = len(pairs)
    observed = sum(a == b for a, b in pairs) / n
    labels = {label for pair in pairs for label in pair}
    chance = sum(
        (sum(a == label for a, _ in pairs) / n) * (sum(b == label for _, b in pairs) / n)
        for label in labels
    )
    kappa = None if chance == 1 else (observed - chance) / (1 - chance)
    return observed, kappa


def best_label(judgment):
    """A judgment's choice as a label comparable across reviewers: 'tie' or '1+3'."""
    best = judgment["best"]
    return TIE if best == TIE else "+".join(str(e) for e in sorted(best))


def best_epochs(judgment):
    """The epochs judged best; a tie puts every candidate there."""
    return judgment["candidates"] if judgment["best"] == TIE else judgment["best"]


def preference(judgments, epochs):
    """Per epoch, how often it was (among) the best of the judgments that chose one."""
    decided = [j for j in judgments if j["best"] not in (None, TIE)]
    return {
        str(e): proportion(
            sum(e in j["best"] for j in decided if e in j["candidates"]),
            sum(e in j["candidates"] for j in decided),
        )
        for e in epochs
    }


def head_to_head(judgments, epoch, reference):
    """``epoch`` against ``reference``: judgments where exactly one of the two was best."""
    wins = losses = 0
    for j in judgments:
        if j["best"] is None or not {epoch, reference} <= set(j["candidates"]):
            continue
        best = best_epochs(j)
        wins += epoch in best and reference not in best
        losses += reference in best and epoch not in best
    return {"vs": reference, "wins": wins, "losses": losses, **proportion(wins, wins + losses)}


def acceptability(judgments, epochs, group_columns):
    """Per epoch, the share judged acceptable: overall and per value of each group column."""

    def rates(members):
        return {
            str(e): proportion(
                sum(j["acceptable"].get(str(e)) is True for j in members),
                sum(str(e) in j["acceptable"] for j in members),
            )
            for e in epochs
        }

    per_group = {}
    for column in group_columns:
        values = sorted({j["groups"][column] for j in judgments if column in j["groups"]})
        per_group[column] = {
            v: rates([j for j in judgments if j["groups"].get(column) == v]) for v in values
        }
    return {"overall": rates(judgments), "per_group": per_group}


def agreement(latest):
    """Pairwise agreement and Cohen's kappa on 'best' and on acceptability, per reviewer pair."""
    by_reviewer = {}
    for (reviewer, utt_id), judgment in latest.items():
        by_reviewer.setdefault(reviewer, {})[utt_id] = judgment
    result = {"best": [], "acceptable": []}
    for a, b in itertools.combinations(sorted(by_reviewer), 2):
        common = sorted(set(by_reviewer[a]) & set(by_reviewer[b]))
        best_pairs, accept_pairs = [], []
        for utt_id in common:
            ja, jb = by_reviewer[a][utt_id], by_reviewer[b][utt_id]
            if ja["best"] is not None and jb["best"] is not None:
                best_pairs.append((best_label(ja), best_label(jb)))
            for epoch in sorted(set(ja["acceptable"]) & set(jb["acceptable"])):
                accept_pairs.append((ja["acceptable"][epoch], jb["acceptable"][epoch]))
        for key, pairs in (("best", best_pairs), ("acceptable", accept_pairs)):
            if pairs:
                observed, kappa = cohen_kappa(pairs)
                result[key].append(
                    {"reviewers": [a, b], "n": len(pairs), "agreement": observed, "kappa": kappa}
                )
    return result


def rank(rates, favored=None):
    """The candidates of ``rates`` that were judged, most preferred first: the higher
    best-rate, then the higher interval's lower end, then ``favored``, then ``rates``' order."""
    order = list(rates)
    return sorted(
        (c for c in order if rates[c]["n"]),
        key=lambda c: (-rates[c]["rate"], -rates[c]["ci95"][0], c != favored, order.index(c)),
    )


def all_clearly_worse(duels):
    """Whether every head-to-head's interval lies below one half (the reference clearly wins)."""
    return bool(duels) and all(d["n"] and d["ci95"][1] < 0.5 for d in duels.values())


def verdict(preferred_rates, duels, min_wer):
    """The epoch humans prefer, and whether the judgments clearly separate it from min-WER.

    Preferred: the highest best-rate (ties: the higher interval's lower end, then min-WER,
    then the earlier epoch). Decisive: in the head-to-head with min-WER, the preferred epoch's
    interval lies above one half, or (when it is min-WER) every other epoch's lies below.
    """
    ranked = rank(preferred_rates, str(min_wer))
    if not ranked:
        return {"preferred_epoch": None, "min_wer_epoch": min_wer, "differs_from_min_wer": None}
    preferred = int(ranked[0])
    if preferred != min_wer:
        duel = duels.get(str(preferred))
        decisive = bool(duel and duel["n"] and duel["ci95"][0] > 0.5)
    else:
        decisive = all_clearly_worse(duels)
    return {
        "preferred_epoch": preferred,
        "min_wer_epoch": min_wer,
        "differs_from_min_wer": preferred != min_wer,
        "decisive": decisive,
    }


def judged(latest, candidates, group_columns):
    """What every summary holds: who judged how much, preference, acceptability, agreement."""
    judgments = list(latest.values())
    return {
        "reviewers": sorted({r for r, _ in latest}),
        "n_judgments": len(judgments),
        "n_utterances": len({u for _, u in latest}),
        "ties": sum(j["best"] == TIE for j in judgments),
        "undecided": sum(j["best"] is None for j in judgments),
        "preference": preference(judgments, candidates),
        "acceptability": acceptability(judgments, candidates, group_columns),
        "agreement": agreement(latest),
    }


def summarize(latest, min_wer, group_columns):
    """Everything ``summary.json`` holds but the corrections and the export command."""
    judgments = list(latest.values())
    epochs = sorted({e for j in judgments for e in j["candidates"]} | {min_wer})
    summary = judged(latest, epochs, group_columns)
    duels = {str(e): head_to_head(judgments, e, min_wer) for e in epochs if e != min_wer}
    return {
        **summary,
        "head_to_head": duels,
        "verdict": verdict(summary["preference"], duels, min_wer),
    }


def summarize_runs(latest, runs, group_columns):
    """A review across runs (candidates: run labels): ``judged``, the runs ranked by
    preference, each other run's head-to-head against the first, and the verdict (decisive:
    every other run's head-to-head interval lies below one half)."""
    judgments = list(latest.values())
    summary = judged(latest, runs, group_columns)
    ranked = rank(summary["preference"])
    top = ranked[0] if ranked else None
    duels = {r: head_to_head(judgments, r, top) for r in runs if top is not None and r != top}
    unranked = [r for r in runs if r not in ranked]
    return {
        **summary,
        "ranking": [
            {"rank": i, "run": r, **summary["preference"][r]} for i, r in enumerate(ranked, 1)
        ]
        + [{"rank": None, "run": r, **summary["preference"][r]} for r in unranked],
        "head_to_head": duels,
        "verdict": {"preferred_run": top, "decisive": top is not None and all_clearly_worse(duels)},
    }
