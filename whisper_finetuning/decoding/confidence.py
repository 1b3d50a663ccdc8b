"""How sure a model was of the transcripts it searched: two of openai/whisper's three signals
(the third, ``compression_ratio``, is ``transcribe_rules``').

* ``mean_logprob``: the transcript's summed log-probability, end of text included, divided by
  its token count + 1 (openai's ``avg_logprob``), the log-softmax taken after the generation
  config's suppressed tokens are masked, as the searchers mask them;
* ``no_speech_prob``: the probability of ``<|nospeech|>`` (``<|nocaptions|>`` in older
  vocabularies, always the id just before ``<|notimestamps|>``) at the start-of-transcript
  position (openai's ``no_speech_prob``), as the searchers take it.

The transcripts are scored in one teacher-forced decoder pass per encoder window, never
searched again.
"""

import torch

from whisper_finetuning.decoding.search import mask_suppressed, no_speech_probabilities


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
    targets = [list(h) + [whisper.eot] for h in hyps]
    inputs = [list(p) + list(h) for p, h in zip(prompts, hyps, strict=True)]
    width = max(len(i) for i in inputs)
    padded = torch.full((len(inputs), width), whisper.pad, dtype=torch.long)
    for row, tokens in enumerate(inputs):
        padded[row, : len(tokens)] = torch.as_tensor(tokens)
    padded = padded.to(encoder_out.device)
    logits = whisper.forward_decoder(padded, encoder_out).float()
    no_speech = no_speech_probabilities(whisper, logits, padded)
    results = []
    for row, (prompt, target) in enumerate(zip(prompts, targets, strict=True)):
        start = len(prompt) - 1  # the last prompt position predicts the first token
        predicting = logits[row, start : start + len(target)].clone()
        mask_suppressed(predicting[1:], whisper, first_step=False)
        mask_suppressed(predicting[:1], whisper, first_step=True)
        log_probs = predicting.log_softmax(dim=-1)
        picked = log_probs.gather(-1, torch.as_tensor(target, device=log_probs.device)[:, None])
        results.append((float(picked.sum()) / len(target), no_speech[row]))
    return results
