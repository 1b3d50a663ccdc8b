"""Minimum word error rate (MWER) training over N-best lists (Prabhavalkar et al., ICASSP 2018).

For each training batch: an N-best list per utterance from the recipe's own beam search, run
without gradients on the encoder states the model's forward already computed (with a frozen,
cached encoder they cost nothing more); then one batched teacher-forced decoder pass over all
hypotheses, with gradients, gives each hypothesis its sequence log-probability, renormalised
over its list. The loss is the batch's expected word errors (after the recipe's text
normaliser) minus each list's mean errors (a baseline that lowers the variance), per reference
word, plus ``ce_weight`` x the usual label-smoothed cross-entropy.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from whisper_finetuning.common.errors import RecipeError
from whisper_finetuning.evaluation.text import edit_distance

OBJECTIVES = ("ce", "mwer")
# Logged per optimizer step (log/steps.jsonl) and, prefixed train_, per epoch (epochs.jsonl):
# the expected and the N-best oracle WER of the training batches (percent), and the CE term.
STEP_KEYS = ("expected_wer", "oracle_wer", "ce")
CHECKPOINT_FILE = "whisper.ckpt"  # the model's file in a checkpoint folder
INIT_ADVICE = "set mwer_init to another checkpoint folder or kept epoch"


@dataclass
class NBest:
    """Each utterance's N-best token lists (best first) and their sequence log-probabilities
    (``rows x N``, with gradients; ``-inf`` where a list is shorter than N)."""

    tokens: list
    scores: torch.Tensor


def n_best(model, states, search, prompts=None):
    """Search each row of ``states`` (``EncoderStates``) for its N-best list without gradients,
    then score every hypothesis with gradients in one decoder pass per encoder window; each row
    starts from its row of ``prompts`` (``[rows, length]``; default: the model's prompt)."""
    lists = [[tokens for tokens, _ in hyps] for hyps in search.n_best(model, states, prompts)]
    width = max(len(hyps) for hyps in lists)
    scores = [
        sequence_log_probs(
            model,
            out,
            [lists[row] for row in rows],
            width,
            None if prompts is None else prompts[rows],
        )
        for rows, out in states.groups
    ]
    return NBest(lists, states.rejoin(scores))


def sequence_log_probs(model, encoder_out, lists, width, prompts=None):
    """Teacher-forced log P(hypothesis + end of text | prompt, audio) of every hypothesis of
    ``lists`` (one list per row of ``encoder_out``, each after its row of ``prompts``; default:
    the model's prompt), as ``rows x width`` padded with ``-inf``."""
    counts = [len(hyps) for hyps in lists]
    if prompts is None:
        prompts = [model.prompt()] * len(lists)
    row_prompts = [list(map(int, p)) for p, hyps in zip(prompts, lists, strict=True) for _ in hyps]
    targets = [tokens + [model.eot] for hyps in lists for tokens in hyps]
    prompt = len(row_prompts[0])  # every row's prompt is equally long
    length = max(len(t) for t in targets)
    device = encoder_out.device
    inputs = torch.full((len(targets), prompt + length - 1), model.pad, device=device)
    target = torch.full((len(targets), length), model.pad, device=device)
    for i, tokens in enumerate(targets):
        inputs[i, : prompt + len(tokens) - 1] = torch.tensor(row_prompts[i] + tokens[:-1])
        target[i, : len(tokens)] = torch.tensor(tokens)
    ends = torch.tensor([len(t) for t in targets], device=device)
    mask = torch.arange(length, device=device)[None] < ends[:, None]
    # Each row's encoder states serve all its hypotheses: one decoder pass for the whole batch.
    tiled = encoder_out.repeat_interleave(torch.tensor(counts, device=device), dim=0)
    logits = model.forward_decoder(inputs, tiled)[:, prompt - 1 :]
    token_log_probs = logits.float().log_softmax(dim=-1).gather(-1, target[..., None])[..., 0]
    summed = (token_log_probs * mask).sum(dim=1)
    rows = torch.repeat_interleave(torch.arange(len(lists)), torch.tensor(counts))
    columns = torch.tensor([i for count in counts for i in range(count)], dtype=torch.long)
    scores = torch.full((len(lists), width), -torch.inf, device=device)
    return scores.index_put((rows.to(device), columns.to(device)), summed)


def word_errors(normalize, lists, refs, languages=None):
    """Word errors of each hypothesis text against its reference (``rows x N``, 0 where a list
    is shorter) and each reference's word count, both after ``normalize`` (given each row's
    language, from ``languages``, when it is a ``scoring.Normalizers``)."""
    width = max(len(texts) for texts in lists)
    errors = torch.zeros(len(lists), width)
    words = torch.zeros(len(lists))
    languages = languages or [None] * len(refs)
    for row, (texts, ref, language) in enumerate(zip(lists, refs, languages, strict=True)):
        ref_words = _normalized(normalize, ref, language).split()
        words[row] = len(ref_words)
        for i, text in enumerate(texts):
            errors[row, i] = edit_distance(
                _normalized(normalize, text, language).split(), ref_words
            )
    return errors, words


def _normalized(normalize, text, language):
    """``text`` after ``normalize``, given the language when one is known."""
    return normalize(text) if language is None else normalize(text, language)


def expected_error_loss(scores, errors, words):
    """The MWER loss: sum over utterances of sum_i p_i (errors_i - the list's mean errors), per
    reference word, with p the softmax of ``scores`` over each list (``-inf``: no hypothesis).

    Also returns the expected and the oracle (lowest in the list) WER in percent, as floats.
    """
    present = torch.isfinite(scores)
    probs = torch.softmax(scores, dim=-1)
    errors = errors.to(scores.device) * present
    mean = errors.sum(dim=1) / present.sum(dim=1)
    total_words = words.sum().clamp(min=1).item()
    loss = (probs * (errors - mean[:, None]) * present).sum() / total_words
    expected = (probs.detach() * errors).sum().item()
    oracle = errors.masked_fill(~present, torch.inf).min(dim=1).values.sum().item()
    return loss, 100 * expected / total_words, 100 * oracle / total_words


def objective(model, found, refs, normalize, ce, ce_weight, languages=None):
    """MWER loss of ``found`` (an ``NBest``) against ``refs`` (in ``languages``, for their
    normalisers) + ``ce_weight`` x ``ce``, and the step's logged numbers (``STEP_KEYS``)."""
    texts = [[model.decode_text(tokens) for tokens in hyps] for hyps in found.tokens]
    errors, words = word_errors(normalize, texts, refs, languages)
    loss, expected, oracle = expected_error_loss(found.scores, errors, words)
    logged = {"expected_wer": expected, "oracle_wer": oracle, "ce": float(ce.detach())}
    return loss + ce_weight * ce, logged


def init_checkpoint(value, checkpointer):
    """The model file ``mwer_init`` names: a checkpoint folder, or the epoch number of one of
    this run's kept end-of-epoch checkpoints; checked before training starts: its SHA-256
    against the one its ``CKPT.yaml`` recorded, and (a checkpoint written before checksums)
    that it reads. Raises ``RecipeError`` when there is none or it is damaged."""
    if isinstance(value, int) and not isinstance(value, bool):
        found = checkpointer.find_checkpoint(
            ckpt_predicate=lambda c: c.meta.get("epoch") == value  # end-of-epoch only
        )
        if found is None:
            raise RecipeError(
                f"mwer_init: no kept checkpoint of epoch {value} in {checkpointer.checkpoints_dir}"
            )
        path = found.path
    else:
        path = Path(str(value))
        if not (path / CHECKPOINT_FILE).is_file():
            raise RecipeError(
                f"mwer_init: {path} is not a checkpoint folder (no {CHECKPOINT_FILE})"
            )
    check_init_file(path / CHECKPOINT_FILE)
    return path / CHECKPOINT_FILE


def check_init_file(model_file):
    """Refuse a damaged ``mwer_init`` model file in one line naming it."""
    import yaml

    from whisper_finetuning.common.checksums import damage
    from whisper_finetuning.model.asr import WhisperASR
    from whisper_finetuning.training.checkpointing import CHECKSUMS_KEY, DamagedCheckpointFile

    try:
        meta = yaml.safe_load((model_file.parent / "CKPT.yaml").read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        meta = None
    sums = meta.get(CHECKSUMS_KEY) if isinstance(meta, dict) else None
    recorded = sums.get(CHECKPOINT_FILE) if isinstance(sums, dict) else None
    why = damage(model_file, recorded) if recorded else None
    if why:
        raise RecipeError(f"mwer_init: {model_file} {why}; {INIT_ADVICE}")
    if not recorded:  # no checksum recorded: it must at least read
        try:
            WhisperASR.read_checkpoint(model_file)
        except DamagedCheckpointFile as error:
            raise RecipeError(f"mwer_init: {error}; {INIT_ADVICE}") from None


def beam_search(hparams):
    """MWER's N-best search: ``mwer_beam_size`` hypotheses, decoded as the test search is."""
    from whisper_finetuning.decoding.search import BeamSearch

    return BeamSearch(
        beam_size=hparams.mwer_beam_size,
        max_new_tokens=hparams.decode_max_tokens,
        length_penalty=hparams.length_penalty,
        loop_stop=hparams.loop_stop,
    )
