"""Decoder forward + backward with and without ``torch.compile`` on CPU: a random Whisper of the
given shape, the encoder frozen (a fixed random encoder output, as from the cache), teacher
forcing and ``fast_loss``; the two run in turn, step by step, so both see the same load.

Usage: python -m whisper_finetuning.compile_benchmark \
    [--model tiny.en] [--batch_size 8] [--tokens 40]
       [--encoder_window_seconds 10] [--pairs 16]
"""

import argparse
import statistics
import sys
import time

import torch
from transformers import WhisperForConditionalGeneration

from whisper_finetuning.model.fast_loss import nll_loss
from whisper_finetuning.profiling.memory_plan import FRAMES_PER_SECOND, whisper_config


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--encoder_window_seconds", type=int, default=10)
    parser.add_argument("--pairs", type=int, default=16)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(whisper_config(args.model)).train()
    model.model.encoder.requires_grad_(False)
    frames = args.encoder_window_seconds * FRAMES_PER_SECOND
    encoder_out = torch.randn(args.batch_size, frames, model.config.d_model)
    ids = torch.randint(0, model.config.vocab_size, (args.batch_size, args.tokens + 1))

    def step(decoder):
        """One training step's forward and backward; its loss."""
        hidden = decoder(input_ids=ids[:, :-1], encoder_hidden_states=encoder_out)
        loss, _ = nll_loss(
            model.proj_out, hidden.last_hidden_state, ids[:, 1:], torch.ones(args.batch_size), 0.1
        )
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss.item()

    eager, compiled = model.model.decoder, torch.compile(model.model.decoder)
    start = time.perf_counter()
    losses = (step(eager), step(compiled))
    print(f"compilation and first steps: {time.perf_counter() - start:.1f} s; losses {losses}")
    times = {eager: [], compiled: []}
    for _ in range(args.pairs):
        for decoder in (eager, compiled):
            start = time.perf_counter()
            step(decoder)
            times[decoder].append(time.perf_counter() - start)
    ratios = [c / e for e, c in zip(times[eager], times[compiled], strict=True)]
    low, _, high = statistics.quantiles(ratios, n=4)
    for name, decoder in (("eager", eager), ("compiled", compiled)):
        print(
            f"{name:8} median {statistics.median(times[decoder]):.3f} s, "
            f"min {min(times[decoder]):.3f} s"
        )
    print(
        f"{args.model}, batch {args.batch_size} x {args.tokens} tokens, {frames} frames, "
        f"{args.pairs} pairs: compiled / eager step time, median of pairs "
        f"{statistics.median(ratios):.2f} (quartiles {low:.2f}-{high:.2f}), of minima "
        f"{min(times[compiled]) / min(times[eager]):.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
