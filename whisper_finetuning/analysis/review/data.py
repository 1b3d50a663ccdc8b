"""What a human review compares: candidate epochs, their validation transcripts, and the audio.

Reviewing needs no checkpoint: every epoch's validation transcripts are already in
``EXP/valid/utterances_epochN.jsonl``. The candidates are by default the min-WER, the min-loss
and the last epoch; the utterances shown are those where the candidates disagree most,
interleaved across groups (dialect, then speaker) so a short review still covers every group.
A review across runs compares instead each finished run's selected checkpoint on their common
test set (``EXP/utterances_NAME.jsonl``, read and checked as ``comparison.runs`` does).
"""

import csv
import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import ruamel.yaml

from whisper_finetuning.analysis.comparison.runs import load_runs, same_utterances, test_set_names
from whisper_finetuning.evaluation.selection import SELECTION_DIRECTIONS, best_epoch
from whisper_finetuning.evaluation.text import edit_distance

DATA_ROOT = "$data_root"
SPEAKER_COLUMN = "spk_id"
DEFAULT_GROUP_COLUMNS = ("dialect", "accent", SPEAKER_COLUMN)
ROLES = ("selected", "min-loss", "last")  # "selected": train.py's pick, e.g. min-WER
OPTION_LABELS = "ABCDEFGHIJ"
AUDIO_TYPES = {
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".opus": "audio/ogg",
    ".m4a": "audio/mp4",
    ".webm": "audio/webm",
}


class ReviewError(ValueError):
    """An experiment folder or option that a review cannot use."""


def read_jsonl(path):
    """The records of a JSON-lines file (blank lines skipped)."""
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            try:
                records.extend([json.loads(line)] if line.strip() else [])
            except json.JSONDecodeError as error:
                raise ReviewError(f"{path}, line {number}: not JSON ({error.msg})") from None
    return records


def read_epochs(exp):
    """``EXP/epochs.jsonl`` as {epoch: record}; a re-run epoch's later line wins."""
    path = Path(exp) / "epochs.jsonl"
    if not path.is_file():
        raise ReviewError(f"{path} not found: is this a train.py output folder?")
    return {record["epoch"]: record for record in read_jsonl(path)}


def selection_metric(exp):
    """The run's ``selection_metric`` (``run.json``; WER for runs that predate it)."""
    run_file = Path(exp) / "run.json"
    run = json.loads(run_file.read_text()) if run_file.is_file() else {}
    return run.get("selection_metric", "WER")


def selected_epoch(epochs, metric="WER"):
    """The epoch train.py keeps: the best valid ``metric``, the earlier on ties."""
    return best_epoch([{**r, "epoch": e} for e, r in epochs.items()], metric)


def role_name(role, metric="WER"):
    """A role as shown: ``selected`` is ``min-WER`` (``max-BLEU``, ...) by the metric."""
    if role != "selected":
        return role
    return f"{'min' if SELECTION_DIRECTIONS[metric] < 0 else 'max'}-{metric}"


def candidate_roles(epochs, metric="WER"):
    """{epoch: [roles]} for the selected (by ``metric``), min-loss (earlier on ties) and last
    epochs."""
    chosen = {
        "selected": selected_epoch(epochs, metric),
        "min-loss": selected_epoch(epochs, "loss"),
        "last": max(epochs),
    }
    roles = {}
    for role in ROLES:
        roles.setdefault(chosen[role], []).append(role_name(role, metric))
    return dict(sorted(roles.items()))


def valid_epochs(exp):
    """Epochs that have validation transcripts on disk."""
    found = (re.fullmatch(r"utterances_epoch(\d+)\.jsonl", p.name) for p in exp.glob("valid/*"))
    return sorted(int(m.group(1)) for m in found if m)


def load_transcripts(exp, candidates):
    """{epoch: {utt_id: record}} from the candidates' validation transcripts."""
    transcripts = {}
    for epoch in candidates:
        path = Path(exp) / "valid" / f"utterances_epoch{epoch}.jsonl"
        if not path.is_file():
            raise ReviewError(f"{path} not found: epoch {epoch} has no validation transcripts")
        transcripts[epoch] = {u["id"]: u for u in read_jsonl(path)}
    return transcripts


def run_transcripts(folders):
    """(runs, test set, {run label: {utt_id: record}}): the finished runs in ``folders``, the
    first test set they were all decoded on, and each selected checkpoint's transcripts of it.

    Refuses (``RecipeError``) what a comparison refuses: fewer than two runs, an unfinished
    run, runs decoded on other test sets or on other utterances or references.
    """
    runs = load_runs(folders)
    names = test_set_names(runs)
    if not names:
        raise ReviewError("the runs name no test set (run.json test_csv): nothing to review")
    return runs, names[0], same_utterances(runs, names[0])


def comparison_words(text):
    """Words as compared: lower case, punctuation around them dropped."""
    words = (re.sub(r"[^\w']+", "", w.lower()) for w in text.split())
    return [w for w in words if w]


def disagreement(hyps):
    """Mean word edit distance over the pairs of candidate transcripts (0: they agree)."""
    words = [comparison_words(h) for h in hyps]
    pairs = list(itertools.combinations(words, 2))
    return sum(edit_distance(a, b) for a, b in pairs) / len(pairs) if pairs else 0.0


def word_diff(ref, hyp):
    """A word alignment of ``hyp`` against ``ref``: [op, hyp word, ref word] per step.

    ``op`` is ``eq``, ``sub``, ``ins`` (word only in hyp) or ``del`` (word only in ref);
    words compare as :func:`comparison_words` does, so case and punctuation are no errors.
    """
    ref_words, hyp_words = ref.split(), hyp.split()
    key_r = [" ".join(comparison_words(w)) or w for w in ref_words]
    key_h = [" ".join(comparison_words(w)) or w for w in hyp_words]
    n_h, n_r = len(key_h), len(key_r)
    # cost[i][j]: edits between hyp[i:] and ref[j:]; walking forward and preferring a match
    # or substitution puts leftover insertions and deletions last, where readers expect them.
    cost = [[(n_h - i) + (n_r - j) for j in range(n_r + 1)] for i in range(n_h + 1)]
    for i in range(n_h - 1, -1, -1):
        for j in range(n_r - 1, -1, -1):
            cost[i][j] = min(
                cost[i + 1][j] + 1,
                cost[i][j + 1] + 1,
                cost[i + 1][j + 1] + (key_h[i] != key_r[j]),
            )
    steps, i, j = [], 0, 0
    while i < n_h or j < n_r:
        if i < n_h and j < n_r and cost[i][j] == cost[i + 1][j + 1] + (key_h[i] != key_r[j]):
            steps.append(["eq" if key_h[i] == key_r[j] else "sub", hyp_words[i], ref_words[j]])
            i, j = i + 1, j + 1
        elif i < n_h and cost[i][j] == cost[i + 1][j] + 1:
            steps.append(["ins", hyp_words[i], None])
            i += 1
        else:
            steps.append(["del", None, ref_words[j]])
            j += 1
    return steps


def interleave(utterances, columns, score):
    """Order utterances by ``score`` (highest first), taking turns between groups.

    Groups are the values of ``columns[0]``; within each, the same is done by ``columns[1:]``.
    Each round takes every group's next utterance, the highest-scoring first (ties: the group
    value), so the first N cover as many groups as N allows.
    """
    if not columns:
        return sorted(utterances, key=lambda u: (-score(u), u["id"]))
    groups = {}
    for utt in utterances:
        groups.setdefault(str(utt.get(columns[0], "")), []).append(utt)
    queues = {g: interleave(members, columns[1:], score) for g, members in groups.items()}
    ordered = []
    for depth in range(max((len(q) for q in queues.values()), default=0)):
        round_ = [(g, q[depth]) for g, q in queues.items() if depth < len(q)]
        round_.sort(key=lambda gu: (-score(gu[1]), gu[0]))
        ordered.extend(utt for _, utt in round_)
    return ordered


def sample_utterances(transcripts, columns, n):
    """The ``n`` utterances (of every candidate) where the candidates disagree most.

    Returns [(record of the first candidate, disagreement)]; utterances on which all the
    candidates say the same words are left out, since there is nothing to choose.
    """
    epochs = sorted(transcripts)
    shared = set.intersection(*(set(t) for t in transcripts.values()))
    scores = {
        utt_id: disagreement([transcripts[e][utt_id]["hyp"] for e in epochs]) for utt_id in shared
    }
    records = [transcripts[epochs[0]][i] for i in sorted(shared) if scores[i] > 0]
    ordered = interleave(records, columns, lambda u: scores[u["id"]])[:n]
    return [(utt, scores[utt["id"]]) for utt in ordered]


def group_order(columns, present):
    """The group columns present in the transcripts, speaker last (speakers nest in dialects)."""
    kept = [c for c in columns if c in present and c != SPEAKER_COLUMN]
    return kept + (
        [SPEAKER_COLUMN] if SPEAKER_COLUMN in columns and SPEAKER_COLUMN in present else []
    )


def blind_options(reviewer, utt_id, hyps):
    """Candidate transcripts as options A, B, ... in an order fixed per reviewer and utterance.

    ``hyps`` maps epoch -> transcript. Candidates with the same transcript share one option.
    Returns [(label, transcript, [epochs])]; nothing in the label or order names an epoch.
    """
    merged = {}
    for epoch in sorted(hyps):
        merged.setdefault(hyps[epoch].strip(), []).append(epoch)

    def position(text):
        return hashlib.sha256(f"{reviewer}\n{utt_id}\n{text}".encode()).hexdigest()

    shuffled = sorted(merged, key=position)
    return [(OPTION_LABELS[i], text, merged[text]) for i, text in enumerate(shuffled)]


def _yaml_values(path):
    """Plain values of a saved ``hyperparams.yaml`` (tags are kept, nothing is built)."""
    with open(path) as f:
        try:
            return ruamel.yaml.YAML().load(f) or {}
        except ruamel.yaml.YAMLError as error:
            raise ReviewError(f"{path}: malformed YAML ({type(error).__name__})") from None


def _resolve_data_folder(exp, data_folder, output_folder):
    """An absolute data folder; a relative one is taken from where the run was started."""
    path = Path(str(data_folder))
    if path.is_absolute():
        return path
    exp = Path(exp).resolve()
    starts = [Path.cwd()]
    run_dir_parts = Path(str(output_folder)).parts if output_folder else ()
    if run_dir_parts and exp.parts[-len(run_dir_parts) :] == run_dir_parts:
        starts.insert(0, Path(*exp.parts[: -len(run_dir_parts)]))
    return next((s / path for s in starts if (s / path).exists()), starts[-1] / path)


@dataclass
class ManifestSource:
    """Where a run's validation (or test) manifest and audio are."""

    valid_csv: Path  # the manifest read (a test manifest for a review across runs)
    data_folder: Path
    group_columns: list
    split: str = "valid"


def test_manifest(run, test_set):
    """The ``test_csv`` manifest of ``run.json`` (as a dict) whose stem is ``test_set``."""
    found = [p for p in run.get("test_csv", []) if Path(p).stem == test_set]
    if not found:
        raise ReviewError(f"run.json names no test manifest '{test_set}'")
    return found[0]


def manifest_source(exp, data_folder=None, test_set=None):
    """The valid manifest (or with ``test_set``, that test manifest) and data folder:
    ``EXP/run.json``, else (valid only) ``hyperparams.yaml``."""
    exp = Path(exp)
    run_file = exp / "run.json"
    if run_file.is_file():
        run = json.loads(run_file.read_text())
        return ManifestSource(
            Path(test_manifest(run, test_set) if test_set else run["valid_csv"]),
            Path(data_folder or run["data_folder"]),
            list(run.get("group_columns") or DEFAULT_GROUP_COLUMNS),
            "test" if test_set else "valid",
        )
    if test_set:
        raise ReviewError(f"{run_file} not found: where is test set '{test_set}'?")
    hparams_file = exp / "hyperparams.yaml"
    if not hparams_file.is_file():
        raise ReviewError(f"neither {run_file} nor {hparams_file} found: where is the audio?")
    hparams = _yaml_values(hparams_file)
    folder = data_folder or _resolve_data_folder(
        exp, hparams.get("data_folder", "."), hparams.get("output_folder")
    )
    columns = hparams.get("group_columns") or DEFAULT_GROUP_COLUMNS
    return ManifestSource(exp / "manifests" / "valid.csv", Path(folder), [str(c) for c in columns])


def read_manifest(source):
    """(columns, {ID: row}) of the manifest."""
    if not source.valid_csv.is_file():
        raise ReviewError(f"{source.split} manifest {source.valid_csv} not found")
    with open(source.valid_csv, newline="") as f:
        reader = csv.DictReader(f)
        rows = {row["ID"]: row for row in reader}
        return list(reader.fieldnames), rows


def audio_reference(row, data_folder):
    """The audio reference of a manifest row (a file, or audio in a shard or dataset; see
    ``whisper_finetuning.data.audio_sources``), with ``$data_root`` replaced by ``data_folder``."""
    return row["wav"].replace(DATA_ROOT, str(data_folder))


def audio_type(name):
    """The MIME type to serve audio with, from its file name."""
    return AUDIO_TYPES.get(Path(name).suffix.lower(), "application/octet-stream")
