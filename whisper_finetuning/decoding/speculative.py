"""Speculative greedy decoding: an assistant (a distilled student) drafts, the model verifies.

Each round the assistant drafts ``draft_tokens`` tokens greedily with its own key/value cache;
the model scores the model's next token and the whole draft in one decoder pass and keeps the
draft up to its first token that is not the model's own greedy choice, which replaces it. Every
kept token is the model's argmax after the same prefix, with the same suppressed tokens, so the
transcript is the model's greedy one (``search.greedy_search``, no loop stop) however good the
assistant is; a good assistant only makes it faster (fewer passes of the big decoder).

The assistant reads the model's encoder states: its encoder must be the model's (a student
cut from it with a frozen encoder), as distil-whisper's students keep the teacher's encoder.
"""

from dataclasses import dataclass, field

import torch

from whisper_finetuning.common.errors import RecipeError
from whisper_finetuning.decoding.search import (
    _search_by_window,  # the searchers' own window loop, rules or not
    mask_suppressed,
    max_new_tokens_for,  # the searchers' own length limit and masking rule
    new_cache,
    no_speech_probabilities,
)
from whisper_finetuning.decoding.transcribe_rules import Attempt, TranscribeRules


def _truncate(cache, length):
    """Drop a cache's self-attention positions past ``length``."""
    extra = cache.self_attention_cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


@torch.no_grad()
def speculative_greedy(model, assistant, encoder_out, prompt, draft_tokens=4, max_new_tokens=None):
    """The model's greedy transcript of one utterance (``encoder_out``: [1, frames, width]) from
    ``prompt``, drafted by ``assistant``; returns the tokens (no prompt, no end of text) and
    ``(drafted, accepted)`` token counts."""
    found, counts = speculative_attempt(
        model, assistant, encoder_out, prompt, draft_tokens, max_new_tokens
    )
    return found.tokens, counts


def _logprob(masked, token):
    """The log-probability of ``token`` in one row of masked logits."""
    return masked.log_softmax(dim=-1)[0, token].item()


@torch.no_grad()
def speculative_attempt(model, assistant, encoder_out, prompt, draft_tokens=4, max_new_tokens=None):
    """``speculative_greedy``'s transcript as a ``transcribe_rules.Attempt`` (as
    ``search.greedy_attempts`` gives it: the summed log-probability of its tokens and end of
    text, the no-speech probability; never loop-stopped), and the ``(drafted, accepted)``
    token counts."""
    prompt = torch.as_tensor([list(prompt)], device=encoder_out.device)
    limit = max_new_tokens_for(model, max_new_tokens, prompt)
    model_cache, assistant_cache = new_cache(), new_cache()
    first = model.forward_decoder(prompt, encoder_out, model_cache)
    (no_speech_prob,) = no_speech_probabilities(model, first, prompt)
    following = first[:, -1].float()
    assistant_todo = prompt[0].tolist()  # tokens the assistant's cache still lacks
    hyp, drafted, accepted, sum_logprob = [], 0, 0, 0.0

    def attempt():
        return Attempt(hyp, False, sum_logprob, no_speech_prob, 0.0), (drafted, accepted)

    while len(hyp) < limit:
        masked = mask_suppressed(following, model, not hyp)
        token = int(masked.argmax(dim=-1))
        sum_logprob += _logprob(masked, token)
        if token == model.eot:
            break
        room = min(draft_tokens, limit - len(hyp) - 1)
        draft = _draft(assistant, encoder_out, assistant_cache, assistant_todo + [token], room)
        drafted += len(draft)
        step = torch.tensor([[token, *draft]], device=encoder_out.device)
        logits = model.forward_decoder(step, encoder_out, model_cache)[0].float()
        hyp.append(token)
        kept = 0
        for position, proposed in enumerate(draft):
            masked = mask_suppressed(logits[position : position + 1], model, False)
            choice = int(masked.argmax())
            if choice != proposed:
                break
            kept += 1
            sum_logprob += _logprob(masked, proposed)
            if proposed == model.eot:
                accepted += kept
                return attempt()
            hyp.append(proposed)
        accepted += kept
        following = logits[kept : kept + 1]
        sequence = prompt[0].tolist() + hyp
        _truncate(model_cache, len(sequence))
        _truncate(assistant_cache, len(sequence))
        assistant_todo = sequence[assistant_cache.self_attention_cache.get_seq_length() :]
    return attempt()


def _draft(assistant, encoder_out, cache, todo, room):
    """Up to ``room`` greedy assistant tokens after the tokens ``todo`` its cache lacks (ending
    at its end of text)."""
    draft = []
    step_input = torch.tensor([todo], device=encoder_out.device)
    for _ in range(room):
        logits = assistant.forward_decoder(step_input, encoder_out, cache)[:, -1].float()
        proposed = int(mask_suppressed(logits, assistant, False).argmax(dim=-1))
        draft.append(proposed)
        if proposed == assistant.eot:
            break
        step_input = torch.tensor([[proposed]], device=encoder_out.device)
    return draft


@dataclass
class SpeculativeSearch:
    """Greedy search of the model with ``assistant`` drafting (the searchers' interface); the
    drafted and accepted token counts add up in ``counts``. With ``rules``, under openai's
    ``transcribe`` rules as ``search.GreedySearch`` applies them: the drafted greedy decode at
    temperature 0, samples (undrafted) above it."""

    assistant: object
    draft_tokens: int = 4
    max_new_tokens: int | None = None
    counts: list = field(default_factory=lambda: [0, 0])
    rules: TranscribeRules | None = None
    loop_stop = None  # speculative decoding has no loop stop (nor have the fallback's samples)

    def __call__(self, model, states, prompts=None):
        """Token lists and (never set) loop-stop flags for every row of ``states``, one row at
        a time, as ``GreedySearch`` gives them."""
        self.assistant.to(states.groups[0][1].device)

        def drafted(out, rows_prompts):
            found = []
            for position in range(out.shape[0]):
                prompt = model.prompt() if rows_prompts is None else rows_prompts[position].tolist()
                attempt, (drafted, accepted) = speculative_attempt(
                    model, self.assistant, out[position : position + 1], prompt,
                    self.draft_tokens, self.max_new_tokens,
                )  # fmt: skip
                self.counts[0] += drafted
                self.counts[1] += accepted
                found.append(attempt)
            return found

        return _search_by_window(model, states, prompts, self.rules, drafted, drafted, self)


def assisted_search(hparams, test_search):
    """The run's test search: with ``assistant`` (an experiment folder or a model), greedy
    search drafted by it (``test_beam_size`` must be 1) under ``test_search``'s ``transcribe``
    rules, else ``test_search`` (the yaml's)."""
    if hparams["assistant"] is None:
        return test_search
    if hparams["test_beam_size"] != 1:
        raise RecipeError("assistant: speculative decoding is greedy; set --test_beam_size=1")
    from whisper_finetuning.model.sources import load_frozen  # torch and the export's loader

    whisper = hparams["whisper"]
    assistant, _ = load_frozen(
        hparams["assistant"], hparams["whisper_cache"], whisper.window_seconds
    )
    return SpeculativeSearch(
        assistant,
        max_new_tokens=hparams["decode_max_tokens"],
        rules=test_search.rules,
    )
