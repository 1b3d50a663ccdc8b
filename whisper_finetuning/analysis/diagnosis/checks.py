"""Per-run checks besides the epoch boundary: which checkpoint, whether the difference is
noise, calibration per epoch, suspected label noise, lagging groups, leakage, repetition
loops in the valid transcripts, valid size, MWER's expected WER on train against valid WER.

Each check returns a JSON-ready dict or raises ``Unavailable`` naming what it lacks.
"""

import math
from collections import Counter

import numpy as np
from scipy import stats
from scipy.stats import mannwhitneyu

from whisper_finetuning.analysis.diagnosis import Unavailable
from whisper_finetuning.analysis.diagnosis.stats import (
    BOOTSTRAP_SAMPLES,
    benjamini_hochberg,
    paired_bootstrap_difference,
    robust_location_scale,
    spearman,
    word_errors,
    words_of,
)
from whisper_finetuning.evaluation.selection import best_epoch
from whisper_finetuning.evaluation.text import LoopStop

SPEAKER = "spk_id"
HARDEST_LISTED = 10
MIN_NOISE_GROUP = 20  # utterances a group needs for its own null distribution
MIN_NOISE_UTTERANCES = 10  # ... and the whole training set
NOISE_FDR = 0.05
# A suspect's training transcript must contradict its label: a loss outlier the model still
# transcribes as labelled is a hard utterance (a rare word, a fast voice), not a wrong label.
NOISE_MIN_WER = 50.0
LOSS_FLOOR = 1e-4  # per-token loss floor before the log (a perfectly fitted utterance)
MAX_GROUP_VALUES = 20
MIN_SPEAKER_BLOCKS = 5  # fewer speakers in a group: resample its utterances instead
MIN_LAGGING_GROUP = 10  # valid utterances a group needs before it can be called lagging
LEAKAGE_SHARE = 0.05
LATE_POSITION = 0.75  # first-epoch visits this late are scored by nearly the validated model
MIN_SHIFT_SAMPLE = 5
SHIFT_RATIO, SHIFT_ALPHA = 0.25, 0.01
# A transcript decoded without the loop stop loops when its words end in a unit repeated
# 4+ times over 8+ words (looser than the token rule: a word is 1-3 tokens).
WORD_LOOP = LoopStop(min_repeats=4, min_tokens=8)
UTTERANCE_FIELDS = {"id", "ref", "hyp", "word_errors", "words", "char_errors", "chars"}
UTTERANCE_FIELDS |= {"loss", "tokens"}  # per-utterance numbers, not groups


def _finite(value):
    return isinstance(value, (int, float)) and math.isfinite(value)


def _argmin_epoch(epochs, key):
    """The epoch with the lowest ``key`` (the earlier on ties, as the checkpointer keeps)."""
    scored = [r for r in epochs if _finite(r.get(key))]
    if not scored:
        raise Unavailable(f"no epoch logs a valid {key}")
    return min(scored, key=lambda r: (r[key], r["epoch"]))["epoch"]


def best_epochs(records):
    """``(best_loss_epoch, best_wer_epoch)`` from the per-epoch valid numbers; either is
    ``None`` when no epoch logs it."""
    best = []
    for key in ("loss", "WER"):
        try:
            best.append(_argmin_epoch(records.epochs, key))
        except Unavailable:
            best.append(None)
    if best == [None, None]:
        raise Unavailable("no epoch logs a valid loss or WER")
    return tuple(best)


def best_metric_epoch(records):
    """``(selection_metric, epoch)``: the run's selection metric (``run.json``; WER when it
    predates it) and the epoch train.py keeps by it, the earlier on ties."""
    metric = records.run_config.get("selection_metric", "WER")
    epoch = best_epoch([r for r in records.epochs if _finite(r.get(metric))], metric)
    if epoch is None:
        raise Unavailable(f"no epoch logs a valid {metric}")
    return metric, epoch


def loss_wer_spearman(records):
    """Spearman's rho between valid loss and valid WER over epochs (needs 3 or more)."""
    pairs = [(r["loss"], r["WER"]) for r in records.epochs if _finite(r.get("loss"))]
    pairs = [p for p in pairs if _finite(p[1])]
    if len(pairs) < 3:
        raise Unavailable(
            f"{len(pairs)} epochs with valid loss and WER; a rank correlation needs 3"
        )
    rho, p = spearman(*zip(*pairs, strict=True))
    if rho is None:
        raise Unavailable("valid loss or WER is constant over epochs")
    return {"rho": rho, "p_value": p, "n_epochs": len(pairs)}


def wer_difference(records, loss_epoch, wer_epoch):
    """WER(min-loss checkpoint) - WER(min-WER checkpoint) on the same valid utterances."""
    if loss_epoch is None or wer_epoch is None:
        raise Unavailable("needs both a min-loss and a min-WER epoch")
    if loss_epoch == wer_epoch:
        return {"point": 0.0, "ci95": [0.0, 0.0], "method": "same checkpoint: no difference"}
    missing = [e for e in (loss_epoch, wer_epoch) if e not in records.valid_utterances]
    if missing:
        raise Unavailable(
            f"no per-utterance valid transcripts for epoch(s) {missing} "
            "(valid/utterances_epochN.jsonl)"
        )
    first = {u["id"]: u for u in records.valid_utterances[loss_epoch]}
    second = {u["id"]: u for u in records.valid_utterances[wer_epoch]}
    ids = sorted(set(first) & set(second))
    if not ids:
        raise Unavailable("the two epochs' valid files share no utterance id")
    blocked = all("spk_id" in first[i] for i in ids)
    blocks = [first[i]["spk_id"] for i in ids] if blocked else None
    point, lo, hi, n_blocks = paired_bootstrap_difference(
        [first[i]["word_errors"] for i in ids],
        [second[i]["word_errors"] for i in ids],
        [first[i]["words"] for i in ids],
        blocks,
    )
    unit = f"by speaker ({n_blocks} speakers, spk_id)" if blocked else "by utterance"
    return {
        "point": point,
        "ci95": [lo, hi],
        "method": (
            f"paired bootstrap over {len(ids)} valid utterances resampled {unit}, "
            f"{BOOTSTRAP_SAMPLES} resamples, percentile interval; WER points of the min-loss "
            "epoch minus the min-WER epoch (positive: the min-WER checkpoint is better)"
        ),
        "n_utterances": len(ids),
        "n_transcripts_differing": sum(first[i]["hyp"] != second[i]["hyp"] for i in ids),
        "within_noise": bool(lo <= 0 <= hi),
    }


def overconfidence(records):
    """Per epoch: flagged when ECE rises while entropy falls and the valid loss rises."""
    rows = [r for r in records.epochs if _finite(r.get("ece")) and _finite(r.get("entropy"))]
    if not rows:
        raise Unavailable("epochs.jsonl has no ece/entropy (calibration is not logged)")
    loss_key = "nll" if all(_finite(r.get("nll")) for r in rows) else "loss"
    result = []
    for previous, row in zip([None, *rows], rows, strict=False):
        flagged = previous is not None and (
            row["ece"] > previous["ece"]
            and row["entropy"] < previous["entropy"]
            and row[loss_key] > previous[loss_key]
        )
        result.append(
            {
                "epoch": row["epoch"],
                "ece": row["ece"],
                "entropy": row["entropy"],
                "valid_loss": row[loss_key],
                "valid_loss_key": loss_key,
                "flagged": bool(flagged),
            }
        )
    return result


def _noise_group_column(records, utterances):
    """The group column to compare within: a manifest column logged with every utterance
    (not the speaker) whose every value has MIN_NOISE_GROUP utterances or more."""
    candidates = records.run_config.get("group_columns") or sorted(
        {c for u in utterances for c, v in u.items() if isinstance(v, str)} - UTTERANCE_FIELDS
    )
    for column in candidates:
        if column == SPEAKER or any(not isinstance(u.get(column), str) for u in utterances):
            continue
        sizes = Counter(u[column] for u in utterances)
        if len(sizes) >= 2 and min(sizes.values()) >= MIN_NOISE_GROUP:
            return column
    return None


def label_noise(records):
    """Training utterances whose loss is an outlier within their group, at a stated FDR.

    The score is the log of the last epoch's teacher-forced loss per token. Its null
    distribution is estimated from the run itself, within each group (e.g. dialect: a hard
    dialect is not a label problem): centre the group's median, scale 1.4826 x its median
    absolute deviation (both unmoved by up to half the group being mislabelled). An
    utterance's p-value is the normal upper tail of its robust z-score; suspects are the
    Benjamini-Hochberg rejections at false-discovery rate NOISE_FDR over all utterances whose
    logged training transcript (where logged) disagrees with the label by NOISE_MIN_WER or
    more: the log-loss of clean speech has a longer upper tail than the normal, and its
    outliers are heard as labelled. With none, the hardest utterances are listed as
    ``hardest``, not as suspects.
    """
    logged = [u for u in records.train_utterances if _finite(u.get("loss"))]
    if not logged:
        raise Unavailable("no training utterances' losses (log/train_utterances.jsonl)")
    last_epoch = max(u["epoch"] for u in logged)
    latest = {u["id"]: u for u in logged if u["epoch"] == last_epoch}
    utterances = [latest[i] for i in sorted(latest)]
    if len(utterances) < MIN_NOISE_UTTERANCES:
        raise Unavailable(
            f"{len(utterances)} training utterances at the last epoch; a null distribution "
            f"needs {MIN_NOISE_UTTERANCES}"
        )
    column = _noise_group_column(records, utterances)
    scores = np.log(np.maximum([u["loss"] for u in utterances], LOSS_FLOOR))
    groups = [u[column] if column else "all" for u in utterances]
    z = np.zeros(len(utterances))
    null = {}
    for group in sorted(set(groups)):
        members = np.array([g == group for g in groups])
        centre, scale = robust_location_scale(scores[members])
        null[group] = {"n": int(members.sum()), "median_log_loss": centre, "scale": scale}
        z[members] = (scores[members] - centre) / scale
    p_values = stats.norm.sf(z)
    flagged = benjamini_hochberg(p_values, NOISE_FDR)
    with_text = all(u.get("hyp") is not None and u.get("ref") is not None for u in utterances)

    def entry(index):
        u = utterances[index]
        errors, words = word_errors(u.get("hyp"), u.get("ref")) if with_text else (0, 0)
        return {
            "id": u["id"],
            "loss": u["loss"],
            "robust_z": float(z[index]),
            "p_value": float(p_values[index]),
            "group": groups[index],
            "wer": (100.0 * errors / words if words else None) if with_text else None,
            "epoch": last_epoch,
            "ref": u.get("ref"),
            "hyp": u.get("hyp"),
        }

    order = np.argsort(-z, kind="stable")
    outliers = [entry(i) for i in order if flagged[i]]
    suspects = [s for s in outliers if s["wer"] is None or s["wer"] >= NOISE_MIN_WER]
    return {
        "suspects": suspects,
        "hardest": [] if suspects else [entry(i) for i in order[:HARDEST_LISTED]],
        "n_utterances": len(utterances),
        "epoch": last_epoch,
        "group_column": column,
        "null": null,
        "fdr": NOISE_FDR,
        "transcripts_checked": with_text,
        "outliers_heard_as_labelled": len(outliers) - len(suspects),
        "test": (
            "robust z of log(teacher-forced loss per token) at the last epoch against its "
            f"group's median and 1.4826 x MAD ({column or 'whole training set'}), normal upper "
            f"tail p-values, Benjamini-Hochberg at FDR {NOISE_FDR:.0%} over "
            f"{len(utterances)} utterances"
            + (
                f"; a suspect's training transcript has a WER of {NOISE_MIN_WER:.0f}% or more "
                "against its label"
                if with_text
                else "; no training transcripts logged, so no check that the model hears "
                "something else"
            )
        ),
    }


def _group_columns(utterances):
    if not utterances:
        return []
    columns = [
        c
        for c, v in utterances[0].items()
        if c not in UTTERANCE_FIELDS and isinstance(v, str) and c != "id"
    ]
    return [c for c in columns if 2 <= len({u.get(c) for u in utterances}) <= MAX_GROUP_VALUES]


def _wer(utterances):
    words = sum(u["words"] for u in utterances)
    return 100.0 * sum(u["word_errors"] for u in utterances) / words if words else None


def _paired_gain(first, last, confidence):
    """WER(first) - WER(last) of the same utterances with its paired-bootstrap interval,
    blocked by speaker when the group has MIN_SPEAKER_BLOCKS speakers or more."""
    ids = sorted(set(first) & set(last))
    speakers = [first[i].get("spk_id") for i in ids]
    blocked = None not in speakers and len(set(speakers)) >= MIN_SPEAKER_BLOCKS
    gain, lo, hi, _ = paired_bootstrap_difference(
        [first[i]["word_errors"] for i in ids],
        [last[i]["word_errors"] for i in ids],
        [first[i]["words"] for i in ids],
        speakers if blocked else None,
        confidence=confidence,
    )
    return gain, [lo, hi]


def lagging_groups(records, loss_epoch, wer_epoch):
    """Per-group WER by epoch. A group (of MIN_LAGGING_GROUP valid utterances or more: a few
    utterances' bootstrap interval is degenerate) lags when its gain from the first to the
    last epoch is credibly below the overall gain: the upper end of its paired-bootstrap
    interval (95%, Bonferroni-corrected over the column's groups) is under the overall gain,
    which must be positive, and its WER at the last epoch is above the overall one. Also the
    per-group difference between the min-loss and min-WER checkpoints: where that difference
    comes from."""
    epochs = sorted(records.valid_utterances)
    if len(epochs) < 2:
        raise Unavailable("needs per-utterance valid transcripts of at least two epochs")
    columns = _group_columns(records.valid_utterances[epochs[0]])
    if not columns:
        raise Unavailable("the valid utterances carry no group column (e.g. dialect, spk_id)")
    first, last = epochs[0], epochs[-1]
    by_id = {e: {u["id"]: u for u in records.valid_utterances[e]} for e in epochs}
    overall_last = _wer(records.valid_utterances[last])
    overall_gain = _wer(records.valid_utterances[first]) - overall_last
    result = {"from_epoch": first, "to_epoch": last, "overall_gain": overall_gain}
    result["groups"], result["lagging"] = {}, []
    for column in columns:
        table = {}
        values = sorted({u[column] for u in records.valid_utterances[first]})
        confidence = 1 - 0.05 / len(values)  # Bonferroni over the column's groups
        for value in values:
            members = {
                e: {i: u for i, u in by_id[e].items() if u.get(column) == value} for e in epochs
            }
            by_epoch = {e: _wer(list(members[e].values())) for e in epochs}
            gain, ci95 = _paired_gain(members[first], members[last], confidence)
            row = {"wer_by_epoch": by_epoch, "n": len(members[first]), "gain": gain}
            row["gain_ci95"] = ci95
            if loss_epoch in by_epoch and wer_epoch in by_epoch:
                row["min_loss_minus_min_wer"] = by_epoch[loss_epoch] - by_epoch[wer_epoch]
            table[value] = row
            behind = by_epoch[last] is not None and by_epoch[last] > overall_last
            enough = row["n"] >= MIN_LAGGING_GROUP
            if overall_gain > 0 and ci95[1] < overall_gain and behind and enough:
                result["lagging"].append(
                    {"column": column, "value": value, "gain": gain, "gain_ci95": ci95}
                )
        result["groups"][column] = table
    return result


def leakage(records):
    """Valid utterances whose id or normalised transcript also occurs in training."""
    valid = records.valid_utterances.get(max(records.valid_utterances, default=None))
    if not valid:
        raise Unavailable("no per-utterance valid transcripts (valid/utterances_epochN.jsonl)")
    if not records.train_transcripts:
        raise Unavailable("no training transcripts (train_utterances.jsonl, run.json train_csv)")
    train_texts = {" ".join(words_of(t)) for t in records.train_transcripts}
    train_ids = {u["id"] for u in records.train_utterances}
    same_text = sum(" ".join(words_of(u["ref"])) in train_texts for u in valid)
    same_id = sum(u["id"] in train_ids for u in valid)
    share = same_text / len(valid)
    return {
        "valid_utterances": len(valid),
        "same_id": same_id,
        "same_transcript": same_text,
        "same_transcript_share": share,
        "flagged": bool(same_id > 0 or share >= LEAKAGE_SHARE),
        "threshold": f"any shared id, or >= {LEAKAGE_SHARE:.0%} of valid transcripts in training",
    }


def _normalised(text):
    return " ".join(words_of(text))


def first_visit_novelty(records):
    """Each first-epoch visit with what the model had trained on before it: ``text_seen``
    (its normalised transcript, e.g. the same sentence in another voice) and
    ``speaker_seen`` (None when the logs carry no ``spk_id``). Utterances of one batch are
    scored before that batch's update, so they do not count as trained on for each other."""
    first_epoch = min((u["epoch"] for u in records.train_utterances), default=None)
    visits = [
        u
        for u in records.train_utterances
        if u["epoch"] == first_epoch and _finite(u.get("loss")) and u.get("seen", 1) == 1
    ]
    texts, speakers, result = set(), set(), []
    by_position = {}
    for u in visits:
        by_position.setdefault(u.get("position") or 0, []).append(u)
    for position in sorted(by_position):
        batch = by_position[position]
        for u in batch:
            speaker = u.get(SPEAKER)
            result.append(
                {
                    **u,
                    "text_seen": _normalised(u.get("ref")) in texts,
                    "speaker_seen": None if speaker is None else speaker in speakers,
                }
            )
        texts |= {_normalised(u.get("ref")) for u in batch}
        speakers |= {u.get(SPEAKER) for u in batch if u.get(SPEAKER) is not None}
    return first_epoch, result


def _shift_comparison(name, valid, baseline):
    """Valid NLL against the baseline's: ratio of means and two-sided Mann-Whitney p."""
    ratio = float(np.mean(valid) / np.mean(baseline))
    return {
        "comparison": name,
        "valid_nll": float(np.mean(valid)),
        "train_unseen_nll": float(np.mean(baseline)),
        "ratio": ratio,
        "p_value": float(mannwhitneyu(valid, baseline, alternative="two-sided").pvalue),
        "n_valid": len(valid),
        "n_train": len(baseline),
    }


def distribution_shift(records, label_noise_suspects=()):
    """Valid utterances against training utterances exactly as new to the model.

    In the first epoch, utterances visited late (last quarter) and for the first time are
    scored by nearly the model validated after it. They are a clean baseline only if their
    normalised transcript had not been trained on before the visit (the valid transcripts never
    were) and their speaker is as new as the valid speakers: never trained on for valid
    speakers absent from training, already trained on for valid speakers present in it
    (``spk_id`` logged). Valid utterances whose transcript occurs in training are left out,
    and so are training utterances named as label-noise suspects (a wrong label is new text,
    and its loss says nothing about the audio).
    Each speaker condition with MIN_SHIFT_SAMPLE utterances on both sides is one comparison
    (Bonferroni over them); the valid set is flagged when the valid NLL differs from the
    baseline's by SHIFT_RATIO or more. With no clean comparison no claim is made and
    ``confound`` says what prevented it.
    """
    first_epoch, visits = first_visit_novelty(records)
    suspects = set(label_noise_suspects)
    late = [
        u for u in visits if (u.get("position") or 0) >= LATE_POSITION and u["id"] not in suspects
    ]
    valid = [u for u in records.valid_utterances.get(first_epoch, []) if _finite(u.get("loss"))]
    if len(late) < MIN_SHIFT_SAMPLE or len(valid) < MIN_SHIFT_SAMPLE:
        raise Unavailable(
            f"needs {MIN_SHIFT_SAMPLE} or more late first-visit training losses "
            "(log/train_utterances.jsonl) and valid utterance losses of the first epoch"
        )
    train_texts = {_normalised(t) for t in records.train_transcripts}
    valid_clean_text = [u for u in valid if _normalised(u.get("ref")) not in train_texts]
    text_clean = [u for u in late if not u["text_seen"]]
    with_speakers = all(u["speaker_seen"] is not None for u in late) and all(
        u.get(SPEAKER) is not None for u in valid
    )
    train_speakers = {u.get(SPEAKER) for u in records.train_utterances}
    sides = {"speaker not in the logs": (valid_clean_text, text_clean)}
    if with_speakers:
        sides = {
            "valid speakers also in training": (
                [u for u in valid_clean_text if u[SPEAKER] in train_speakers],
                [u for u in text_clean if u["speaker_seen"]],
            ),
            "valid speakers new to training": (
                [u for u in valid_clean_text if u[SPEAKER] not in train_speakers],
                [u for u in text_clean if not u["speaker_seen"]],
            ),
        }
    comparisons, confounds = [], []
    sorting = records.run_config.get("sorting")
    if sorting in ("ascending", "descending"):  # late visits are the longest or shortest
        sides = {}
        confounds.append(f"batches sorted by length ({sorting}): late visits are not typical")
    for name, (valid_side, baseline) in sides.items():
        if not valid_side:
            continue
        if len(valid_side) >= MIN_SHIFT_SAMPLE and len(baseline) >= MIN_SHIFT_SAMPLE:
            comparisons.append(
                _shift_comparison(
                    name, [u["loss"] for u in valid_side], [u["loss"] for u in baseline]
                )
            )
            continue
        text_seen = sum(u["text_seen"] for u in late)
        reason = (
            f"{name}: {len(baseline)} clean late first-epoch training utterances "
            f"({MIN_SHIFT_SAMPLE} needed) and {len(valid_side)} valid ones; of {len(late)} late "
            f"first visits, {text_seen} had their transcript trained on before (the same "
            "sentence, e.g. in another voice)"
        )
        if with_speakers:
            speaker_seen = sum(u["speaker_seen"] for u in late)
            reason += f" and {speaker_seen} their speaker"
        confounds.append(reason)
    if len(valid_clean_text) < MIN_SHIFT_SAMPLE:
        confounds.append(
            f"{len(valid) - len(valid_clean_text)} of {len(valid)} valid transcripts occur in "
            "training: too few never trained on"
        )
    alpha = SHIFT_ALPHA / max(len(comparisons), 1)
    for comparison in comparisons:
        comparison["flagged"] = bool(
            comparison["p_value"] < alpha and abs(comparison["ratio"] - 1) >= SHIFT_RATIO
        )
    flagged = [c for c in comparisons if c["flagged"]]
    shown = max(flagged or comparisons or [{}], key=lambda c: abs(c.get("ratio", 1) - 1))
    naive = _shift_comparison(
        "all late first visits", [u["loss"] for u in valid], [u["loss"] for u in late]
    )
    return {
        "epoch": first_epoch,
        **{k: shown.get(k) for k in ("comparison", "valid_nll", "train_unseen_nll", "ratio")},
        **{k: shown.get(k) for k in ("p_value", "n_train", "n_valid")},
        "clean_comparison": bool(comparisons),
        "comparisons": comparisons,
        "confound": "; ".join(confounds) if not comparisons else None,
        "confounded_ratio": naive["ratio"],
        "confounded_p_value": naive["p_value"],
        "n_late_first_visits": len(late),
        "n_late_text_seen": sum(u["text_seen"] for u in late),
        "n_label_noise_suspects_left_out": sum(
            (u.get("position") or 0) >= LATE_POSITION and u["id"] in suspects for u in visits
        ),
        "augment": records.run_config.get("augment"),
        "flagged": bool(flagged),
        "threshold": (
            f"|valid/train NLL - 1| >= {SHIFT_RATIO} with Mann-Whitney p < {SHIFT_ALPHA} "
            "(Bonferroni over the speaker conditions compared), against late first-epoch "
            "training utterances whose transcript (and, as for the valid speakers, speaker) "
            "had not been trained on"
        ),
    }


def repetition_loops(records):
    """Per epoch, the valid transcripts that loop and what they do to its WER.

    A loop (a phrase repeated until the length limit) adds dozens of insertions to the WER
    while the teacher-forced loss, which never sees the search, barely moves: one of the ways
    loss and WER part. Loops are the hypotheses the recipe's loop stop ended
    (``loop_stopped``) and transcripts whose words end in a repeated unit (``WORD_LOOP``).
    """
    if not records.valid_utterances:
        raise Unavailable("no per-utterance valid transcripts (valid/utterances_epochN.jsonl)")
    epochs = []
    for epoch, utterances in sorted(records.valid_utterances.items()):
        looping, other = [], []
        for u in utterances:
            loops = u.get("loop_stopped") or WORD_LOOP.cut(u["hyp"].split()) is not None
            (looping if loops else other).append(u)
        errors = sum(u["word_errors"] for u in utterances)
        loop_errors = sum(u["word_errors"] for u in looping)
        epochs.append(
            {
                "epoch": epoch,
                "looping": [u["id"] for u in looping],
                "word_error_share": loop_errors / errors if errors else 0.0,
                "wer": _wer(utterances),
                "wer_without_loops": _wer(other),
            }
        )
    return {"epochs": epochs, "flagged": any(e["looping"] for e in epochs)}


def valid_set(records, wer_epoch):
    """Size of the validation set behind the WER: utterances, words, speakers."""
    utterances = records.valid_utterances.get(wer_epoch)
    if not utterances:
        raise Unavailable("no per-utterance valid transcripts for the min-WER epoch")
    speakers = {u["spk_id"] for u in utterances if "spk_id" in u}
    return {
        "n_utterances": len(utterances),
        "n_words": sum(u["words"] for u in utterances),
        "n_speakers": len(speakers) or None,
    }


def mwer_expected_wer(records):
    """With ``objective: mwer``, per epoch: the training batches' expected and N-best oracle
    WER (each batch scored before its update) next to the valid WER (greedy, after the epoch),
    and their difference ``valid_minus_expected``."""
    rows = [r for r in records.epochs if _finite(r.get("train_expected_wer"))]
    if not rows:
        raise Unavailable("no epoch logs train_expected_wer (objective: mwer)")
    return [
        {
            "epoch": r["epoch"],
            "train_expected_wer": r["train_expected_wer"],
            "train_oracle_wer": r.get("train_oracle_wer"),
            "train_ce": r.get("train_ce"),
            "valid_wer": r.get("WER"),
            "valid_minus_expected": r["WER"] - r["train_expected_wer"]
            if _finite(r.get("WER"))
            else None,
        }
        for r in rows
    ]


def epoch_table(records):
    """The per-epoch numbers the plots and report show, with the train/valid loss gap."""
    table = []
    for r in records.epochs:
        row = {k: r.get(k) for k in ("epoch", "lr", "train_loss", "loss", "WER", "nll")}
        row.update({k: r[k] for k in ("CER", "BLEU", "chrF") if k in r})
        both = _finite(r.get("train_loss")) and _finite(r.get("loss"))
        row["gap"] = r["loss"] - r["train_loss"] if both else None
        table.append(row)
    return table
