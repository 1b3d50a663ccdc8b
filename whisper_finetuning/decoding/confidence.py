"""How sure a model was of the transcripts it searched: openai/whisper's three signals.

* ``mean_logprob``: the transcript's summed log-probability, end of text included, divided by
  its token count + 1 (openai's ``avg_logprob``), the log-softmax taken after the generation
  config's suppressed tokens are masked, as the searchers mask them;
* ``no_speech_prob``: the probability of ``<|nospeech|>`` (``<|nocaptions|>`` in older
  vocabularies, always the id just before ``<|notimestamps|>``) at the start-of-transcript
  position (openai's ``no_speech_prob``);
* ``compression_ratio``: the text's UTF-8 bytes over their zlib-compressed size; a looping
  transcript compresses well (openai's threshold: 2.4).

The transcripts are scored in one teacher-forced decoder pass per encoder window, never
searched again.
"""

import zlib

import torch

from whisper_finetuning.decoding.search import _suppress  # the searchers' one masking rule
from whisper_finetuning.model.vocabulary import NO_TIMESTAMPS, SOT


def compression_ratio(text):
    """UTF-8 bytes of ``text`` over their zlib-compressed size (0 for an empty text)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


@torch.no_grad()
def transcript_confidence(whisper, states, prompts, hyps):
    """``[(mean_logprob, no_speech_prob)]`` per row of ``states`` (``EncoderStates``): each
    row's ``hyps`` tokens (without prompt or end of text) scored after its ``prompts`` row."""
    found = [
        _window_confidence(whisper, out, [prompts[r] for r in rows], [hyps[r] for r in rows])
        for rows, out in states.groups
    ]
    return states.rejoin(found)


def _window_confidence(whisper, encoder_out, prompts, hyps):
    """``transcript_confidence`` for rows that share one encoder window."""
    no_speech = whisper.tokenizer.convert_tokens_to_ids(NO_TIMESTAMPS) - 1
    sot = whisper.tokenizer.convert_tokens_to_ids(SOT)
    targets = [list(h) + [whisper.eot] for h in hyps]
    inputs = [list(p) + list(h) for p, h in zip(prompts, hyps, strict=True)]
    width = max(len(i) for i in inputs)
    padded = torch.full((len(inputs), width), whisper.pad, dtype=torch.long)
    for row, tokens in enumerate(inputs):
        padded[row, : len(tokens)] = torch.as_tensor(tokens)
    logits = whisper.forward_decoder(padded.to(encoder_out.device), encoder_out).float()
    results = []
    for row, (prompt, target) in enumerate(zip(prompts, targets, strict=True)):
        start = len(prompt) - 1  # the last prompt position predicts the first token
        predicting = logits[row, start : start + len(target)].clone()
        _suppress(predicting[1:], whisper.model, first_step=False)
        _suppress(predicting[:1], whisper.model, first_step=True)
        log_probs = predicting.log_softmax(dim=-1)
        picked = log_probs.gather(-1, torch.as_tensor(target, device=log_probs.device)[:, None])
        at_sot = logits[row, list(prompt).index(sot)].softmax(dim=-1)
        results.append((float(picked.sum()) / len(target), float(at_sot[no_speech])))
    return results
