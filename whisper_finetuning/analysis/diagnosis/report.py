"""Plain-language verdict and the Markdown report of a diagnosis.

The verdict is a list of sentences a user can act on: which checkpoint to trust, whether
the difference is noise, what explains the loss curve, and what to check next. Every
number it quotes comes from ``diagnostics.json``.
"""

SHOWN_IDS = 5
SUSPECTS_SHOWN = 20
SOURCES = {
    "experiment": "this recipe's experiment folder",
    "trainer_state": "a transformers Trainer state",
    "train_log": "a SpeechBrain train log",
}
CAUSE_SENTENCES = {
    "running_mean_artifact": (
        "The logged loss ({series}) is a cumulative mean reset every epoch ({how}): at an "
        "epoch's end it averages the whole epoch, so the next epoch's first batches look "
        "better than its last ones. Plot the per-batch loss instead."
    ),
    "ordering": (
        "Batches come in a sorted or fixed order (sorting: {sorting}; batch length vs position "
        "rho {length_vs_position_rho:.2f}) and the step loss follows batch length (rho "
        "{loss_vs_length_rho:.2f}), which predicts {explained_fraction:.0%} of the drop. "
        "Shuffle the training set to see the real trend."
    ),
    "memorization": (
        "Training utterances' loss falls by {train_drop_mean:.3f} on re-exposure while data "
        "never trained on falls by {never_seen_drop_mean:.3f} (p = {p_value:.2g}), and after "
        "epoch(s) {never_seen_stalled_after} its WER rose beyond noise: the model memorises the "
        "training set. More epochs will lower the training loss, not the WER; "
        "add data or augmentation, or stop earlier."
    ),
    "schedule": (
        "The training conditions change at the boundary (learning-rate jump: {lr_jump}, "
        "largest change of log(lr) beyond the schedule's {lr_max_jump}; augmentation switch: "
        "{augmentation_switch}, "
        "largest change in augmented share {augmented_max_change}): the loss moves with the "
        "schedule, not with transcription quality."
    ),
}


REEXPOSURE_SENTENCE = (
    "Re-exposure explains it: training utterances' loss falls by {train_drop_mean:.3f} when "
    "they come round again, while data never trained on falls by {never_seen_drop_mean:.3f} "
    "(p = {p_value:.2g}), but that data's WER did not get worse beyond noise. The model fits "
    "the utterances it has seen faster than it generalises, which lowers the training loss "
    "more than the WER: no sign of memorisation yet; select by valid WER, not by the loss."
)


def _wer_of(diagnostics, epoch):
    for row in diagnostics["epochs"]:
        if row["epoch"] == epoch:
            return row.get("WER")
    return None


def _loss_gap(d, loss_epoch, wer_epoch):
    """How much lower the min-loss epoch's valid loss is, absolute and relative."""
    losses = {r["epoch"]: r["loss"] for r in d["epochs"]}
    gap = losses[wer_epoch] - losses[loss_epoch]
    return f"lower by {gap:.4g}, {100 * gap / losses[wer_epoch]:.2g}%"


def _checkpoint_sentences(d):
    loss_epoch, wer_epoch = d["best_loss_epoch"], d["best_wer_epoch"]
    if wer_epoch is None:
        return ["No epoch logs a valid WER: this run cannot say which checkpoint to trust."]
    wer = _wer_of(d, wer_epoch)
    if loss_epoch == wer_epoch:
        return [
            f"Trust epoch {wer_epoch}: it has both the lowest valid loss and the lowest valid "
            f"WER ({wer:.2f})."
        ]
    sentences = []
    if loss_epoch is not None and _wer_of(d, loss_epoch) == wer:
        sentences.append(
            f"The min-loss epoch ({loss_epoch}) has the same valid WER as the min-WER epoch "
            f"({wer_epoch}, {wer:.2f}): the loss difference ({_loss_gap(d, loss_epoch, wer_epoch)})"
            f" changes no transcript score; the min-WER rule keeps epoch {wer_epoch}."
        )
    elif loss_epoch is not None:
        sentences.append(
            f"Trust the min-WER checkpoint (epoch {wer_epoch}, valid WER {wer:.2f}) rather than "
            f"the min-loss one (epoch {loss_epoch}, WER {_wer_of(d, loss_epoch):.2f}; valid "
            f"loss {_loss_gap(d, loss_epoch, wer_epoch)}): WER measures the transcripts users "
            "get, while the valid loss scores token probabilities, which can improve while "
            "the transcripts get worse."
        )
    difference = d["wer_difference"]
    if difference is None:
        sentences.append(
            "Whether the two checkpoints really differ cannot be tested: "
            f"{d['skipped'].get('wer_difference', 'no per-utterance results')}."
        )
    elif loss_epoch is not None:
        lo, hi = difference["ci95"]
        size = d.get("valid_set") or {}
        amount = (
            f"{difference['point']:+.2f} WER points (95% CI {lo:+.2f} to {hi:+.2f}, paired "
            f"bootstrap over {difference['n_utterances']} utterances"
            + (f", {size['n_words']} words" if size.get("n_words") else "")
            + ")"
        )
        if difference["within_noise"]:
            sentences.append(
                f"The difference between them, {amount}, is within noise: this valid set cannot "
                "tell them apart. Listen to both on the "
                f"{difference['n_transcripts_differing']} utterances where their transcripts "
                "differ, or validate on more data, before trusting either."
            )
        else:
            sentences.append(
                f"The difference, {amount}, is beyond bootstrap noise: the min-WER checkpoint "
                "is better on this valid set."
            )
    return sentences


def _kept_sentence(d):
    metric, epoch = d.get("selection_metric"), d.get("best_metric_epoch")
    if metric not in (None, "WER") and epoch is not None:
        value = next(r.get(metric) for r in d["epochs"] if r["epoch"] == epoch)
        return [
            f"selection_metric is {metric}: train.py keeps epoch {epoch} (valid {metric} "
            f"{value:.2f}); the min-WER epoch is {d['best_wer_epoch']}."
        ]
    kept = d.get("kept_checkpoint")
    if not kept:
        return []
    return [
        f"The Trainer kept {kept['checkpoint']} (best metric {kept['best_metric']}): check that "
        "its metric_for_best_model was the WER, not the loss."
    ]


def _boundary_sentences(d):
    boundary = d["epoch_boundary"]
    if boundary is None:
        reason = d["skipped"].get("epoch_boundary", "")
        return [f"Epoch-boundary loss drops cannot be analysed: {reason}."]
    if not boundary["detected"]:
        # What the logs show about the logger, the order or the schedule holds without a drop.
        findings = [t for t in boundary["tests"] if t["passed"] and t["cause"] != "memorization"]
        return (
            [
                f"The training loss ({boundary['series']}) shows no drop at epoch boundaries "
                f"beyond its within-epoch trend (drop {boundary['drop']:.3f}, p = "
                f"{boundary['p_value']:.2g})."
            ]
            + [CAUSE_SENTENCES[t["cause"]].format_map(_formatted(t["evidence"])) for t in findings]
            + _order_without_effect(boundary)
        )
    sentences = [
        f"The training loss ({boundary['series']}) drops by {boundary['drop']:.3f} at epoch "
        f"boundaries (p = {boundary['p_value']:.2g}, {boundary['k']}-step windows)."
    ]
    for cause in boundary["causes"]:
        sentences.append(CAUSE_SENTENCES[cause["cause"]].format_map(_formatted(cause["evidence"])))
    sentences += _order_without_effect(boundary)
    memorization = d.get("memorization") or {}
    if not boundary["causes"] and memorization.get("evidence", {}).get(
        "reexposure_beyond_never_seen"
    ):
        sentences.append(REEXPOSURE_SENTENCE.format_map(_formatted(memorization["evidence"])))
    elif not boundary["causes"]:
        tested = ", ".join(t["cause"] for t in boundary["tests"]) or "none"
        untested = ", ".join(t["cause"] for t in boundary["not_tested"]) or "none"
        sentences.append(
            f"No tested cause explains it (tested: {tested}; not testable here: {untested}). "
            "Check how the loss is logged and whether the data loader repeats batches, and "
            "rule out a pipeline bug with the sanity mode (--sanity_utterances=N)."
        )
    return sentences


def _order_without_effect(boundary):
    """A sorted or repeating batch order that the loss does not follow is still reported."""
    return [
        "Batches come in a sorted or fixed order (sorting: {sorting}; batch length vs position "
        "rho {length_vs_position_rho:.2f}, batch lengths repeating between epochs r "
        "{length_repeat_between_epochs_r:.2f}), but the step loss does not follow batch length "
        "(rho {loss_vs_length_rho:.2f}, p = {loss_vs_length_p:.2g}): the order does not explain "
        "the loss curve here. Shuffle anyway, so that each epoch's batches differ.".format_map(
            _formatted(t["evidence"])
        )
        for t in boundary["tests"]
        if t["cause"] == "ordering" and not t["passed"] and t["evidence"]["order_not_random"]
    ]


class _NotAvailable:
    """A missing value reads 'n/a' whatever its format spec."""

    def __format__(self, spec):
        return "n/a"


class _Formatted(dict):
    """Evidence values for sentences: floats keep their format spec, None reads 'n/a'."""

    def __missing__(self, key):
        return _NotAvailable()


def _formatted(evidence):
    shown = {}
    for key, value in evidence.items():
        if isinstance(value, float):
            shown[key] = float(f"{value:.4g}")
        elif isinstance(value, list) and all(isinstance(v, (int, str)) for v in value):
            shown[key] = ", ".join(map(str, value))
        elif value is not None and not isinstance(value, list):
            shown[key] = value
    return _Formatted(shown)


def _other_sentences(d):
    sentences = []
    memorization = d.get("memorization")
    claimed = {c["cause"] for c in (d["epoch_boundary"] or {}).get("causes", [])}
    if memorization and memorization["passed"] and "memorization" not in claimed:
        sentences.append(
            CAUSE_SENTENCES["memorization"].format_map(_formatted(memorization["evidence"]))
        )
    flagged = [r for r in d["overconfidence"] or [] if r["flagged"]]
    if flagged:
        epochs = ", ".join(str(r["epoch"]) for r in flagged)
        sentences.append(
            f"At epoch(s) {epochs} the model grew overconfident: ECE rose while entropy fell "
            "and the valid loss rose. That raises the loss without necessarily hurting the "
            "transcripts, a loss/metric mismatch: select by WER."
        )
    rho = d["loss_wer_spearman"]
    if rho is not None:
        agree = "agree" if rho >= 0.5 else "disagree"
        sentences.append(
            f"Valid loss and WER {agree} over epochs (Spearman rho = {rho:.2f})"
            + ("." if rho >= 0.5 else ": the loss is no stand-in for WER on this run.")
        )
    noise = d.get("label_noise")
    if noise and noise["suspects"]:
        top = ", ".join(
            f"{s['id']} (z = {s['robust_z']:.1f})" for s in noise["suspects"][:SHOWN_IDS]
        )
        sentences.append(
            f"{len(noise['suspects'])} of {noise['n_utterances']} training utterances are "
            f"label-noise suspects at a {noise['fdr']:.0%} false-discovery rate: their loss is "
            f"an outlier within their {noise['group_column'] or 'training set'}"
            + (
                " and the model transcribes them otherwise than labelled"
                if noise.get("transcripts_checked")
                else ""
            )
            + f". Check their labels first: {top}."
        )
    elif noise:
        hardest = ", ".join(s["id"] for s in noise["hardest"][:SHOWN_IDS])
        heard = noise.get("outliers_heard_as_labelled") or 0
        sentences.append(
            "No evidence of label noise: no training utterance's loss is an outlier within its "
            f"{noise['group_column'] or 'training set'} at a {noise['fdr']:.0%} "
            "false-discovery rate"
            + (
                f" while the model transcribes it otherwise than labelled ({heard} loss "
                "outlier(s) are transcribed as labelled)"
                if heard
                else ""
            )
            + f". The hardest utterances ({hardest}) are hard, not suspects."
        )
    lagging = (d.get("lagging_groups") or {}).get("lagging", [])
    if lagging:
        names = ", ".join(
            f"{g['column']}={g['value']} ({g['gain']:+.1f}, 95% CI {g['gain_ci95'][0]:+.1f} to "
            f"{g['gain_ci95'][1]:+.1f})"
            for g in lagging
        )
        overall = d["lagging_groups"]["overall_gain"]
        sentences.append(
            f"Lagging groups (behind at the end, and gaining credibly less than the overall "
            f"{overall:.1f} WER points from the first to the last epoch): {names}; check their "
            "share of the training data and their audio."
        )
    leak = d.get("leakage")
    if leak and leak["flagged"]:
        sentences.append(
            f"{leak['same_transcript']} of {leak['valid_utterances']} valid transcripts (and "
            f"{leak['same_id']} ids) also occur in training: the valid WER flatters the model; "
            "split by text and speaker."
        )
    shift = d.get("distribution_shift")
    if shift and shift["flagged"]:
        harder = "harder" if shift["ratio"] > 1 else "easier"
        sentences.append(
            f"Valid utterances are {harder} for the model than training utterances exactly as "
            f"new to it ({shift['comparison']}; transcript not trained on before: NLL "
            f"{shift['valid_nll']:.3f} vs {shift['train_unseen_nll']:.3f}, p = "
            f"{shift['p_value']:.2g}): the valid set is not drawn from the training "
            "distribution"
            + (" (or augmentation makes training harder)" if shift["augment"] else "")
            + ", so its WER says little about the training domain and vice versa."
        )
    elif shift and not shift["clean_comparison"]:
        sentences.append(
            "No distribution-shift claim: no clean comparison of valid utterances with "
            f"training utterances the model had not trained on ({shift['confound']}). Comparing "
            f"with all late first visits (ratio {shift['confounded_ratio']:.2f}) would be "
            "confounded by what was trained on before them."
        )
    loops = d.get("repetition_loops")
    if loops and loops["flagged"]:
        per_epoch = "; ".join(
            f"epoch {e['epoch']}: {len(e['looping'])} ({_share(e['word_error_share'])} of its "
            f"word errors; WER {_number(e['wer'])}, {_number(e['wer_without_loops'])} without them)"
            for e in loops["epochs"]
            if e["looping"]
        )
        sentences.append(
            f"Valid transcripts with repetition loops: {per_epoch}. A loop adds insertions to "
            "the WER that the teacher-forced loss never sees; judge those epochs by the WER "
            "without them, and keep the loop stop on (loop_stop)."
        )
    sentences += _pseudo_label_sentences(d.get("pseudo_labels"))
    if d["skipped"]:
        sentences.append(
            "Not analysed for lack of data: "
            + ", ".join(sorted(d["skipped"]))
            + " (report.md says why for each)."
        )
    return sentences


def _pseudo_label_sentences(pseudo):
    """Seed 001's case named, or the pseudo rows' trend beside the valid WER's."""
    if not pseudo:
        return []
    first, last = pseudo["epochs"][0], pseudo["epochs"][-1]
    trend = (
        f"from epoch {pseudo['from_epoch']} to {pseudo['to_epoch']} the training loss on "
        f"pseudo-labelled rows went from {first['train_loss_pseudo']:.3f} to "
        f"{last['train_loss_pseudo']:.3f} ({-pseudo['pseudo_loss_fall']:+.0%}) and the valid "
        f"WER (human labels) from {first['valid_wer']:.2f} to {last['valid_wer']:.2f}"
    )
    if pseudo["flagged"]:
        return [
            f"Fitting the pseudo-labels, not the speech: {trend}. The falling loss reflects "
            "the labeller's errors being learnt; filter harder (pseudo_label --wer_threshold "
            "and the confidence thresholds), lower pseudo_label_weight, or relabel with a "
            "better model."
        ]
    return [f"Pseudo-labels: {trend}; no sign of learning the labeller's errors."]


def verdict(diagnostics):
    """The plain sentences at the top of the report and in ``diagnostics.json``."""
    return (
        _checkpoint_sentences(diagnostics)
        + _kept_sentence(diagnostics)
        + _boundary_sentences(diagnostics)
        + _other_sentences(diagnostics)
    )


def _number(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return "n/a" if value is None else str(value)


def _evidence_line(evidence):
    return ", ".join(
        f"{k}={_number(v)}" for k, v in evidence.items() if not isinstance(v, (list, dict))
    )


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_number(c) for c in row) + " |" for row in rows]
    return lines


def _boundary_lines(boundary):
    lines = [
        f"Series `{boundary['series']}`, windows of k = {boundary['k']} steps: drop "
        f"{boundary['drop']:.4f}, p = {boundary['p_value']:.3g}; net of the local trend: "
        f"{boundary['trend_adjusted_drop']:.4f}, p = {boundary['trend_adjusted_p_value']:.3g}. "
        f"Detected: **{boundary['detected']}**.",
        "",
        f"Test: {boundary['test']}.",
        "",
        *_table(
            ["after epoch", "last k mean", "first k mean", "drop"],
            [
                [b["after_epoch"], b["last_k_mean"], b["first_k_mean"], b["drop"]]
                for b in boundary["boundaries"]
            ],
        ),
        "",
    ]
    claimed = {c["cause"] for c in boundary["causes"]}
    for test in boundary["tests"]:
        status = "claimed" if test["cause"] in claimed else "not claimed"
        status += "" if test["passed"] else " (test not passed)"
        lines.append(
            f"- **{test['cause']}**: {status}. Evidence: {_evidence_line(test['evidence'])}."
        )
        lines.append(f"  Threshold: {test['threshold']}.")
    for missing in boundary["not_tested"]:
        lines.append(f"- **{missing['cause']}**: not tested: {missing['reason']}.")
    return lines


def markdown(d, folder):
    """The whole ``report.md``."""
    lines = [f"# Diagnosis of `{folder}`", ""]
    lines += [f"Read from {SOURCES[d['source']]}: {', '.join(d['files'])}.", "", "## Verdict", ""]
    lines += [f"- {sentence}" for sentence in d["verdict"]]
    lines += ["", "## Epochs", ""]
    lines += _table(
        [
            "epoch",
            "lr",
            "train loss",
            "valid loss",
            "valid WER",
            "valid NLL",
            "valid - train",
            "mark",
        ],
        [
            [
                r["epoch"],
                r["lr"],
                r["train_loss"],
                r["loss"],
                r["WER"],
                r["nll"],
                r["gap"],
                " ".join(
                    mark
                    for mark, epoch in (
                        ("min loss", d["best_loss_epoch"]),
                        ("min WER", d["best_wer_epoch"]),
                    )
                    if epoch == r["epoch"]
                ),
            ]
            for r in d["epochs"]
        ],
    )
    if d["wer_difference"]:
        w = d["wer_difference"]
        lines += ["", "## Min-loss vs min-WER checkpoint", ""]
        lo, hi = w["ci95"]
        lines += [f"WER difference {w['point']:+.3f} points, 95% CI [{lo:+.3f}, {hi:+.3f}]: "]
        lines[-1] += f"{w['method']}."
    if d["epoch_boundary"]:
        lines += ["", "## Epoch-boundary drop", "", *_boundary_lines(d["epoch_boundary"])]
    if d["overconfidence"]:
        lines += ["", "## Calibration per epoch", ""]
        lines += ["Flagged when ECE rises while entropy falls and the valid loss rises.", ""]
        lines += _table(
            ["epoch", "ECE", "entropy", "valid loss", "flagged"],
            [
                [r["epoch"], r["ece"], r["entropy"], r["valid_loss"], r["flagged"]]
                for r in d["overconfidence"]
            ],
        )
    noise = d.get("label_noise")
    if noise:
        listed = noise["suspects"] or noise["hardest"]
        title = "Label-noise suspects" if noise["suspects"] else "Hardest training utterances"
        lines += ["", f"## {title}", "", f"Test: {noise['test']}.", ""]
        if not noise["suspects"]:
            lines += ["No utterance passes: these are the hardest, not suspects.", ""]
        lines += _table(
            ["id", "group", "loss", "robust z", "p", "WER", "reference", "model's transcript"],
            [
                [s["id"], s["group"], s["loss"], s["robust_z"], s["p_value"], s["wer"]]
                + [s["ref"], s["hyp"]]
                for s in listed[:SUSPECTS_SHOWN]
            ],
        )
    lagging = d.get("lagging_groups")
    if lagging:
        lines += ["", "## Groups", ""]
        lines += [
            f"Gain: WER of epoch {lagging['from_epoch']} minus epoch {lagging['to_epoch']} "
            f"(overall {lagging['overall_gain']:+.2f}); a group lags when its whole interval "
            "is below the overall gain and it ends above the overall WER.",
            "",
        ]
        for column, table in lagging["groups"].items():
            epochs = sorted({e for v in table.values() for e in v["wer_by_epoch"]})
            lines += _table(
                [column, "n", *[f"WER epoch {e}" for e in epochs], "gain", "gain 95% CI"],
                [
                    [
                        value,
                        v["n"],
                        *[v["wer_by_epoch"][e] for e in epochs],
                        v["gain"],
                        "{:+.2f} to {:+.2f}".format(*v["gain_ci95"]),
                    ]
                    for value, v in table.items()
                ],
            )
            lines.append("")
    loops = d.get("repetition_loops")
    if loops and loops["flagged"]:
        lines += ["", "## Repetition loops in the valid transcripts", ""]
        lines += _table(
            ["epoch", "looping", "share of word errors", "WER", "WER without them"],
            [
                [
                    e["epoch"],
                    ", ".join(e["looping"]) or "-",
                    f"{100 * e['word_error_share']:.0f}%",
                    e["wer"],
                    e["wer_without_loops"],
                ]
                for e in loops["epochs"]
            ],
        )
    pseudo = d.get("pseudo_labels")
    if pseudo:
        lines += ["", "## Training loss per label source", ""]
        lines += _table(
            ["epoch", "train loss (pseudo)", "train loss (human)", "valid WER"],
            [
                [e["epoch"], e["train_loss_pseudo"], e["train_loss_human"], e["valid_wer"]]
                for e in pseudo["epochs"]
            ],
        )
    sections = (
        ("leakage", "Leakage"),
        ("distribution_shift", "Distribution shift"),
        ("valid_set", "Validation set"),
    )
    for key, title in sections:
        if d.get(key):
            lines += ["", f"## {title}", "", _evidence_line(d[key]) + "."]
    if d["plots"]:
        lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in d["plots"]]
    lines += ["", "## Not analysed", ""]
    lines += [f"- **{name}**: {reason}." for name, reason in sorted(d["skipped"].items())] or [
        "- nothing: every analysis had its data."
    ]
    if d["notes"]:
        lines += ["", "## Notes on the logs", ""] + [f"- {note}" for note in d["notes"]]
    return "\n".join(lines) + "\n"


def _share(value):
    """A fraction as a percentage; ``n/a`` where there was nothing to divide (no word errors)."""
    return "n/a" if value is None else f"{100 * value:.0f}%"
