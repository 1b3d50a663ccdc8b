"""Batched greedy and beam search over a ``WhisperASR`` with a key/value cache.

Both searchers start from each row's prompt (start of transcript, language, task, no
timestamps; the model's default prompt unless ``prompts`` gives one per row, built by
``WhisperASR.prompt``), reuse encoder outputs that were computed once, and suppress the tokens
the checkpoint's generation config suppresses, the way ``transformers``' ``generate`` does, so
a fine-tuned checkpoint decodes here exactly as its exported copy decodes in a pipeline.
Greedy search also decodes with timestamps (prompts without ``<|notimestamps|>``,
``timestamps=True``): then openai/whisper's timestamp rules apply (``timestamp_rules``).

Optionally a ``LoopStop`` ends a hypothesis whose tail has become one unit repeated over and
over (Whisper's best-known failure, a single one of which can add a hundred insertions to a
validation WER and keep a whole batch decoding to the length limit); the hypothesis keeps one
copy of the unit. ``transformers``' ``generate`` has no such stop, so decodes agree with it
exactly wherever no loop was stopped, and each searcher says where one was.
"""

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from whisper_finetuning.evaluation.text import LoopStop  # noqa: F401  (hparams and callers name it here)
from whisper_finetuning.model.vocabulary import MAX_INITIAL_TIMESTAMP_INDEX


def _new_cache():
    """An empty self-attention + cross-attention cache."""
    return EncoderDecoderCache(DynamicCache(), DynamicCache())


def _suppress(logits, model, first_step):
    """Mask the generation config's suppressed tokens (and, on the first step, its begin set)."""
    config = model.generation_config
    suppressed = list(config.suppress_tokens or [])
    if first_step:
        suppressed += list(config.begin_suppress_tokens or [])
    if suppressed:
        logits[..., suppressed] = -torch.inf
    return logits


def timestamp_rules(logits, hyps, timestamp_begin, eot, no_timestamps):
    """openai/whisper's ``ApplyTimestampRules`` (``max_initial_timestamp`` 1 s), in place:
    no ``<|notimestamps|>``; timestamps come in pairs (except just before the end of text) and
    never decrease, and each segment lasts at least one step; the first token is a timestamp;
    where all timestamps together are likelier than any text token, a timestamp comes next."""
    logits[:, no_timestamps] = -torch.inf
    for row, hyp in enumerate(hyps):
        last_was_timestamp = len(hyp) >= 1 and hyp[-1] >= timestamp_begin
        penultimate_was_timestamp = len(hyp) < 2 or hyp[-2] >= timestamp_begin
        if last_was_timestamp:
            if penultimate_was_timestamp:  # a pair just closed: text (or the end) follows
                logits[row, timestamp_begin:] = -torch.inf
            else:  # a segment just ended: its closing timestamp or the end follows
                logits[row, :eot] = -torch.inf
        timestamps = [t for t in hyp if t >= timestamp_begin]
        if timestamps:
            closing = last_was_timestamp and not penultimate_was_timestamp
            lowest = timestamps[-1] if closing else timestamps[-1] + 1
            logits[row, timestamp_begin:lowest] = -torch.inf
        if not hyp:
            logits[row, :timestamp_begin] = -torch.inf
            logits[row, timestamp_begin + MAX_INITIAL_TIMESTAMP_INDEX + 1 :] = -torch.inf
    log_probs = logits.float().log_softmax(dim=-1)
    timestamp_mass = log_probs[:, timestamp_begin:].logsumexp(dim=-1)
    best_text = log_probs[:, :timestamp_begin].max(dim=-1).values
    logits[timestamp_mass > best_text, :timestamp_begin] = -torch.inf
    return logits


def _max_new_tokens(model, max_new_tokens, prompts):
    """Cap the length so prompt plus transcript fit the decoder's positions."""
    limit = model.model.config.max_target_positions - prompts.shape[1]
    return limit if max_new_tokens is None else min(max_new_tokens, limit)


def _prompts(model, prompts, batch, device):
    """Each row's prompt as a ``[batch, length]`` tensor (the model's default when None)."""
    if prompts is None:
        prompts = [model.prompt()] * batch
    return torch.as_tensor(prompts, device=device)


@torch.no_grad()
def greedy_search(
    model, encoder_out, max_new_tokens=None, loop_stop=None, prompts=None, timestamps=False
):
    """Most likely token at each step, for a batch.

    ``prompts`` (one per row, equally long; default: the model's) start the rows; with
    ``timestamps``, the prompts have no ``<|notimestamps|>`` and the timestamp rules apply.
    Returns the token lists without the prompt, and for each whether ``loop_stop`` ended it.
    A finished row leaves the batch and the cache: later steps compute only the live rows.
    """
    batch = encoder_out.shape[0]
    device = encoder_out.device
    cache = _new_cache()
    hyps, looped = [[] for _ in range(batch)], [False] * batch
    live = list(range(batch))  # the rows still searching, in the order of the cache's rows
    step_input = _prompts(model, prompts, batch, device)
    for step in range(_max_new_tokens(model, max_new_tokens, step_input)):
        logits = model.forward_decoder(step_input, encoder_out, cache)[:, -1].float()
        logits = _suppress(logits, model, step == 0)
        if timestamps:
            no_timestamps = model.timestamp_begin - 1
            live_hyps = [hyps[b] for b in live]
            logits = timestamp_rules(
                logits, live_hyps, model.timestamp_begin, model.eot, no_timestamps
            )
        kept, next_tokens = [], []
        for position, token in enumerate(logits.argmax(dim=-1).tolist()):
            b = live[position]
            if token == model.eot:
                continue
            hyps[b].append(token)
            keep = loop_stop.cut(hyps[b]) if loop_stop else None
            if keep is not None:
                del hyps[b][keep:]
                looped[b] = True
                continue
            kept.append(position)
            next_tokens.append(token)
        if not kept:
            break
        if len(kept) < len(live):  # finished rows leave the batch and the cache
            index = torch.tensor(kept, device=device)
            cache.batch_select_indices(index)
            encoder_out = encoder_out[index]
            live = [live[position] for position in kept]
        step_input = torch.tensor(next_tokens, device=device)[:, None]
    return hyps, looped


@torch.no_grad()
def beam_search(
    model,
    encoder_out,
    beam_size=5,
    max_new_tokens=None,
    length_penalty=1.0,
    loop_stop=None,
    prompts=None,
):
    """Beam search for a batch: the best token list per utterance, without the prompt, and for
    each whether ``loop_stop`` ended it (see ``beam_search_n_best``)."""
    n_best = beam_search_n_best(
        model, encoder_out, beam_size, max_new_tokens, length_penalty, loop_stop, prompts
    )
    return [hyps[0][0] for hyps in n_best], [hyps[0][1] for hyps in n_best]


@torch.no_grad()
def beam_search_n_best(
    model,
    encoder_out,
    beam_size=5,
    max_new_tokens=None,
    length_penalty=1.0,
    loop_stop=None,
    prompts=None,
):
    """Beam search for a batch (``prompts``: one per row, equally long; default: the model's),
    keeping up to ``beam_size`` distinct hypotheses per utterance.

    Returns per utterance a list of ``(tokens, looped)``, best first: the token list without the
    prompt and whether ``loop_stop`` ended it. Hypotheses are ranked by their summed
    log-probability divided by ``length ** length_penalty`` (``transformers``' convention);
    ``beam_search`` keeps the first. An utterance stops once it has ``beam_size`` finished
    hypotheses and none of its live beams can still beat the best of them. A beam whose tail
    loops finishes there, cut to one copy, ranked by its score so far (loop tokens are cheap,
    so this favours it as ``generate``, which lets it run on, does).
    """
    batch = encoder_out.shape[0]
    device = encoder_out.device
    cache = _new_cache()
    # The first step runs once per utterance (the cross-attention keys are computed once);
    # choosing its top tokens then widens every row into ``beam_size`` beams.
    live = 1
    step_input = _prompts(model, prompts, batch, device)
    scores = torch.zeros(batch, live, device=device)
    sequences = torch.empty(batch, 0, dtype=torch.long, device=device)
    finished = [[] for _ in range(batch)]
    done = [False] * batch
    for step in range(_max_new_tokens(model, max_new_tokens, step_input)):
        logits = model.forward_decoder(step_input, encoder_out, cache)[:, -1].float()
        log_probs = _suppress(logits, model, step == 0).log_softmax(dim=-1)
        vocab = log_probs.shape[-1]
        candidates = (scores.reshape(-1, 1) + log_probs).reshape(batch, live * vocab)
        top_scores, top_ids = candidates.topk(2 * beam_size, dim=-1)
        beam_origin, next_tokens = top_ids // vocab, top_ids % vocab
        new_scores = torch.full((batch, beam_size), -torch.inf, device=device)
        new_rows = (torch.arange(batch, device=device) * live)[:, None].repeat(1, beam_size)
        new_tokens = torch.full((batch, beam_size), model.eot, dtype=torch.long, device=device)
        prefixes = sequences.tolist()  # one device sync per step
        length_norm = (sequences.shape[1] + 1) ** length_penalty
        for b in range(batch):
            kept = 0
            for score, origin, token in zip(
                top_scores[b].tolist(),
                beam_origin[b].tolist(),
                next_tokens[b].tolist(),
                strict=True,
            ):
                row = b * live + origin
                if done[b] or score == -torch.inf:
                    break
                normalised = score / length_norm
                if token == model.eot:
                    finished[b].append((normalised, prefixes[row], False))
                    continue
                if loop_stop:
                    keep = loop_stop.cut(prefixes[row] + [token])
                    if keep is not None:  # ranked by the looping beam's score
                        finished[b].append((normalised, prefixes[row][:keep], True))
                        continue
                new_scores[b, kept], new_rows[b, kept], new_tokens[b, kept] = score, row, token
                kept += 1
                if kept == beam_size:
                    break
            if len(finished[b]) >= beam_size:
                best_finished = max(item[0] for item in finished[b])
                best_live = new_scores[b].max().item() / length_norm
                done[b] = done[b] or best_finished >= best_live
        if all(done):
            break
        scores = new_scores.masked_fill(torch.tensor(done, device=device)[:, None], -torch.inf)
        rows = new_rows.reshape(-1)
        # Beams only move within their utterance, whose cross-attention keys they share:
        # the cross-attention cache is widened once, never reordered.
        cache.self_attention_cache.reorder_cache(rows)
        if live == 1:
            cache.cross_attention_cache.batch_repeat_interleave(beam_size)
            encoder_out = encoder_out.repeat_interleave(beam_size, dim=0)
            live = beam_size
        sequences = torch.cat([sequences[rows], new_tokens.reshape(-1, 1)], dim=1)
        step_input = new_tokens.reshape(-1, 1)
    length = sequences.shape[1]
    for b in range(batch):
        if not done[b]:  # out of steps: live beams compete with the finished ones
            for k in range(live):
                if scores[b, k] > -torch.inf:
                    normalised = scores[b, k].item() / length**length_penalty
                    finished[b].append((normalised, sequences[b * live + k].tolist(), False))
    return [_distinct_best(hyps, beam_size) for hyps in finished]


def _distinct_best(scored, n):
    """The ``n`` best distinct token lists of ``[(score, tokens, looped)]`` (a stable sort keeps
    the first of equal scores, as ``max`` does); two beams a loop stop cut alike count once."""
    kept, seen = [], set()
    for _, tokens, looped in sorted(scored, key=lambda item: -item[0]):
        if tuple(tokens) not in seen:
            seen.add(tuple(tokens))
            kept.append((tokens, looped))
    return kept[:n]


@dataclass(frozen=True)
class GreedySearch:
    """Greedy search with fixed settings (built once, in the yaml)."""

    max_new_tokens: int | None = None
    loop_stop: LoopStop | None = None

    def __call__(self, model, states, prompts=None):
        """Token lists and loop-stop flags for every row of ``states`` (``EncoderStates``),
        each searched from its row of ``prompts`` (default: the model's prompt)."""
        return _search_by_window(
            states,
            prompts,
            lambda out, rows_prompts: greedy_search(
                model, out, self.max_new_tokens, self.loop_stop, prompts=rows_prompts
            ),
        )


@dataclass(frozen=True)
class BeamSearch:
    """Beam search with fixed settings (built once, in the yaml)."""

    beam_size: int = 5
    max_new_tokens: int | None = None
    length_penalty: float = 1.0
    loop_stop: LoopStop | None = None

    def __call__(self, model, states, prompts=None):
        """Token lists and loop-stop flags for every row of ``states`` (``EncoderStates``),
        each searched from its row of ``prompts`` (default: the model's prompt)."""
        if self.beam_size == 1:  # the same search; greedy's drops finished rows
            return GreedySearch(self.max_new_tokens, self.loop_stop)(model, states, prompts)
        return _search_by_window(
            states,
            prompts,
            lambda out, rows_prompts: beam_search(
                model,
                out,
                self.beam_size,
                self.max_new_tokens,
                self.length_penalty,
                self.loop_stop,
                prompts=rows_prompts,
            ),
        )

    def n_best(self, model, states, prompts=None):
        """Up to ``beam_size`` distinct ``(tokens, looped)`` per row of ``states``, best first,
        each searched from its row of ``prompts`` (default: the model's prompt)."""
        return states.rejoin(
            [
                beam_search_n_best(
                    model,
                    out,
                    self.beam_size,
                    self.max_new_tokens,
                    self.length_penalty,
                    self.loop_stop,
                    None if prompts is None else prompts[rows],
                )
                for rows, out in states.groups
            ]
        )


def _search_by_window(states, prompts, search):
    """Run ``search`` on each window's rows and their prompts; (token lists, loop flags) in
    batch order."""
    found = [
        list(zip(*search(out, None if prompts is None else prompts[rows]), strict=True))
        for rows, out in states.groups
    ]
    hyps, looped = zip(*states.rejoin(found), strict=True)
    return list(hyps), list(looped)
