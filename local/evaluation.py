"""Scoring transcripts: normalised WER and CER, bootstrap intervals, per-group numbers.

A ``Scorer`` collects one stage's utterances and writes what a user reads afterwards:
``wer_NAME.txt`` (SpeechBrain's ``%WER`` headline and per-utterance alignments) and
``summary_NAME.json`` (headline numbers with 95% intervals, per group of any grouping column).
"""

import json
import logging
import math
import os
import random

from speechbrain.utils.metric_stats import ErrorRateStats
from transformers.models.whisper.english_normalizer import (
    BasicTextNormalizer,
    EnglishTextNormalizer,
)

logger = logging.getLogger(__name__)

NORMALIZERS = ("english", "basic", "none")
BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 0


def text_normalizer(kind, tokenizer, english):
    """The text normaliser named ``kind``: Whisper's English one, its basic one, or none.

    ``auto`` picks English when the transcripts are ``english`` and basic otherwise. A local
    checkpoint without ``normalizer.json`` has no spelling map: English normalisation then
    runs without it, with a warning, rather than failing.
    """
    if kind == "auto":
        kind = "english" if english else "basic"
    if kind == "english":
        spelling = getattr(tokenizer, "english_spelling_normalizer", None)
        if spelling is None:
            logger.warning(
                "no normalizer.json with the checkpoint: English spelling map not applied"
            )
        return EnglishTextNormalizer(spelling or {})
    if kind == "basic":
        return BasicTextNormalizer()
    if kind == "none":
        return str.strip
    raise ValueError(f"unknown normalizer '{kind}'; choose auto or one of {NORMALIZERS}")


def _ratio_ci95(utterances, numerator, denominator, block_key):
    """95% bootstrap interval of sum(numerator) / sum(denominator) over utterances, in percent.

    Resamples blocks (speakers, when ``block_key`` is given) rather than single utterances, so
    correlated utterances of one speaker do not make the interval look tighter than it is.
    """
    blocks = {}
    for utt in utterances:
        key = utt.get(block_key, utt["id"]) if block_key else utt["id"]
        num, den = blocks.get(key, (0, 0))
        blocks[key] = (num + utt[numerator], den + utt[denominator])
    values = list(blocks.values())
    rng = random.Random(BOOTSTRAP_SEED)
    estimates = []
    for _ in range(BOOTSTRAP_SAMPLES):
        sample = rng.choices(values, k=len(values))
        den = sum(d for _, d in sample)
        estimates.append(100.0 * sum(n for n, _ in sample) / den if den else 0.0)
    estimates.sort()
    return [
        estimates[int(0.025 * BOOTSTRAP_SAMPLES)],
        estimates[int(0.975 * BOOTSTRAP_SAMPLES) - 1],
    ]


def _rate(utterances, numerator, denominator):
    """Corpus-level error rate in percent."""
    den = sum(u[denominator] for u in utterances)
    return 100.0 * sum(u[numerator] for u in utterances) / den if den else 0.0


def min_wer_earliest(ckpt):
    """Checkpoint importance: lowest valid WER first, the earlier epoch on ties."""
    if "WER" not in ckpt.meta:
        return (-math.inf, 0)
    return (-ckpt.meta["WER"], -ckpt.meta["epoch"])


def min_loss_earliest(ckpt):
    """Checkpoint importance: lowest valid loss first, the earlier epoch on ties."""
    if "loss" not in ckpt.meta:
        return (-math.inf, 0)
    return (-ckpt.meta["loss"], -ckpt.meta["epoch"])


class Scorer:
    """Collects hypotheses and references of one stage and summarises them.

    Arguments
    ---------
    normalize : callable
        Text normaliser applied to both sides before scoring.
    group_columns : list of str
        Manifest columns to report per value of (e.g. ``dialect``, ``spk_id``).
    """

    def __init__(self, normalize, group_columns=()):
        self.normalize = normalize
        self.group_columns = list(group_columns)
        self.wer = ErrorRateStats()
        self.cer = ErrorRateStats(split_tokens=True)
        self.raw_wer = ErrorRateStats()
        self.utterances = []

    def append(self, ids, hyps, refs, groups=None, extra=None):
        """Score a batch; ``groups`` maps a column name to its values for the batch.

        ``extra`` maps other per-utterance fields (e.g. ``loss``) to their values for the
        batch: recorded with each utterance, not grouped by.
        """
        groups = groups or {}
        extra = extra or {}
        norm_hyps = [self.normalize(h).split() for h in hyps]
        norm_refs = [self.normalize(r).split() for r in refs]
        self.wer.append(ids, norm_hyps, norm_refs)
        self.cer.append(ids, norm_hyps, norm_refs)
        self.raw_wer.append(ids, [h.split() for h in hyps], [r.split() for r in refs])
        for i, utt_id in enumerate(ids):
            wer, cer = self.wer.scores[-len(ids) + i], self.cer.scores[-len(ids) + i]
            utt = {
                "id": utt_id,
                "ref": refs[i],
                "hyp": hyps[i],
                "word_errors": wer["num_edits"],
                "words": wer["num_ref_tokens"],
                "char_errors": cer["num_edits"],
                "chars": cer["num_ref_tokens"],
            }
            utt.update({column: values[i] for column, values in groups.items()})
            utt.update({field: values[i] for field, values in extra.items()})
            self.utterances.append(utt)

    def summary(self, epoch=None):
        """Headline WER/CER (percent) with 95% intervals, per group, and counts."""
        block = "spk_id" if self.utterances and "spk_id" in self.utterances[0] else None
        summary = {
            "wer": _rate(self.utterances, "word_errors", "words"),
            "cer": _rate(self.utterances, "char_errors", "chars"),
            "wer_ci95": _ratio_ci95(self.utterances, "word_errors", "words", block),
            "cer_ci95": _ratio_ci95(self.utterances, "char_errors", "chars", block),
            "wer_raw": self.raw_wer.summarize("error_rate"),
            "n_utterances": len(self.utterances),
            "epoch": epoch,
            "per_group": {},
        }
        present = [c for c in self.group_columns if self.utterances and c in self.utterances[0]]
        for column in present:
            per_value = {}
            for value in sorted({u[column] for u in self.utterances}):
                members = [u for u in self.utterances if u[column] == value]
                per_value[value] = {
                    "wer": _rate(members, "word_errors", "words"),
                    "cer": _rate(members, "char_errors", "chars"),
                    "ci95": _ratio_ci95(members, "word_errors", "words", block),
                    "n": len(members),
                }
            summary["per_group"][column] = per_value
        return summary

    def write(self, folder, name, epoch=None, model=None):
        """Write ``wer_NAME.txt``, ``summary_NAME.json`` and ``utterances_NAME.jsonl``.

        ``model`` (the checkpoint's source) is recorded so a summary can be told apart from one
        of another model.
        """
        os.makedirs(folder, exist_ok=True)
        summary = {**self.summary(epoch), "model": model}
        with open(os.path.join(folder, f"wer_{name}.txt"), "w") as out:
            self.wer.write_stats(out)
        write_json(os.path.join(folder, f"summary_{name}.json"), summary)
        with open(os.path.join(folder, f"utterances_{name}.jsonl"), "w") as out:
            for utt in self.utterances:
                out.write(json.dumps(utt) + "\n")
        return summary


def append_jsonl(path, record):
    """Append one JSON record as a line (machine-readable logs)."""
    with open(path, "a") as out:
        out.write(json.dumps(record) + "\n")


def write_json(path, data):
    """Write JSON atomically, so a reader never sees half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as out:
        json.dump(data, out, indent=2)
    os.replace(tmp, path)


def _rates(summary, group):
    """Overall and per-group WER/CER of a summary, in the ``demo_results.json`` shape."""
    per_group = summary["per_group"].get(group, {})
    return {
        "overall": {"wer": summary["wer"], "cer": summary["cer"]},
        "per_dialect": {k: {"wer": v["wer"], "cer": v["cer"]} for k, v in per_group.items()},
    }


def write_comparison(output_folder, test_name, group="dialect"):
    """Zero-shot vs fine-tuned on one test set: ``demo_results.json``/``.txt`` and a log table."""
    results = {}
    for label, folder in (
        ("zero_shot", os.path.join(output_folder, "zero_shot")),
        ("fine_tuned", output_folder),
    ):
        with open(os.path.join(folder, f"summary_{test_name}.json")) as f:
            results[label] = _rates(json.load(f), group)
    write_json(os.path.join(output_folder, "demo_results.json"), results)
    table = format_comparison(results)
    with open(os.path.join(output_folder, "demo_results.txt"), "w") as out:
        out.write(table + "\n")
    logger.info("zero-shot vs fine-tuned on %s:\n%s", test_name, table)
    return results


def format_comparison(results, names=("zero_shot", "fine_tuned")):
    """A plain-text table of WER/CER per group and overall for each named result."""
    first, second = (results[n] for n in names)
    rows = [*sorted(first["per_dialect"]), "overall"]
    header = f"{'group':<16}" + "".join(f"{n + ' WER':>16}{n + ' CER':>16}" for n in names)
    lines = [header, "-" * len(header)]
    for row in rows:
        cells = [
            r["overall"] if row == "overall" else r["per_dialect"][row] for r in (first, second)
        ]
        lines.append(f"{row:<16}" + "".join(f"{c['wer']:>16.2f}{c['cer']:>16.2f}" for c in cells))
    relative = (
        1 - second["overall"]["wer"] / first["overall"]["wer"] if first["overall"]["wer"] else 0
    )
    lines.append(f"relative WER reduction: {100 * relative:.1f}%")
    return "\n".join(lines)
