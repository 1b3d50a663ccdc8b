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

With ``rules`` (``transcribe_rules.TranscribeRules``), both searchers decode as openai's
``transcribe`` does: a hypothesis that is too repetitive (compression ratio) or too unlikely
(mean log-probability) is decoded again by sampling at the next temperature (the best of
``best_of`` samples), and one where
``<|nospeech|>`` was likely enough and the text unlikely enough is empty.
"""

import hashlib
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from whisper_finetuning.decoding.transcribe_rules import (
    Attempt,
    TranscribeRules,
    best_sample,
    transcribe,
)
from whisper_finetuning.evaluation.text import LoopStop  # noqa: F401  (hparams and callers name it here)
from whisper_finetuning.model.vocabulary import MAX_INITIAL_TIMESTAMP_INDEX


def new_cache():
    """An empty self-attention + cross-attention cache."""
    return EncoderDecoderCache(DynamicCache(), DynamicCache())


def mask_suppressed(logits, model, first_step):
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


def max_new_tokens_for(model, max_new_tokens, prompts):
    """Cap the length so prompt plus transcript fit the decoder's positions."""
    limit = model.model.config.max_target_positions - prompts.shape[1]
    return limit if max_new_tokens is None else min(max_new_tokens, limit)


def _prompts(model, prompts, batch, device):
    """Each row's prompt as a ``[batch, length]`` tensor (the model's default when None)."""
    if prompts is None:
        prompts = [model.prompt()] * batch
    return torch.as_tensor(prompts, device=device)


def no_speech_probabilities(model, logits, prompts):
    """openai's ``no_speech_prob`` per row: the probability of ``<|nospeech|>`` at the start of
    transcript's position of the first step's ``logits`` (``[rows, prompt length, vocab]``,
    nothing suppressed)."""
    positions = (prompts == model.start_of_transcript).int().argmax(dim=1)
    at_start = logits[torch.arange(len(prompts), device=logits.device), positions].float()
    return at_start.softmax(dim=-1)[:, model.no_speech].tolist()


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
    found = greedy_attempts(
        model, encoder_out, max_new_tokens, loop_stop, prompts, timestamps, no_speech=False
    )
    return [a.tokens for a in found], [a.looped for a in found]


def _uniform(key):
    """A number in [0, 1) fixed by ``key`` (a tuple of numbers)."""
    return int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8]) / 2**64


def sample_tokens(logits, temperature, keys):
    """One token per row of ``logits`` drawn from their softmax at ``temperature``: the inverse
    of the row's cumulative distribution at a number fixed by its key (seed, temperature,
    prompt, tokens so far), so a row draws the same token alone or in any batch, and again
    after a restart; ``[rows, 1]``."""
    probs = (logits.double() / temperature).softmax(dim=-1)
    cumulative = probs.cumsum(dim=-1)
    drawn = torch.tensor([_uniform(key) for key in keys], dtype=torch.float64)
    drawn = drawn.to(logits.device)[:, None] * cumulative[:, -1:]
    return torch.searchsorted(cumulative, drawn, right=True).clamp(max=logits.shape[-1] - 1)


@torch.no_grad()
def greedy_attempts(
    model,
    encoder_out,
    max_new_tokens=None,
    loop_stop=None,
    prompts=None,
    timestamps=False,
    temperature=0.0,
    seed=0,
    no_speech=True,
    samples=None,
):
    """``greedy_search`` (at ``temperature`` above 0: sampling from the logits divided by it,
    ``sample_tokens`` with ``seed``), each row's result as an ``Attempt``: tokens, loop flag, the
    summed log-probability of its tokens and end of text (after suppression, without the
    temperature, as openai sums them) and its no-speech probability (None unless
    ``no_speech``). ``samples`` (one number per row; default all 0) tells apart rows that
    sample the same window: a row's sample number ``k`` above 0 joins its sampling keys, so
    copies of one window draw different samples, and sample 0 draws as a row alone does."""
    batch = encoder_out.shape[0]
    device = encoder_out.device
    cache = new_cache()
    hyps, looped = [[] for _ in range(batch)], [False] * batch
    sum_logprobs, no_speech_probs = [0.0] * batch, [None] * batch
    live = list(range(batch))  # the rows still searching, in the order of the cache's rows
    step_input = _prompts(model, prompts, batch, device)
    row_prompts = [tuple(p) for p in step_input.tolist()]
    sample_key = [(k,) if k else () for k in (samples or [0] * batch)]
    for step in range(max_new_tokens_for(model, max_new_tokens, step_input)):
        logits = model.forward_decoder(step_input, encoder_out, cache)
        if step == 0 and no_speech:
            no_speech_probs = no_speech_probabilities(model, logits, step_input)
        logits = mask_suppressed(logits[:, -1].float(), model, step == 0)
        if timestamps:
            no_timestamps = model.timestamp_begin - 1
            live_hyps = [hyps[b] for b in live]
            logits = timestamp_rules(
                logits, live_hyps, model.timestamp_begin, model.eot, no_timestamps
            )
        log_probs = logits.log_softmax(dim=-1)
        if temperature > 0:
            keys = [
                (seed, temperature, row_prompts[b], tuple(hyps[b])) + sample_key[b] for b in live
            ]
            chosen = sample_tokens(logits, temperature, keys)
        else:
            chosen = logits.argmax(dim=-1, keepdim=True)
        chosen_log_probs = log_probs.gather(1, chosen)[:, 0].tolist()
        kept, next_tokens = [], []
        for position, token in enumerate(chosen[:, 0].tolist()):
            b = live[position]
            sum_logprobs[b] += chosen_log_probs[position]
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
    return [
        Attempt(hyps[b], looped[b], sum_logprobs[b], no_speech_probs[b], temperature)
        for b in range(batch)
    ]


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
    finished, _ = _beam(
        model, encoder_out, beam_size, max_new_tokens, length_penalty, loop_stop, prompts, False
    )
    return [[(tokens, looped) for _, tokens, looped, _ in hyps] for hyps in finished]


@torch.no_grad()
def beam_attempts(
    model,
    encoder_out,
    beam_size=5,
    max_new_tokens=None,
    length_penalty=1.0,
    loop_stop=None,
    prompts=None,
):
    """``beam_search``'s best hypothesis per row as an ``Attempt`` (its summed
    log-probability: the beam's, end of text included; its no-speech probability)."""
    finished, no_speech = _beam(
        model, encoder_out, beam_size, max_new_tokens, length_penalty, loop_stop, prompts, True
    )
    return [
        Attempt(hyps[0][1], hyps[0][2], hyps[0][3], no_speech[b], 0.0)
        for b, hyps in enumerate(finished)
    ]


def _beam(
    model, encoder_out, beam_size, max_new_tokens, length_penalty, loop_stop, prompts, no_speech
):
    """The beam search: per utterance its distinct best ``(normalised score, tokens, looped,
    summed log-probability)``, best first, and each utterance's no-speech probability (None
    unless ``no_speech``)."""
    batch = encoder_out.shape[0]
    no_speech_probs = [None] * batch
    device = encoder_out.device
    cache = new_cache()
    # The first step runs once per utterance (the cross-attention keys are computed once);
    # choosing its top tokens then widens every row into ``beam_size`` beams.
    live = 1
    step_input = _prompts(model, prompts, batch, device)
    scores = torch.zeros(batch, live, device=device)
    sequences = torch.empty(batch, 0, dtype=torch.long, device=device)
    finished = [[] for _ in range(batch)]
    done = [False] * batch
    for step in range(max_new_tokens_for(model, max_new_tokens, step_input)):
        logits = model.forward_decoder(step_input, encoder_out, cache)
        if step == 0 and no_speech:
            no_speech_probs = no_speech_probabilities(model, logits, step_input)
        log_probs = mask_suppressed(logits[:, -1].float(), model, step == 0).log_softmax(dim=-1)
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
                    finished[b].append((normalised, prefixes[row], False, score))
                    continue
                if loop_stop:
                    keep = loop_stop.cut(prefixes[row] + [token])
                    if keep is not None:  # ranked by the looping beam's score
                        finished[b].append((normalised, prefixes[row][:keep], True, score))
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
                    raw = scores[b, k].item()
                    normalised = raw / length**length_penalty
                    finished[b].append((normalised, sequences[b * live + k].tolist(), False, raw))
    return [_distinct_best(hyps, beam_size) for hyps in finished], no_speech_probs


def _distinct_best(scored, n):
    """The ``n`` best distinct hypotheses of ``[(score, tokens, looped, summed log-prob)]`` (a
    stable sort keeps the first of equal scores, as ``max`` does); two beams a loop stop cut
    alike count once."""
    kept, seen = [], set()
    for hypothesis in sorted(scored, key=lambda item: -item[0]):
        if tuple(hypothesis[1]) not in seen:
            seen.add(tuple(hypothesis[1]))
            kept.append(hypothesis)
    return kept[:n]


def search_by_rules(
    model, encoder_out, prompts, rules, search, max_new_tokens, loop_stop, timestamps=False
):
    """Each row's final ``Attempt`` under openai's ``transcribe`` rules (``rules``): decoded by
    ``search(encoder_out, prompts)`` (a list of ``Attempt``) at temperature 0, by sampling
    above it (``sample_tokens`` with ``rules.seed``): ``rules.best_of`` samples per row, drawn
    in one batch (each row repeated, sample ``k`` keyed by ``k``), the best by openai's ranker
    (``transcribe_rules.best_sample``) kept; a skipped row (no speech) has no tokens and no
    loop."""
    prompts = _prompts(model, prompts, encoder_out.shape[0], encoder_out.device)

    def decode(rows, temperature):
        out, rows_prompts = encoder_out[rows], prompts[rows]
        if temperature == 0:
            return search(out, rows_prompts)
        n = rules.best_of
        sampled = greedy_attempts(
            model,
            out.repeat_interleave(n, dim=0),
            max_new_tokens,
            loop_stop,
            rows_prompts.repeat_interleave(n, dim=0),
            timestamps,
            temperature=temperature,
            seed=rules.seed,
            samples=list(range(n)) * len(rows),
        )
        return [best_sample(sampled[i : i + n]) for i in range(0, len(sampled), n)]

    found = transcribe(rules, decode, encoder_out.shape[0], model.decode_text)
    return [
        Attempt([], False, a.sum_logprob, a.no_speech_prob, a.temperature)
        if rules.is_skipped(a)
        else a
        for a in found
    ]


@dataclass(frozen=True)
class GreedySearch:
    """Greedy search with fixed settings (built once, in the yaml); with ``rules``, under
    openai's ``transcribe`` rules (``search_by_rules``)."""

    max_new_tokens: int | None = None
    loop_stop: LoopStop | None = None
    rules: TranscribeRules | None = field(default=None, compare=False)

    def __call__(self, model, states, prompts=None):
        """Token lists and loop-stop flags for every row of ``states`` (``EncoderStates``),
        each searched from its row of ``prompts`` (default: the model's prompt)."""

        def plain(out, rows_prompts):
            return greedy_attempts(
                model, out, self.max_new_tokens, self.loop_stop, rows_prompts, no_speech=False
            )

        def greedy(out, rows_prompts):
            return greedy_attempts(model, out, self.max_new_tokens, self.loop_stop, rows_prompts)

        return _search_by_window(model, states, prompts, self.rules, plain, greedy, self)


@dataclass(frozen=True)
class BeamSearch:
    """Beam search with fixed settings (built once, in the yaml)."""

    beam_size: int = 5
    max_new_tokens: int | None = None
    length_penalty: float = 1.0
    loop_stop: LoopStop | None = None
    rules: TranscribeRules | None = field(default=None, compare=False)

    def __call__(self, model, states, prompts=None):
        """Token lists and loop-stop flags for every row of ``states`` (``EncoderStates``),
        each searched from its row of ``prompts`` (default: the model's prompt)."""
        if self.beam_size == 1:  # the same search; greedy's drops finished rows
            greedy = GreedySearch(self.max_new_tokens, self.loop_stop, self.rules)
            return greedy(model, states, prompts)

        def plain(out, rows_prompts):
            tokens, looped = beam_search(
                model,
                out,
                self.beam_size,
                self.max_new_tokens,
                self.length_penalty,
                self.loop_stop,
                prompts=rows_prompts,
            )
            return [
                Attempt(t, loop, 0.0, None, 0.0) for t, loop in zip(tokens, looped, strict=True)
            ]

        def beam(out, rows_prompts):
            return beam_attempts(
                model,
                out,
                self.beam_size,
                self.max_new_tokens,
                self.length_penalty,
                self.loop_stop,
                rows_prompts,
            )

        return _search_by_window(model, states, prompts, self.rules, plain, beam, self)

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


def _search_by_window(model, states, prompts, rules, plain, ruled, searcher):
    """Each window's rows searched from their prompts: by ``plain`` without ``rules``, else by
    ``ruled`` under them (``search_by_rules``); (token lists, loop flags) in batch order."""

    def search(out, rows_prompts):
        if rules is None:
            return plain(out, rows_prompts)
        return search_by_rules(
            model, out, rows_prompts, rules, ruled, searcher.max_new_tokens, searcher.loop_stop
        )

    found = [
        [(a.tokens, a.looped) for a in search(out, None if prompts is None else prompts[rows])]
        for rows, out in states.groups
    ]
    hyps, looped = zip(*states.rejoin(found), strict=True)
    return list(hyps), list(looped)
