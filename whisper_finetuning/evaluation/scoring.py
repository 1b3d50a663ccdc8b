"""Scoring transcripts: normalised WER, CER, BLEU and chrF, bootstrap intervals, per group.

A ``Scorer`` collects one stage's utterances and writes what a user reads afterwards:
``wer_NAME.txt`` (SpeechBrain's ``%WER`` headline and per-utterance alignments),
``summary_NAME.json`` (headline numbers with 95% intervals, per group of any grouping column,
per duration bucket, the most frequent word errors, the normaliser applied per language) and
``summary_NAME.md`` (the same as tables). BLEU and chrF are sacrebleu's corpus scores of the
normalised texts (dialects without a standard spelling: WER punishes valid reformulations).
``small_valid_warning`` says when the validation set is too small to tell the
epochs' checkpoints apart.

A reference with no word once normalised (no letter or digit left: ``?!...`` becomes ``.``
with the English normaliser) cannot be scored: it is left out of every number and counted
(``n_unscorable``, ``unscorable_ids``). A rate over no reference words (a group of such
references, or a whole set) is None ("no reference words"), never 0.

A row whose transcript is empty is a non-speech row (silence, noise, music): it is decoded and
scored apart from the speech rows, whose WER it leaves alone. ``nonspeech`` says how often the
model wrote words there: ``n`` rows, ``n_with_words`` hypotheses with a word once normalised,
``hallucination_rate`` (percent of ``n``) with its 95% Wilson interval, and
``words_per_minute`` of non-speech audio. Beside it, on the speech rows,
``repeated_ngram_rate`` (percent of hypotheses that repeat a 5-gram, distil-whisper's loop
measure) and ``insertion_rate`` (inserted words per 100 reference words); all of them per
group too.
"""

import io
import json
import logging
import math
import os
import random
from collections import Counter
from operator import itemgetter

import numpy as np
from scipy.stats import binomtest
from speechbrain.utils.metric_stats import ErrorRateStats
from transformers.models.whisper.english_normalizer import (
    BasicTextNormalizer,
    EnglishTextNormalizer,
)

from whisper_finetuning.common.files import write_json, write_jsonl, write_text
from whisper_finetuning.evaluation.metrics import (
    METRICS,
    SACREBLEU_BLEU,
    SACREBLEU_CHRF,
    metric,
    percent_of,
)
from whisper_finetuning.evaluation.text import is_nonspeech
from whisper_finetuning.model.vocabulary import ENGLISH, ENGLISH_CODE
from whisper_finetuning.training import distributed

logger = logging.getLogger(__name__)

NORMALIZERS = ("english", "basic", "none")
BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 0
# Upper edges (seconds) of the duration buckets; the last bucket is everything longer.
DURATION_EDGES = (2, 5, 10, 20, 30)
TOP_ERRORS = 20  # most frequent substitutions, insertions and deletions kept in a summary
NO_WORDS = "no reference words"
REPEATED_NGRAM = 5  # a hypothesis repeating a 5-gram counts into repeated_ngram_rate


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


class Normalizers:
    """The text normaliser of each row's language.

    ``auto`` gives Whisper's English normaliser to English rows (all rows of an English-only
    model) and the basic one to the others; any other ``kind`` applies to every row.
    """

    def __init__(self, kind, tokenizer, english_only=False):
        if kind != "auto":
            text_normalizer(kind, tokenizer, english_only)  # an unknown kind fails here
        self.kind, self.tokenizer, self.english_only = kind, tokenizer, english_only
        self._built = {}

    @classmethod
    def of(cls, kind, whisper):
        """The normalisers of ``kind`` for a ``WhisperASR``'s tokenizer and languages."""
        return cls(kind, whisper.tokenizer, english_only=not whisper.is_multilingual)

    def name(self, language):
        """The normaliser applied to rows in ``language`` (a name or code, or None when
        unknown)."""
        if self.kind != "auto":
            return self.kind
        english = str(language).strip().lower() in (ENGLISH, ENGLISH_CODE)
        return "english" if self.english_only or english else "basic"

    def __call__(self, text, language=None):
        """``text`` normalised for ``language``."""
        name = self.name(language)
        if name not in self._built:
            self._built[name] = text_normalizer(name, self.tokenizer, name == "english")
        return self._built[name](text)


def _bootstrap_ci95(utterances, name, block_key):
    """95% bootstrap interval of metric ``name`` over utterances (None when it is undefined).

    Resamples blocks (speakers, when ``block_key`` is given) rather than single utterances, so
    correlated utterances of one speaker do not make the interval look tighter than it is.
    Every metric's statistics add up over utterances, so a block is its summed statistics.
    """
    statistics, score = METRICS[name]
    blocks = {}
    for utt in utterances:
        key = utt.get(block_key, utt["id"]) if block_key else utt["id"]
        blocks.setdefault(key, []).append(statistics(utt))
    if metric(utterances, name) is None:
        return None
    values = np.array([np.sum(rows, axis=0) for rows in blocks.values()], dtype=np.int64)
    rng = random.Random(BOOTSTRAP_SEED)
    drawn = [rng.choices(range(len(values)), k=len(values)) for _ in range(BOOTSTRAP_SAMPLES)]
    counts = np.zeros((BOOTSTRAP_SAMPLES, len(values)), dtype=np.int64)  # draws of each block
    np.add.at(counts, (np.arange(BOOTSTRAP_SAMPLES)[:, None], np.array(drawn)), 1)
    # A resample without reference units (all its blocks empty) counts as 0.
    estimates = sorted(score(sums) or 0.0 for sums in (counts @ values).tolist())
    return [
        estimates[int(0.025 * BOOTSTRAP_SAMPLES)],
        estimates[int(0.975 * BOOTSTRAP_SAMPLES) - 1],
    ]


def _group_rates(members, block_key):
    """WER, CER, BLEU, chrF, their 95% intervals (``ci95``: WER's), the count and the reference
    words of a subset (None for what is undefined over no reference words)."""
    rates = {
        "wer": metric(members, "wer"),
        "cer": metric(members, "cer"),
        "bleu": metric(members, "bleu"),
        "chrf": metric(members, "chrf"),
        "ci95": _bootstrap_ci95(members, "wer", block_key),
        "n": len(members),
        "words": sum(u["words"] for u in members),
    }
    for name in ("cer", "bleu", "chrf"):
        rates[f"{name}_ci95"] = _bootstrap_ci95(members, name, block_key)
    return rates


def has_words(normalised_words):
    """Whether a normalised reference can be scored: some letter or digit is left."""
    return any(character.isalnum() for word in normalised_words for character in word)


def count_words(normalised_words):
    """How many of the normalised words hold a letter or digit."""
    return sum(has_words([word]) for word in normalised_words)


def has_repeated_ngram(words, n=REPEATED_NGRAM):
    """Whether some ``n`` consecutive words occur twice in ``words`` (overlaps count)."""
    ngrams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(ngrams)) < len(ngrams)


def proportion_ci95(count, total):
    """The 95% Wilson score interval of ``count`` in ``total``, in percent (None over none)."""
    if not total:
        return None
    interval = binomtest(count, total).proportion_ci(confidence_level=0.95, method="wilson")
    return [100.0 * interval.low, 100.0 * interval.high]


def nonspeech_rates(rows):
    """``{"n", "n_with_words", "hallucination_rate", "hallucination_rate_ci95",
    "words_per_minute"}`` of non-speech rows (rates None over no rows; words per minute None
    without durations)."""
    n = len(rows)
    with_words = sum(row["hyp_words"] > 0 for row in rows)
    minutes = sum(row.get("duration", 0.0) for row in rows) / 60
    return {
        "n": n,
        "n_with_words": with_words,
        "hallucination_rate": percent_of(with_words, n),
        "hallucination_rate_ci95": proportion_ci95(with_words, n),
        "words_per_minute": sum(r["hyp_words"] for r in rows) / minutes if minutes else None,
    }


def speech_error_rates(utterances):
    """``repeated_ngram_rate`` (percent of speech hypotheses with a repeated 5-gram) and
    ``insertion_rate`` (inserted words per 100 reference words) of scored speech rows."""
    return {
        "repeated_ngram_rate": percent_of(
            sum(u["repeated_ngram"] for u in utterances), len(utterances)
        ),
        "insertion_rate": percent_of(
            sum(u["insertions"] for u in utterances), sum(u["words"] for u in utterances)
        ),
    }


def percent(rate, unit=""):
    """A rate in percent as text (``12.34``, with ``unit``); ``no reference words`` for None."""
    return NO_WORDS if rate is None else f"{rate:.2f}{unit}"


def _interval(ci95):
    """A 95% interval as table text: ``9.50-13.90``, ``-`` when undefined."""
    return "-" if ci95 is None else "{:.2f}-{:.2f}".format(*ci95)


def duration_bucket(seconds):
    """The label of the duration bucket holding ``seconds``: ``<2s``, ``2-5s``, ..., ``>30s``."""
    lower = 0
    for upper in DURATION_EDGES:
        if seconds < upper:
            return f"<{upper}s" if lower == 0 else f"{lower}-{upper}s"
        lower = upper
    return f">{lower}s"


def top_errors(scores, top=TOP_ERRORS):
    """The most frequent word errors in SpeechBrain alignments, most frequent first.

    Returns ``{"substitutions": [[ref, hyp, count], ...], "insertions": [[hyp, count], ...],
    "deletions": [[ref, count], ...]}``; ties keep the order of first appearance.
    """
    substitutions, insertions, deletions = Counter(), Counter(), Counter()
    for score in scores:
        ref, hyp = score["ref_tokens"], score["hyp_tokens"]
        for op, ref_i, hyp_i in score["alignment"]:
            if op == "S":
                substitutions[(ref[ref_i], hyp[hyp_i])] += 1
            elif op == "I":
                insertions[hyp[hyp_i]] += 1
            elif op == "D":
                deletions[ref[ref_i]] += 1
    return {
        "substitutions": [[r, h, n] for (r, h), n in substitutions.most_common(top)],
        "insertions": [[w, n] for w, n in insertions.most_common(top)],
        "deletions": [[w, n] for w, n in deletions.most_common(top)],
    }


HEADLINE_METRICS = (
    ("wer", "WER", "%"),
    ("cer", "CER", "%"),
    ("bleu", "BLEU", ""),
    ("chrf", "chrF", ""),
)


def format_headline(summary):
    """One line for the console: ``WER 11.65% (95% CI 9.50-13.90), CER 5.58% (...), BLEU 71.20
    (...), chrF 83.10 (...), n=200``, followed by how many references had no word and how many
    hypotheses a loop stop ended, if any."""
    if summary["wer"] is None:  # no scorable reference: every metric is undefined
        headline = f"WER, CER, BLEU and chrF undefined ({NO_WORDS}), n={summary['n_utterances']}"
    else:
        parts = []
        for name, label, unit in HEADLINE_METRICS:
            lo, hi = summary[f"{name}_ci95"]
            parts.append(f"{label} {summary[name]:.2f}{unit} (95% CI {lo:.2f}-{hi:.2f})")
        headline = ", ".join(parts) + f", n={summary['n_utterances']}"
    if summary.get("n_unscorable"):
        headline += f", {summary['n_unscorable']} reference(s) with no word left out"
    if summary.get("loop_stopped"):
        headline += f", {summary['loop_stopped']} repetition loop(s) stopped"
    nonspeech = summary.get("nonspeech")
    if nonspeech and nonspeech["n"]:
        headline += (
            f"; non-speech: words on {nonspeech['n_with_words']} of {nonspeech['n']} "
            f"({nonspeech['hallucination_rate']:.2f}%, 95% CI "
            f"{_interval(nonspeech['hallucination_rate_ci95'])})"
        )
    return headline


def small_valid_warning(epoch_wers, summary):
    """A warning when the valid set is too small to tell the epochs' checkpoints apart, or None.

    ``epoch_wers`` are the valid WERs (percent) of the epochs so far, ``summary`` the latest
    valid summary. The checkpoints are separable when the WER interval's half-width is at most
    the spread (max - min) of the epochs' WERs. Otherwise the warning gives the number of
    utterances that would shrink the half-width to the spread: a bootstrap interval narrows as
    1/sqrt(n), so ``n x (half-width / spread)^2``. The rule is conservative (it compares a
    single interval with a paired difference) and assumes more utterances come from
    proportionally more speakers when the interval is blocked by speaker.
    """
    epoch_wers = [w for w in epoch_wers if w is not None]
    if len(epoch_wers) < 2 or summary["wer_ci95"] is None:
        return None
    lo, hi = summary["wer_ci95"]
    half_width = (hi - lo) / 2
    spread = max(epoch_wers) - min(epoch_wers)
    if half_width <= spread:
        return None
    n = summary["n_utterances"]
    head = (
        f"valid set too small to separate checkpoints: the valid WER's 95% interval is "
        f"+/-{half_width:.2f} points, the WERs of {len(epoch_wers)} epochs span "
        f"{spread:.2f} points ({min(epoch_wers):.2f}-{max(epoch_wers):.2f})"
    )
    if spread == 0:
        return f"{head}; every epoch scored the same, so no valid set size can be derived"
    needed = math.ceil(n * (half_width / spread) ** 2)
    return (
        f"{head}; about {needed} valid utterances (now {n}) would narrow it to the spread "
        f"(n x (half-width / spread)^2)"
    )


class Scorer:
    """Collects hypotheses and references of one stage and summarises them.

    Arguments
    ---------
    normalize : Normalizers or callable
        Text normaliser applied to both sides before scoring: per row's ``language`` group
        value when it is a ``Normalizers``.
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
        self.unscorable = []  # {id, ref, hyp, group columns} of references with no word
        self.nonspeech = []  # {id, ref, hyp, hyp_words, group columns} of empty references

    def append(self, ids, hyps, refs, groups=None, durations=None, extra=None):
        """Score a batch; ``groups`` maps a column name to its values for the batch.

        ``durations`` (seconds per utterance) adds the per-duration-bucket numbers. ``extra``
        maps other per-utterance fields (e.g. ``loss``) to their values for the batch: recorded
        with each utterance, not grouped by.
        """
        groups = groups or {}
        extra = extra or {}
        languages = groups.get("language", [None] * len(ids))
        norm_refs = [self._normalize(r, lang) for r, lang in zip(refs, languages, strict=True)]
        kept = [i for i, ref in enumerate(norm_refs) if has_words(ref.split())]
        for i in sorted(set(range(len(ids))) - set(kept)):
            utt = {"id": ids[i], "ref": refs[i], "hyp": hyps[i]}
            utt.update({c: v[i] for c, v in groups.items()})
            if not is_nonspeech(refs[i]):  # only punctuation: unscorable
                self.unscorable.append(utt)
                continue
            utt["hyp_words"] = count_words(self._normalize(hyps[i], languages[i]).split())
            if durations is not None:
                utt["duration"] = float(durations[i])
            utt.update({field: values[i] for field, values in extra.items()})
            self.nonspeech.append(utt)
        if not kept:
            return
        scored = [ids[i] for i in kept]
        norm_hyps = [self._normalize(hyps[i], languages[i]) for i in kept]
        norm_refs = [norm_refs[i] for i in kept]
        bleu = SACREBLEU_BLEU._extract_corpus_statistics(norm_hyps, [norm_refs])
        chrf = SACREBLEU_CHRF._extract_corpus_statistics(norm_hyps, [norm_refs])
        norm_hyps, norm_refs = [h.split() for h in norm_hyps], [r.split() for r in norm_refs]
        self.wer.append(scored, norm_hyps, norm_refs)
        self.cer.append(scored, norm_hyps, norm_refs)
        self.raw_wer.append(
            scored, [hyps[i].split() for i in kept], [refs[i].split() for i in kept]
        )
        for n, i in enumerate(kept):
            utt_id = ids[i]
            wer, cer = self.wer.scores[-len(kept) + n], self.cer.scores[-len(kept) + n]
            utt = {
                "id": utt_id,
                "ref": refs[i],
                "hyp": hyps[i],
                "word_errors": wer["num_edits"],
                "words": wer["num_ref_tokens"],
                "char_errors": cer["num_edits"],
                "chars": cer["num_ref_tokens"],
                "bleu_stats": bleu[n],
                "chrf_stats": chrf[n],
                "insertions": wer["insertions"],
                "repeated_ngram": has_repeated_ngram(norm_hyps[n]),
            }
            utt.update({column: values[i] for column, values in groups.items()})
            if durations is not None:
                utt["duration"] = float(durations[i])
            utt.update({field: values[i] for field, values in extra.items()})
            self.utterances.append(utt)

    def _normalize(self, text, language):
        """``text`` normalised for its row's language."""
        if isinstance(self.normalize, Normalizers):
            return self.normalize(text, language)
        return self.normalize(text)

    def normalizers_applied(self):
        """The normaliser applied per language (``all`` for rows without one)."""
        languages = sorted({u.get("language") or "all" for u in self.utterances})
        if isinstance(self.normalize, Normalizers):
            return {
                lang: self.normalize.name(None if lang == "all" else lang) for lang in languages
            }
        name = getattr(self.normalize, "__name__", type(self.normalize).__name__)
        return {lang: name for lang in languages}

    def gather(self):
        """Under DDP, give every process all processes' utterances, each once, in set order.

        Each process scored its ``distributed.ShardSampler`` share; afterwards the
        summaries and alignments are those of the whole set, as one process would write them.
        """
        if not distributed.is_distributed():
            return
        stats = (self.wer, self.cer, self.raw_wer)
        everyone = distributed.gather_objects(
            (self.utterances, *(s.scores for s in stats), self.unscorable, self.nonspeech)
        )
        self.utterances = distributed.interleave_unique([e[0] for e in everyone], itemgetter("id"))
        self.unscorable = distributed.interleave_unique([e[-2] for e in everyone], itemgetter("id"))
        self.nonspeech = distributed.interleave_unique([e[-1] for e in everyone], itemgetter("id"))
        for i, stat in enumerate(stats, start=1):
            stat.scores = distributed.interleave_unique([e[i] for e in everyone], itemgetter("key"))
            stat.ids = [score["key"] for score in stat.scores]

    def summary(self, epoch=None):
        """Headline WER, CER, BLEU, chrF with 95% intervals; per group, per duration; top errors."""
        block = "spk_id" if self.utterances and "spk_id" in self.utterances[0] else None
        summary = {
            **{name: metric(self.utterances, name) for name in METRICS},
            **{f"{name}_ci95": _bootstrap_ci95(self.utterances, name, block) for name in METRICS},
            "normalizer": self.normalizers_applied(),
            "wer_raw": self.raw_wer.summarize("error_rate") if self.utterances else None,
            "n_utterances": len(self.utterances),
            "n_unscorable": len(self.unscorable),
            "unscorable_ids": sorted(u["id"] for u in self.unscorable),
            "loop_stopped": sum(
                bool(u.get("loop_stopped")) for u in self.utterances + self.nonspeech
            ),
            "nonspeech": nonspeech_rates(self.nonspeech),
            **speech_error_rates(self.utterances),
            "epoch": epoch,
            "per_group": {},
            "per_duration": {},
            "top_errors": top_errors(self.wer.scores),
        }
        everyone = self.utterances + self.unscorable + self.nonspeech
        present = [c for c in self.group_columns if everyone and c in everyone[0]]
        for column in present:
            summary["per_group"][column] = {
                value: {
                    **_group_rates([u for u in self.utterances if u[column] == value], block),
                    "n_unscorable": sum(u[column] == value for u in self.unscorable),
                    "nonspeech": nonspeech_rates([u for u in self.nonspeech if u[column] == value]),
                    **speech_error_rates([u for u in self.utterances if u[column] == value]),
                }
                for value in sorted({u[column] for u in everyone})
            }
        if self.utterances and "duration" in self.utterances[0]:
            buckets = {}
            for utt in sorted(self.utterances, key=lambda u: u["duration"]):
                buckets.setdefault(duration_bucket(utt["duration"]), []).append(utt)
            summary["per_duration"] = {
                label: _group_rates(members, block) for label, members in buckets.items()
            }
        return summary

    def write(self, folder, name, epoch=None, model=None, extra=None):
        """Write ``wer_NAME.txt``, ``summary_NAME.json``/``.md`` and ``utterances_NAME.jsonl``.

        ``model`` (the checkpoint's source) is recorded so a summary can be told apart from one
        of another model; ``extra`` adds keys to the summary.
        """
        os.makedirs(folder, exist_ok=True)
        summary = {**self.summary(epoch), "model": model, **(extra or {})}
        stats = io.StringIO()
        self.wer.write_stats(stats)
        write_text(os.path.join(folder, f"wer_{name}.txt"), stats.getvalue())
        write_json(os.path.join(folder, f"summary_{name}.json"), summary)
        write_text(os.path.join(folder, f"summary_{name}.md"), format_summary(summary, name))
        write_jsonl(os.path.join(folder, f"utterances_{name}.jsonl"), self.utterances)
        if self.nonspeech:
            write_jsonl(os.path.join(folder, f"nonspeech_{name}.jsonl"), self.nonspeech)
        return summary


def _rate_table(column, rows):
    """A Markdown table of {value of column: {wer, cer, bleu, chrf, ci95s, n}}."""
    lines = [
        f"## per {column}",
        "",
        f"| {column} | WER % | 95% CI | CER % | BLEU | 95% CI | chrF | 95% CI | n |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        lines.append(
            f"| {label} | {percent(r['wer'])} | {_interval(r['ci95'])} | {percent(r['cer'])} "
            f"| {percent(r['bleu'])} | {_interval(r['bleu_ci95'])} | {percent(r['chrf'])} "
            f"| {_interval(r['chrf_ci95'])} | {r['n']} |"
        )
    return lines + [""]


def _nonspeech_table(column, rows):
    """A Markdown table of the hallucination, repeated 5-gram and insertion rates per value."""
    lines = [
        f"## non-speech and insertions per {column}",
        "",
        f"| {column} | non-speech n | with words | hallucination % | 95% CI | words/min "
        "| repeated 5-gram % | insertion % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        ns = r["nonspeech"]
        wpm = "-" if ns["words_per_minute"] is None else f"{ns['words_per_minute']:.1f}"
        lines.append(
            f"| {label} | {ns['n']} | {ns['n_with_words']} | {_rate(ns['hallucination_rate'])} "
            f"| {_interval(ns['hallucination_rate_ci95'])} | {wpm} "
            f"| {_rate(r['repeated_ngram_rate'])} | {_rate(r['insertion_rate'])} |"
        )
    return lines + [""]


def _rate(value):
    """A percentage as table text, ``-`` when undefined."""
    return "-" if value is None else f"{value:.2f}"


def format_summary(summary, name):
    """A summary as Markdown: headline, per group, per duration bucket and top errors."""
    epoch = "" if summary.get("epoch") is None else f" (epoch {summary['epoch']})"
    lines = [
        f"# {name}{epoch}",
        "",
        f"{format_headline(summary)}; raw (unnormalised) WER {percent(summary['wer_raw'], '%')}",
        "",
        "Normaliser per language: "
        + ", ".join(f"{lang} {name}" for lang, name in summary["normalizer"].items()),
        "",
    ]
    for column, per_value in summary["per_group"].items():
        lines += _rate_table(column, per_value)
    lines += _nonspeech_table("set", {"all": summary})
    for column, per_value in summary["per_group"].items():
        lines += _nonspeech_table(column, per_value)
    if summary.get("per_duration"):
        lines += _rate_table("duration", summary["per_duration"])
    errors = summary.get("top_errors")
    if errors:
        lines += [
            "## most frequent errors (normalised)",
            "",
            "| substitution | count |",
            "|---|---|",
        ]
        lines += [f"| {r} -> {h} | {n} |" for r, h, n in errors["substitutions"]]
        for kind in ("insertions", "deletions"):
            lines += ["", f"| {kind[:-1]} | count |", "|---|---|"]
            lines += [f"| {w} | {n} |" for w, n in errors[kind]]
        lines.append("")
    return "\n".join(lines)


COMPARED = ("wer", "cer", "bleu", "chrf")
# What fine-tuning may cost: the hallucination rate on non-speech rows, loops and insertions.
COMPARED_COSTS = (
    ("hallucination_rate", "HALL"),
    ("repeated_ngram_rate", "REP5"),
    ("insertion_rate", "INS"),
)


def _scores(rates):
    """The compared scores of a summary or of one of its groups."""
    return {
        **{k: rates[k] for k in COMPARED},
        "hallucination_rate": rates["nonspeech"]["hallucination_rate"],
        "nonspeech": rates["nonspeech"],
        **{k: rates[k] for k in ("repeated_ngram_rate", "insertion_rate")},
    }


def _rates(summary, group):
    """Overall and per-group scores of a summary, in the ``demo_results.json`` shape."""
    per_group = summary["per_group"].get(group, {})
    return {
        "overall": _scores(summary),
        f"per_{group}": {value: _scores(rates) for value, rates in per_group.items()},
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
    table = format_comparison(results, group)
    write_text(os.path.join(output_folder, "demo_results.txt"), table + "\n")
    logger.info("zero-shot vs fine-tuned on %s:\n%s", test_name, table)
    return results


def format_comparison(results, group="dialect", names=("zero_shot", "fine_tuned")):
    """A plain-text table of WER/CER/BLEU/chrF per group and overall for each named result."""
    first, second = (results[n] for n in names)
    key = f"per_{group}"
    rows = [*sorted(first[key]), "overall"]
    short = {"zero_shot": "zs", "fine_tuned": "ft"}
    labels = [(m, m.upper()) for m in COMPARED] + list(COMPARED_COSTS)
    header = f"{group:<16}" + "".join(
        f"{short.get(n, n) + ' ' + label:>10}" for _, label in labels for n in names
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        cells = [r["overall"] if row == "overall" else r[key][row] for r in (first, second)]
        lines.append(f"{row:<16}" + "".join(f"{_rate(c[m]):>10}" for m, _ in labels for c in cells))
    lines.append(
        "HALL: % of non-speech rows with words; REP5: % of speech hypotheses repeating a "
        "5-gram; INS: inserted words per 100 reference words"
    )
    before, after = first["overall"]["wer"], second["overall"]["wer"]
    if before is not None and after is not None:
        relative = 1 - after / before if before else 0
        lines.append(f"relative WER reduction: {100 * relative:.1f}%")
    return "\n".join(lines)
