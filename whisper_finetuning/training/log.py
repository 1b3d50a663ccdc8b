"""What a run logs beyond SpeechBrain's epoch means, so loss/WER divergence can be explained.

Per optimizer step (``log/steps.jsonl``): the raw loss of that step's batches, the rate used,
tokens and audio seconds (with objective mwer also ``mwer.STEP_KEYS``). Per training
utterance per epoch (``log/train_utterances.jsonl``): its teacher-forced loss at its visit,
how often it has been seen, and the model's own teacher-forced transcript. Per validation
epoch: token accuracy, predictive entropy and calibration (ECE), computed here from the
decoder's log-probabilities.

Per epoch (``epochs.jsonl`` in the experiment folder): train and valid loss, WER, CER and the
valid token statistics. With ``tensorboard`` set, the same step and epoch scalars also go to
TensorBoard event files.

The diagnosis reads these files; every record is one JSON line, appended as it happens.
"""

import json
import os

import torch

from whisper_finetuning.common.files import append_jsonl, write_json
from whisper_finetuning.training import distributed, provenance

ECE_BINS = 15
STEP_TOTALS = ("tokens", "audio_seconds", "utterances")  # summed over a step's batches
TAIL_BYTES = 1 << 20  # longer than any one record


def token_statistics(log_probs, targets, lengths, entropy=True):
    """Teacher-forced per-utterance NLL, accuracy and entropy over the transcript tokens.

    ``log_probs`` (batch, time, vocab) are aligned with ``targets`` (batch, time) from the
    first transcript token on; ``lengths`` are SpeechBrain relative lengths. Returns per
    utterance: ``nll`` (summed, no label smoothing), ``correct``, ``tokens``, ``entropy``
    (summed, nats; None unless ``entropy``, a pass over the vocabulary that training skips)
    and ``argmax`` (list of token lists), plus the flat top-1 ``confidence`` and
    ``is_correct`` of every token, for calibration.
    """
    log_probs = log_probs[:, : targets.shape[1]].float()
    n_tokens = torch.round(lengths * targets.shape[1]).long()
    mask = torch.arange(targets.shape[1], device=targets.device)[None] < n_tokens[:, None]
    target_lp = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    top_lp, argmax = log_probs.max(dim=-1)
    hit = (argmax == targets) & mask
    entropy_sums = None
    if entropy:
        entropy_sums = (-(log_probs.exp() * log_probs).sum(dim=-1) * mask).sum(dim=1).tolist()
    return {
        "nll": (-target_lp * mask).sum(dim=1).tolist(),
        "correct": hit.sum(dim=1).tolist(),
        "tokens": n_tokens.tolist(),
        "entropy": entropy_sums,
        "argmax": [row[:n].tolist() for row, n in zip(argmax, n_tokens, strict=True)],
        "confidence": top_lp.exp()[mask],
        "is_correct": hit[mask],
    }


class Calibration:
    """Accumulates top-1 confidence against accuracy in equal-width bins (ECE)."""

    def __init__(self, bins=ECE_BINS):
        self.count = torch.zeros(bins)
        self.confidence = torch.zeros(bins)
        self.correct = torch.zeros(bins)

    def append(self, confidence, is_correct):
        """Add tokens' top-1 probabilities and whether that token was the target; a NaN
        probability (from a diverged model) has no bin and is left out."""
        bins = len(self.count)
        confidence, is_correct = confidence.detach().cpu(), is_correct.cpu()
        finite = torch.isfinite(confidence)
        confidence, is_correct = confidence[finite], is_correct[finite]
        index = (confidence * bins).long().clamp(min=0, max=bins - 1)
        self.count += torch.bincount(index, minlength=bins).float()
        self.confidence += torch.bincount(index, confidence, bins).float()
        self.correct += torch.bincount(index, is_correct.float(), bins).float()

    def ece(self):
        """Expected calibration error: bin-weighted |accuracy - confidence|."""
        total = self.count.sum()
        if total == 0:
            return float("nan")
        return float((self.correct - self.confidence).abs().sum() / total)


class ValidTokenStats:
    """One validation pass's teacher-forced token statistics, summed over utterances."""

    def __init__(self):
        self.nll = self.correct = self.tokens = self.entropy = 0.0
        self.calibration = Calibration()

    def append(self, stats):
        """Add one batch of ``token_statistics``."""
        self.nll += sum(stats["nll"])
        self.correct += sum(stats["correct"])
        self.tokens += sum(stats["tokens"])
        self.entropy += sum(stats["entropy"])
        self.calibration.append(stats["confidence"], stats["is_correct"])

    def summary(self):
        """Per-token means: ``nll``, ``token_accuracy``, ``entropy``; and ``ece``."""
        tokens = max(self.tokens, 1)
        return {
            "nll": self.nll / tokens,
            "token_accuracy": self.correct / tokens,
            "entropy": self.entropy / tokens,
            "ece": self.calibration.ece(),
        }


def drop_partial_last_line(path):
    """Cut a last line a kill left unfinished, so the next record starts on its own line."""
    if not os.path.exists(path):
        return
    with open(path, "rb+") as f:
        end = f.seek(0, os.SEEK_END)
        start = max(0, end - TAIL_BYTES)
        f.seek(start)
        tail = f.read()
        if tail and not tail.endswith(b"\n"):
            f.truncate(start + tail.rfind(b"\n") + 1)


class TrainingLog:
    """Appends the per-step, per-utterance and per-epoch records of one run.

    Arguments
    ---------
    folder : str
        ``EXPERIMENT/log``; created on first use. ``epochs.jsonl`` goes in its parent.
    enabled : bool
        False on non-main processes, which log nothing.
    tensorboard : bool
        Also write the step and epoch scalars as TensorBoard events in ``folder/tensorboard``.
    """

    def __init__(self, folder, enabled=True, tensorboard=False):
        self.folder = folder
        self.enabled = enabled
        self.pending = None
        self.tensorboard = None
        if tensorboard and enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(os.path.join(folder, "tensorboard"))
        # The epochs each utterance was visited in, rebuilt from the log when a run resumes;
        # a resumed epoch re-logs the steps after its checkpoint (readers keep the last record).
        self.visits = {}
        if enabled:
            os.makedirs(folder, exist_ok=True)
            for name in ("steps.jsonl", "train_utterances.jsonl"):
                drop_partial_last_line(os.path.join(folder, name))
        path = os.path.join(folder, "train_utterances.jsonl")
        if enabled and os.path.exists(path):  # only the main process writes "seen"
            with open(path) as f:
                for line in f:
                    record = json.loads(line)
                    self.visits.setdefault(record["id"], set()).add(record["epoch"])

    def add_batch(self, loss, tokens, audio_seconds, utterances, scalars=None):
        """Accumulate one batch into the optimizer step being built; ``scalars`` (e.g. the MWER
        terms) are averaged over the step's batches with a finite loss."""
        if self.pending is None:
            self.pending = {"losses": [], "scalars": [], **dict.fromkeys(STEP_TOTALS, 0)}
        finite = torch.isfinite(loss)
        self.pending["losses"].append(float(loss) if finite else None)
        if finite and scalars:
            self.pending["scalars"].append(scalars)
        self.pending["tokens"] += tokens
        self.pending["audio_seconds"] += audio_seconds
        self.pending["utterances"] += utterances

    def end_step(self, **fields):
        """Write the finished optimizer step with ``fields`` (epoch, step, lr, ...).

        Called on every process: under DDP the step holds every process's batches.
        """
        everyone = distributed.gather_objects(self.pending)
        self.pending = None
        losses = [x for pending in everyone for x in pending["losses"] if x is not None]
        loss = sum(losses) / len(losses) if losses else None
        totals = {key: sum(p[key] for p in everyone) for key in STEP_TOTALS}
        scalars = [batch for pending in everyone for batch in pending["scalars"]]
        means = (
            {key: sum(b[key] for b in scalars) / len(scalars) for key in scalars[0]}
            if scalars
            else {}
        )
        if self.enabled:
            record = {**fields, "loss": loss, **means, **totals}
            append_jsonl(os.path.join(self.folder, "steps.jsonl"), record)
            if self.tensorboard is not None:
                for key in ("loss", "lr"):
                    if record[key] is not None:
                        self.tensorboard.add_scalar(f"train/{key}", record[key], record["step"])

    def add_epoch(self, record):
        """Write one epoch's record (``epoch``, ``optimizer_steps``, losses, WER, ...)."""
        if not self.enabled:
            return
        append_jsonl(os.path.join(os.path.dirname(self.folder), "epochs.jsonl"), record)
        if self.tensorboard is not None:
            for key, value in record.items():
                if key not in ("epoch", "optimizer_steps", "lr") and value is not None:
                    self.tensorboard.add_scalar(f"epoch/{key}", value, record["epoch"])
            self.tensorboard.flush()

    def add_utterances(self, epoch, position, ids, stats, hyps, refs, groups=None):
        """Write each utterance's teacher-forced loss and transcript at this visit, with its
        manifest group values (``groups``: column -> values, e.g. ``spk_id``, ``dialect``).

        Called on every process: under DDP every process's utterances are written.
        """
        groups = groups or {}
        records = []
        for i, utt_id in enumerate(ids):
            tokens = stats["tokens"][i]
            records.append(
                {
                    "epoch": epoch,
                    "id": utt_id,
                    "loss": stats["nll"][i] / max(tokens, 1),
                    "token_accuracy": stats["correct"][i] / max(tokens, 1),
                    "tokens": tokens,
                    "position": position,
                    "hyp": hyps[i],
                    "ref": refs[i],
                    **{column: values[i] for column, values in groups.items()},
                }
            )
        for record in (r for process in distributed.gather_objects(records) for r in process):
            self.visits.setdefault(record["id"], set()).add(epoch)
            record["seen"] = len(self.visits[record["id"]])
            if self.enabled:
                append_jsonl(os.path.join(self.folder, "train_utterances.jsonl"), record)


def write_run_info(hparams, grad_accumulation_factor):
    """``run.json``: where the data is and how batches were formed, for the analysis tools,
    and what the checkpoint was trained on (``provenance``).

    The accumulation factor is the Brain's: SpeechBrain also takes it as a run option.
    """
    keys = (
        "group_columns",
        "sorting",
        "dynamic_batching",
        "augment",
        "batch_size",
        "selection_metric",
    )
    info = {key: hparams[key] for key in (*keys, "number_of_epochs", "seed")}
    info["grad_accumulation_factor"] = grad_accumulation_factor
    info["data_folder"] = os.path.abspath(hparams["data_folder"])
    info["train_csv"] = os.path.abspath(hparams["train_csv"])
    info["valid_csv"] = os.path.abspath(hparams["valid_csv"])
    info["test_csv"] = [os.path.abspath(csv) for csv in hparams["test_csv"]]
    info["whisper_hub"] = str(hparams["whisper_hub"])
    info.update(provenance.record(hparams))
    write_json(os.path.join(hparams["output_folder"], "run.json"), info)
