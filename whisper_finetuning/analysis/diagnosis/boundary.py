"""Does the training loss drop at epoch boundaries, and why?

The drop is the mean loss of the last ``k`` steps of epoch e minus that of the first ``k``
steps of epoch e+1, tested with a one-sided permutation test stratified by boundary. A
steadily falling loss also "drops" between any two adjacent windows, so the drop only counts
when a jump remains once the local linear trend on each side is fitted.

Four causes are tested, each against a stated threshold, and a cause is claimed only when
the drop is real and its own test passes:

- ``running_mean_artifact``: the logged series is a cumulative mean reset every epoch (its
  step-to-step change shrinks like 1/step within an epoch);
- ``ordering``: batches come in a sorted or fixed order and the loss follows batch length;
- ``memorization``: training utterances' loss falls on re-exposure much more than the loss
  of data never trained on (valid utterances whose transcript is no training one), and that
  data gets worse in loss and, beyond noise, in WER;
- ``schedule``: the learning rate jumps, or augmentation switches, at the boundary.
"""

import math

import numpy as np
from scipy import stats as scipy_stats

from whisper_finetuning.analysis.diagnosis import Unavailable
from whisper_finetuning.analysis.diagnosis.stats import (
    PERMUTATIONS,
    mann_whitney_greater,
    paired_bootstrap_difference,
    spearman,
    stratified_permutation_drop,
    words_of,
)

ALPHA = 0.01
MIN_WINDOW, MAX_WINDOW = 3, 20
RUNNING_MEAN_SLOPE = -0.5  # a cumulative mean gives -1, a raw loss about 0
RUNNING_MEAN_TOLERANCE = 1e-4  # logged against recomputed cumulative mean (rounded logs)
ORDER_RHO = 0.8  # |Spearman| of batch length with position in the epoch: sorted
ORDER_REPEAT_R = 0.9  # correlation of batch lengths between epochs: fixed order
LENGTH_RHO = 0.5  # |Spearman| of step loss with batch length, net of the run's trend
TREND_DEGREE = 3
EXPLAINED_FRACTION = 0.5  # share of the boundary drop that batch length predicts
MEMORIZATION_RATIO = 0.5  # never-seen data's drop below this share of the re-exposed drop
LR_JUMP = 0.05  # relative learning-rate jump at a boundary, beyond the schedule's own change
LR_JUMP_OVER_WITHIN = 5  # ... and this many times the 95th percentile departure within epochs
AUGMENT_CHANGE = 0.5  # change in the share of augmented steps across a boundary

DROP_TEST = (
    "drop = mean loss of the last k steps of epoch e minus the first k steps of epoch e+1, "
    f"averaged over boundaries, one-sided permutation test stratified by boundary "
    f"({PERMUTATIONS} permutations); it counts when p < {ALPHA} and the trend-adjusted drop "
    "(a jump fitted with each side's linear trend over 2k steps, one-sided t-test) is also "
    f"positive with p < {ALPHA}; for a series found to be a cumulative mean the trend model "
    "does not apply and the window test alone decides"
)


def _finite(value):
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def loss_series_name(records):
    """The step series a user saw: ``logged_loss`` when logged, else ``loss``."""
    if any(_finite(s.get("logged_loss")) for s in records.steps):
        return "logged_loss"
    return "loss"


def per_epoch(records, key):
    """``{epoch: [steps in order]}`` for steps where ``key`` is a finite number."""
    grouped = {}
    order = sorted(records.steps, key=lambda s: (s["epoch"], s.get("step") or 0))
    for step in order:
        if _finite(step.get(key)):
            grouped.setdefault(step["epoch"], []).append(step)
    return grouped


def window_size(grouped):
    """k: a quarter of the shortest epoch, between MIN_WINDOW and MAX_WINDOW steps."""
    if not grouped:
        raise Unavailable("no per-step training losses (log/steps.jsonl, Trainer log_history)")
    if len(grouped) < 2:
        raise Unavailable("per-step losses of at least two epochs are needed")
    shortest = min(len(steps) for steps in grouped.values())
    if shortest < 2 * MIN_WINDOW:
        raise Unavailable(f"an epoch has {shortest} logged steps; {2 * MIN_WINDOW} are needed")
    return max(MIN_WINDOW, min(MAX_WINDOW, shortest // 4))


def _boundary_pairs(grouped, key, k):
    epochs = sorted(grouped)
    return [
        (
            e,
            np.array([s[key] for s in grouped[e][-k:]]),
            np.array([s[key] for s in grouped[n][:k]]),
        )
        for e, n in zip(epochs, epochs[1:], strict=False)
        if n == e + 1
    ]


def _trend_adjusted_drop(grouped, key, k):
    """The step down at the boundaries once each side's local linear trend is allowed for.

    Around every boundary, the last 2k steps of epoch e and the first 2k steps of e+1 are
    fitted with their own intercept and slope plus one jump common to all boundaries (a
    regression discontinuity); returns the drop (minus the jump) and its one-sided p-value
    (t-test). A loss that simply keeps falling has no jump.
    """
    epochs = [e for e in sorted(grouped) if e + 1 in grouped]
    rows, targets = [], []
    for index, e in enumerate(epochs):
        before = [s[key] for s in grouped[e][-2 * k :]]
        after = [s[key] for s in grouped[e + 1][: 2 * k]]
        for offset, value in zip(range(-len(before), len(after)), before + after, strict=True):
            row = np.zeros(2 * len(epochs) + 1)
            row[2 * index], row[2 * index + 1] = 1.0, offset
            row[-1] = float(offset >= 0)
            rows.append(row)
            targets.append(value)
    design, targets = np.array(rows), np.array(targets)
    beta, *_ = np.linalg.lstsq(design, targets, rcond=None)
    dof = len(targets) - design.shape[1]
    residual = targets - design @ beta
    covariance = (residual @ residual / dof) * np.linalg.pinv(design.T @ design)
    se = math.sqrt(max(covariance[-1, -1], 1e-300))
    drop = float(-beta[-1])
    return drop, float(scipy_stats.t.sf(drop / se, dof))


def measure_drop(records, key):
    """The drop of series ``key`` at epoch boundaries, its permutation test, and the same
    drop net of the local trend."""
    grouped = per_epoch(records, key)
    k = window_size(grouped)
    pairs = _boundary_pairs(grouped, key, k)
    if not pairs:
        raise Unavailable("no two consecutive epochs have logged steps")
    drop = float(np.mean([b.mean() - a.mean() for _, b, a in pairs]))
    p_value = stratified_permutation_drop([(b, a) for _, b, a in pairs])
    adjusted, adjusted_p = _trend_adjusted_drop(grouped, key, k)
    return {
        "series": key,
        "k": k,
        "drop": drop,
        "p_value": p_value,
        "trend_adjusted_drop": adjusted,
        "trend_adjusted_p_value": adjusted_p,
        "detected": bool(p_value < ALPHA and adjusted > 0 and adjusted_p < ALPHA),
        "test": DROP_TEST,
        "boundaries": [
            {
                "after_epoch": e,
                "last_k_mean": float(b.mean()),
                "first_k_mean": float(a.mean()),
                "drop": float(b.mean() - a.mean()),
            }
            for e, b, a in pairs
        ],
    }


def _implied_step_losses(values):
    """The per-step losses that a cumulative mean reset at the epoch start would average to
    ``values``: step t's is t * mean_t - (t - 1) * mean_(t-1)."""
    t = np.arange(1, len(values) + 1)
    return t * values - np.concatenate([[0.0], t[:-1] * values[:-1]])


def running_mean_artifact(records, key):
    """Is ``key`` a cumulative mean reset each epoch?

    When the per-step ``loss`` is logged next to it, the answer is exact: ``key`` equals the
    per-epoch cumulative mean of ``loss`` or not. From the logged series alone, two things
    must hold: every per-step loss it implies is non-negative (a per-batch loss logged as is
    implies negative ones once it falls by more than its value over the steps so far), and
    its step-to-step change shrinks like 1/step.
    """
    grouped = per_epoch(records, key)
    window_size(grouped)
    series = {e: np.array([s[key] for s in steps]) for e, steps in grouped.items()}
    changes = {e: np.abs(np.diff(values)) for e, values in series.items()}
    positive = np.concatenate([c[c > 0] for c in changes.values()])
    if not len(positive):
        raise Unavailable(f"the {key} series never changes")
    floor = positive.min() / 2  # logged values are rounded: an unchanged value is a tiny change
    evidence = {"series": key}
    raw = per_epoch(records, "loss") if key != "loss" else {}
    if raw and all(
        [s["step"] for s in raw.get(e, [])] == [s["step"] for s in steps]
        for e, steps in grouped.items()
    ):
        deviation = max(
            float(np.max(np.abs(series[e] - np.cumsum(losses) / np.arange(1, len(losses) + 1))))
            for e, losses in ((e, [s["loss"] for s in raw[e]]) for e in grouped)
        )
        evidence["max_deviation_from_cumulative_mean_of_loss"] = deviation
        evidence["how"] = "it equals the cumulative mean of the logged per-step loss"
        passed = deviation <= RUNNING_MEAN_TOLERANCE
        threshold = (
            f"{key} equals the per-epoch cumulative mean of the per-step loss within "
            f"{RUNNING_MEAN_TOLERANCE:g}"
        )
    else:
        implied = np.concatenate([_implied_step_losses(v) for v in series.values()])
        steps_in = np.concatenate([np.arange(1, len(v) + 1) for v in series.values()])
        negative = int(np.sum(implied < -2 * floor * steps_in))
        slope, se = _change_slope(changes, floor)
        evidence["implied_negative_step_losses"] = negative
        evidence["slope_log_change_vs_log_step"], evidence["slope_se"] = slope, se
        evidence["how"] = (
            f"the per-step losses it implies are all non-negative, and its step-to-step change "
            f"shrinks with a log-log slope of {slope:.2f}; a mean gives -1"
        )
        passed = negative == 0 and slope <= RUNNING_MEAN_SLOPE and slope + 1.645 * se < 0
        threshold = (
            "no implied per-step loss is negative, and within each epoch log |change between "
            f"logged values| falls with log(step) at a slope <= {RUNNING_MEAN_SLOPE} with its "
            "one-sided 95% bound below 0 (a cumulative mean reset per epoch gives -1, a "
            "per-batch loss about 0)"
        )
    evidence["n_steps"] = int(sum(len(v) for v in series.values()))
    if raw:
        measured = measure_drop(records, "loss")
        evidence["raw_loss_drop"] = measured["drop"]
        evidence["raw_loss_p_value"] = measured["p_value"]
    return {
        "cause": "running_mean_artifact",
        "passed": bool(passed),
        "evidence": evidence,
        "threshold": threshold,
    }


def _change_slope(changes, floor):
    """Least-squares slope (and its standard error) of log |change| on log(step), each
    epoch centred."""
    log_steps, log_changes = [], []
    for change in changes.values():
        within = np.log(np.arange(2, len(change) + 2))
        logged = np.log(np.maximum(change, floor))
        log_steps.append(within - within.mean())
        log_changes.append(logged - logged.mean())
    x, y = np.concatenate(log_steps), np.concatenate(log_changes)
    slope = float(x @ y / (x @ x))
    dof = max(len(x) - len(log_steps) - 1, 1)
    return slope, float(math.sqrt(((y - slope * x) ** 2).sum() / dof / (x @ x)))


def _batch_lengths(step):
    """Per-utterance audio seconds and tokens of a step (per step when counts are missing)."""
    count = step.get("utterances") or 1
    return {
        name: step[name] / count
        for name in ("audio_seconds", "tokens")
        if _finite(step.get(name)) and step[name] > 0
    }


def _smooth_trend_basis(n):
    """A cubic polynomial in the run's progress: the loss's slow trend, which cannot jump."""
    progress = np.linspace(0.0, 1.0, n)
    return np.vander(progress, TREND_DEGREE + 1)


def _residual(basis, values):
    beta, *_ = np.linalg.lstsq(basis, values, rcond=None)
    return values - basis @ beta


def ordering(records):
    """Sorted or fixed batch order, with the loss following batch length across boundaries."""
    grouped = per_epoch(records, "loss")
    k = window_size(grouped)
    rows = [s for e in sorted(grouped) for s in grouped[e]]
    lengths = [_batch_lengths(s) for s in rows]
    names = [n for n in ("audio_seconds", "tokens") if all(n in length for length in lengths)]
    if not names:
        raise Unavailable("the steps log no audio_seconds or tokens per step")
    epochs = np.array([s["epoch"] for s in rows])
    loss = np.array([s["loss"] for s in rows])
    covariates = np.array([[length[n] for n in names] for length in lengths])
    evidence = {"sorting": records.run_config.get("sorting"), "covariates": names}
    # Order: length against position inside each epoch, and epoch against epoch.
    position_rhos, repeat_rs = [], []
    sequences = [covariates[epochs == e, 0] for e in sorted(grouped)]
    for sequence in sequences:
        rho, _ = spearman(np.arange(len(sequence)), sequence)
        position_rhos.append(rho or 0.0)
    for first, second in zip(sequences, sequences[1:], strict=False):
        n = min(len(first), len(second))
        if n > 2 and np.ptp(first[:n]) > 0 and np.ptp(second[:n]) > 0:
            repeat_rs.append(float(np.corrcoef(first[:n], second[:n])[0, 1]))
    evidence["length_vs_position_rho"] = float(np.mean(position_rhos))
    evidence["length_repeat_between_epochs_r"] = float(np.mean(repeat_rs)) if repeat_rs else None
    order_not_random = (
        evidence["sorting"] in ("ascending", "descending")
        or abs(evidence["length_vs_position_rho"]) >= ORDER_RHO
        or (evidence["length_repeat_between_epochs_r"] or 0) >= ORDER_REPEAT_R
    )
    evidence["order_not_random"] = bool(order_not_random)
    # Loss against length net of a smooth trend over the run (a sorted order makes length
    # and position within an epoch collinear; a smooth trend cannot jump at a boundary).
    trend = _smooth_trend_basis(len(rows))
    loss_residual = _residual(trend, loss)
    best = (0.0, 1.0, names[0])
    for column, name in enumerate(names):
        rho, p = spearman(_residual(trend, covariates[:, column]), loss_residual)
        if rho is not None and abs(rho) > abs(best[0]):
            best = (rho, p, name)
    evidence["loss_vs_length_rho"], evidence["loss_vs_length_p"] = best[0], best[1]
    evidence["loss_vs_length_covariate"] = best[2]
    # How much of the boundary drop batch length predicts (smooth trend + length slopes).
    beta, *_ = np.linalg.lstsq(np.hstack([trend, covariates]), loss, rcond=None)
    predicted = covariates @ beta[trend.shape[1] :]
    observed_drop, predicted_drop = [], []
    for e in sorted(grouped)[:-1]:
        if e + 1 not in grouped:
            continue
        before, after = np.flatnonzero(epochs == e)[-k:], np.flatnonzero(epochs == e + 1)[:k]
        observed_drop.append(loss[before].mean() - loss[after].mean())
        predicted_drop.append(predicted[before].mean() - predicted[after].mean())
    observed, explained = float(np.mean(observed_drop)), float(np.mean(predicted_drop))
    evidence["raw_loss_drop"], evidence["drop_predicted_by_length"] = observed, explained
    fraction = explained / observed if observed > 0 else None
    evidence["explained_fraction"] = fraction
    passed = (
        order_not_random
        and abs(best[0]) >= LENGTH_RHO
        and best[1] < ALPHA
        and fraction is not None
        and fraction >= EXPLAINED_FRACTION
    )
    return {
        "cause": "ordering",
        "passed": bool(passed),
        "evidence": evidence,
        "threshold": (
            "order not random (run.json sorting ascending/descending, or batch length vs "
            f"position |rho| >= {ORDER_RHO}, or batch lengths repeating between epochs r >= "
            f"{ORDER_REPEAT_R}); step loss vs batch length, both net of a cubic trend over the "
            f"run, |rho| >= {LENGTH_RHO}"
            f" with p < {ALPHA}; batch length predicts >= {EXPLAINED_FRACTION:.0%} of the drop"
        ),
    }


def _visits(records):
    by_epoch = {}
    for utt in records.train_utterances:
        if _finite(utt.get("loss")):
            by_epoch.setdefault(utt["epoch"], {})[utt["id"]] = utt["loss"]
    return by_epoch


def augmented_share(records):
    """``{epoch: share of its steps with augmentation on}`` where steps log the flag."""
    flags = {}
    for step in records.steps:
        if isinstance(step.get("augmented"), bool):
            flags.setdefault(step["epoch"], []).append(float(step["augmented"]))
    return {e: float(np.mean(values)) for e, values in flags.items()}


def memorization(records):
    """Re-exposed training utterances' loss drop vs the drop of data never trained on (valid
    utterances whose normalised transcript is no training transcript)."""
    visits = _visits(records)
    epochs = sorted(visits)
    train_drops, never_seen, boundaries = [], [], []
    paired_differences = []  # re-exposed drop minus its boundary's valid drop (epoch-level)
    # Never trained on: valid utterances whose normalised transcript is not a training one.
    train_texts = {" ".join(words_of(t)) for t in records.train_transcripts}
    shared_text = {
        u["id"]
        for utts in records.valid_utterances.values()
        for u in utts
        if " ".join(words_of(u.get("ref"))) in train_texts
    }
    valid = {
        e: {
            u["id"]: u["loss"]
            for u in utts
            if _finite(u.get("loss")) and u["id"] not in shared_text
        }
        for e, utts in records.valid_utterances.items()
    }
    valid_nll = {r["epoch"]: r["nll"] for r in records.epochs if _finite(r.get("nll"))}
    source = "valid utterances' NLL per token (valid/utterances_epochN.jsonl)"
    if not any(valid.values()):
        source = "valid NLL per epoch (epochs.jsonl nll)"
    shares = augmented_share(records)
    confounded = [
        e
        for e in epochs
        if {e, e + 1} <= set(shares) and abs(shares[e + 1] - shares[e]) >= AUGMENT_CHANGE
    ]
    for e in epochs:
        if e + 1 not in visits or e in confounded:
            continue
        shared = sorted(set(visits[e]) & set(visits[e + 1]))
        drops = [visits[e][i] - visits[e + 1][i] for i in shared]
        if any(valid.values()):
            both = sorted(set(valid.get(e, {})) & set(valid.get(e + 1, {})))
            unseen = [valid[e][i] - valid[e + 1][i] for i in both]
        else:
            unseen = [valid_nll[e] - valid_nll[e + 1]] if {e, e + 1} <= set(valid_nll) else []
        if drops and unseen:
            wer_rise = _wer_rise(records, shared_text, e)
            train_drops += drops
            never_seen += unseen
            paired_differences += [d - unseen[0] for d in drops]
            boundaries.append(
                {
                    "after_epoch": e,
                    "train_drop_mean": float(np.mean(drops)),
                    "never_seen_drop_mean": float(np.mean(unseen)),
                    "never_seen_wer_rise": wer_rise,
                    "never_seen_stalled": _stalled(unseen, wer_rise),
                }
            )
    if not boundaries and confounded:
        raise Unavailable(
            f"augmentation switches after epoch(s) {confounded}: training losses before and "
            "after are not comparable"
        )
    if not boundaries:
        raise Unavailable(
            "needs training utterances' loss at two consecutive epochs (log/"
            "train_utterances.jsonl) and the valid NLL at the same epochs"
        )
    if any(valid.values()):
        p_value = mann_whitney_greater(train_drops, never_seen)
        test = "one-sided Mann-Whitney U, re-exposed drops > never-seen drops"
    else:
        differences = np.array(paired_differences)
        p_value = (
            float(scipy_stats.wilcoxon(differences, alternative="greater").pvalue)
            if np.any(differences != 0)
            else 1.0
        )
        test = "one-sided Wilcoxon signed-rank, re-exposed drops > their epochs' valid NLL drop"
    train_mean, unseen_mean = float(np.mean(train_drops)), float(np.mean(never_seen))
    stalled = [b["after_epoch"] for b in boundaries if b["never_seen_stalled"]]
    # Re-exposure alone (the seed's case) lowers the training loss more than anything else;
    # it is memorisation only once data never trained on gets worse.
    reexposure = (
        p_value < ALPHA and train_mean > 0 and unseen_mean < MEMORIZATION_RATIO * train_mean
    )
    return {
        "cause": "memorization",
        "passed": bool(reexposure and stalled),
        "evidence": {
            "reexposure_beyond_never_seen": bool(reexposure),
            "train_drop_mean": train_mean,
            "never_seen_drop_mean": unseen_mean,
            "n_train_pairs": len(train_drops),
            "n_never_seen": len(never_seen),
            "never_seen_source": source,
            "p_value": p_value,
            "test": test,
            "boundaries": boundaries,
            "excluded_augmentation_switch_after": confounded,
            "excluded_valid_with_training_text": len(shared_text),
            "never_seen_stalled_after": stalled,
        },
        "threshold": (
            f"p < {ALPHA}, the re-exposed drop > 0 and the never-seen drop < "
            f"{MEMORIZATION_RATIO:.0%} of it, and at some boundary data never trained on stops "
            "improving: its mean loss drop is not above 0 and its WER rises beyond noise (95% "
            "paired bootstrap interval above 0, blocked by transcript)"
        ),
    }


def _wer_rise(records, excluded, epoch):
    """The never-seen valid WER's change from ``epoch`` to the next, in points, with a 95%
    paired bootstrap interval blocked by transcript (one sentence in several voices moves
    together); the epochs' valid WERs, without interval, when utterances lack word counts."""
    counted = {}
    for e in (epoch, epoch + 1):
        counted[e] = {
            u["id"]: u
            for u in records.valid_utterances.get(e, [])
            if u["id"] not in excluded and _finite(u.get("word_errors")) and u.get("words")
        }
    both = sorted(set(counted[epoch]) & set(counted[epoch + 1]))
    if both:
        before, after = ([counted[e][i] for i in both] for e in (epoch, epoch + 1))
        point, lo, hi, _ = paired_bootstrap_difference(
            [u["word_errors"] for u in after],
            [u["word_errors"] for u in before],
            [u["words"] for u in before],
            blocks=[" ".join(words_of(u.get("ref"))) for u in before],
        )
        return {"point": point, "ci95": [lo, hi]}
    wer = {r["epoch"]: r["WER"] for r in records.epochs if _finite(r.get("WER"))}
    if {epoch, epoch + 1} <= set(wer):
        return {"point": wer[epoch + 1] - wer[epoch], "ci95": None}
    return None


def _stalled(never_seen_drops, wer_rise):
    """Data never trained on got worse across this boundary: its mean loss drop is not above
    0 and, where logged, its WER rose beyond noise (95% interval above 0; with no interval,
    the point estimate)."""
    loss_stalled = bool(np.mean(never_seen_drops) <= 0)
    if wer_rise is None:
        return loss_stalled
    lower = wer_rise["ci95"][0] if wer_rise["ci95"] else wer_rise["point"]
    return loss_stalled and lower > 0


def schedule(records, k):
    """A learning-rate jump or an augmentation switch at an epoch boundary."""
    lr = per_epoch(records, "lr")
    augmented = {}
    for step in sorted(records.steps, key=lambda s: (s["epoch"], s.get("step") or 0)):
        if isinstance(step.get("augmented"), bool):
            augmented.setdefault(step["epoch"], []).append(float(step["augmented"]))
    if len(lr) < 2 and len(augmented) < 2:
        raise Unavailable("the steps log no learning rate or augmentation flag")
    evidence, boundaries = {"augment_config": records.run_config.get("augment")}, []
    # A schedule moves log(lr) smoothly (warmup, decay): a jump is a step change that departs
    # from the change of the step before it, measured against such departures inside epochs.
    log_lr = {e: np.log([s["lr"] for s in steps if s["lr"] > 0]) for e, steps in lr.items()}
    within = [float(d) for steps in log_lr.values() for d in np.abs(np.diff(steps, n=2))]
    within_p95 = float(np.percentile(within, 95)) if within else 0.0
    lr_jumps, augment_changes = [], []
    for e in sorted(set(lr) | set(augmented)):
        record = {"after_epoch": e}
        if e in log_lr and e + 1 in log_lr and len(log_lr[e]) and len(log_lr[e + 1]):
            record["lr_before"], record["lr_after"] = lr[e][-1]["lr"], lr[e + 1][0]["lr"]
            step_change = log_lr[e + 1][0] - log_lr[e][-1]
            before = log_lr[e][-1] - log_lr[e][-2] if len(log_lr[e]) > 1 else 0.0
            record["log_lr_departure"] = float(abs(step_change - before))
            lr_jumps.append(record["log_lr_departure"])
        if e in augmented and e + 1 in augmented:
            before, after = np.mean(augmented[e][-k:]), np.mean(augmented[e + 1][:k])
            record["augmented_share_before"] = float(before)
            record["augmented_share_after"] = float(after)
            augment_changes.append(float(abs(after - before)))
        if len(record) > 1:
            boundaries.append(record)
    evidence["lr_within_epoch_departure_p95"] = within_p95
    evidence["lr_max_jump"] = max(lr_jumps) if lr_jumps else None
    evidence["augmented_max_change"] = max(augment_changes) if augment_changes else None
    evidence["boundaries"] = boundaries
    lr_passed = bool(lr_jumps) and bool(
        max(lr_jumps) >= max(math.log1p(LR_JUMP), LR_JUMP_OVER_WITHIN * within_p95)
    )
    augment_passed = bool(augment_changes) and bool(max(augment_changes) >= AUGMENT_CHANGE)
    evidence["lr_jump"], evidence["augmentation_switch"] = lr_passed, augment_passed
    return {
        "cause": "schedule",
        "passed": bool(lr_passed or augment_passed),
        "evidence": evidence,
        "threshold": (
            "the change of log(lr) across a boundary departs from the step before it by >= "
            f"log(1 + {LR_JUMP}) and by >= {LR_JUMP_OVER_WITHIN}x the 95th percentile of such "
            "departures inside epochs, or "
            f"the share of augmented steps changes by >= {AUGMENT_CHANGE} across a boundary"
        ),
    }


def analyse(records, memorization_result):
    """The ``epoch_boundary`` entry: the drop, every cause test, and the causes claimed.

    ``memorization_result`` is computed once by the caller (it is also reported on its own)
    and is either a test result or an ``Unavailable``.
    """
    key = loss_series_name(records)
    result = measure_drop(records, key)
    tests, not_tested = [], []
    candidates = {
        "running_mean_artifact": lambda: running_mean_artifact(records, key),
        "ordering": lambda: ordering(records),
        "memorization": lambda: _reraise(memorization_result),
        "schedule": lambda: schedule(records, result["k"]),
    }
    for name, test in candidates.items():
        try:
            tests.append(test())
        except Unavailable as missing:
            not_tested.append({"cause": name, "reason": str(missing)})
    if any(t["cause"] == "running_mean_artifact" and t["passed"] for t in tests):
        # A cumulative mean is no noisy reading of the current loss: the trend model does not
        # apply, and the reset at the boundary is the drop the user sees.
        result["detected"] = bool(result["p_value"] < ALPHA)
    result["causes"] = [t for t in tests if t["passed"]] if result["detected"] else []
    result["tests"] = tests
    result["not_tested"] = not_tested
    return result


def _reraise(result):
    if isinstance(result, Unavailable):
        raise result
    return result
