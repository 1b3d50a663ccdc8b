"""Measure the peak memory of training steps on CPU and compare it with the planner's prediction.

Each configuration runs in its own process: a random Whisper with the given shapes (tiny.en,
base.en; the bundled tiny.en's tokenizer) is loaded with the recipe's ``WhisperASR`` and trained
for three steps the way ``train.py`` does with the encoder cache (frozen encoder output in,
teacher-forced decoder, ``fast_loss``'s label-smoothed NLL in chunks of ``--loss_chunk_size``
positions, fused AdamW as ``adamw_fused: True``). What a training step adds to the loaded
model, the peak resident memory of the last two steps (Linux ``VmHWM``, reset after the first
step) minus the memory once the model was loaded, is compared with the predicted gradients +
optimizer state + activations; the weights (4 bytes a parameter) are exact, and the process's
own tokenizer and Python objects are no part of a GPU's memory. Before that baseline every
weight is read (transformers maps the checkpoint file: untouched weights would be paged in by
the first step and counted as its memory) and a one-utterance step warms the runtime up (its
first-use memory is no tensor's); every allocation above 64 KB gets its own pages, so the
resident peak is that of the live tensors.

Usage: python -m whisper_finetuning.memory_benchmark \
    [--models tiny.en base.en] [--loss_chunk_size 256]
       [--configurations "full decoder" ...] [--json FILE]
"""

import argparse
import dataclasses
import json
import multiprocessing
import sys
import tempfile
from pathlib import Path

from whisper_finetuning.profiling.memory_plan import GB, Settings, predict, shape_name
from whisper_finetuning.profiling.shapes import SHAPES, save_random_whisper

DECODER_ATTENTION = (
    r"decoder\.layers\.\d+\.(self_attn|encoder_attn)\.(q_proj|k_proj|v_proj|out_proj)$",
)
CONFIGURATIONS = {
    "cross-attention (demo)": {"trainable_patterns": ("encoder_attn",)},
    "full decoder": {},
    "LoRA r16": {"adapter": "lora", "adapter_targets": DECODER_ATTENTION},
    "top 2 encoder layers + decoder": {"trainable_encoder_layers": 2},
}
CONFIGURATIONS.update(
    {
        label + " + grad. ckpt": {**c, "gradient_checkpointing": True}
        for label, c in CONFIGURATIONS.items()
    }
)
STEPS = 3
SMALL_ALLOCATION = 2**16  # bytes from which an allocation gets its own pages (both measures)


def _status_kb(field):
    """A ``/proc/self/status`` memory field in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _measure(settings, model_dir, queue):
    """Child process: peak bytes of training steps above the memory before the model."""
    import torch

    from whisper_finetuning.model.asr import WhisperASR
    from whisper_finetuning.model.fast_loss import nll_loss
    from whisper_finetuning.profiling.memory_plan import FRAMES_PER_SECOND
    from whisper_finetuning.training.allocator import return_freed_memory

    # the peak the planner counts: that of the live tensors (glibc keeps freed blocks under its
    # mmap threshold resident; LoRA's rank-wide and PEFT's small tensors are under 1 MB)
    return_freed_memory(SMALL_ALLOCATION)
    torch.set_num_threads(2)
    whisper = WhisperASR(
        str(model_dir),
        trainable_patterns=settings.trainable_patterns,
        trainable_encoder_layers=settings.trainable_encoder_layers,
        adapter=settings.adapter,
        lora_rank=settings.lora_rank,
        lora_alpha=2 * settings.lora_rank,
        lora_dropout=settings.lora_dropout,
        adapter_targets=settings.adapter_targets,
        gradient_checkpointing=settings.gradient_checkpointing,
        window_seconds=settings.encoder_window_seconds,
    ).train()
    for tensor in [*whisper.parameters(), *whisper.buffers()]:
        # transformers maps safetensors files: weights not touched yet are not resident, and the
        # first step would page them in (the decoder's 118 MB in tiny.en) as if it allocated them
        tensor.detach().sum()
    trainable = [p for p in whisper.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, fused=True)  # adamw_fused: True
    generator = torch.Generator().manual_seed(0)
    frames = settings.encoder_window_seconds * FRAMES_PER_SECOND
    d_model = whisper.model.config.d_model
    # The encoder cache's entries: the frozen part's output, as the loader gives it.
    frozen_out = torch.randn(settings.batch_size, frames, d_model, generator=generator)
    if whisper.frozen_encoder_depth < len(whisper.model.model.encoder.layers) + 2:
        frozen_out = whisper.encode_frozen(
            torch.randn(settings.batch_size, 80, 2 * frames, generator=generator)
        ).detach()
    tokens = torch.randint(0, 50000, (settings.batch_size, settings.tokens), generator=generator)
    first = whisper.prompt_length - 1
    lengths = torch.ones(settings.batch_size)

    def train_step(rows, positions):
        hidden = whisper.decoder_hidden(
            tokens[:rows, :positions], whisper.encode_trainable(frozen_out[:rows])
        )
        loss, _ = nll_loss(
            whisper.model.proj_out,
            hidden[:, first:-1],
            tokens[:rows, first + 1 : positions],
            lengths[:rows],
            label_smoothing=0.1,
            chunk_size=settings.loss_chunk_size,
            statistics_rows=rows,  # as in training: the log's token statistics
        )
        del hidden
        loss.backward()

    # The runtime's own first-use memory (autograd's engine, thread pools, kernel caches: about
    # 30 MB on CPU, CUDA's context on a GPU), which no planner of tensors counts: one step of
    # one utterance of 8 positions before the measurement, its gradients dropped.
    train_step(1, first + 8)
    for parameter in trainable:
        parameter.grad = None
    loaded = _status_kb("VmRSS")
    for index in range(STEPS):
        if index == 1:  # the optimizer's state exists now (and counts): measure from here
            Path("/proc/self/clear_refs").write_text("5")
        train_step(settings.batch_size, settings.tokens)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    queue.put(_status_kb("VmHWM") - loaded)


def _measure_loss(shape, chunk_size, projection_trains, queue):
    """Child process: peak bytes of ``fast_loss``'s forward and backward alone over
    ``shape`` (batch, positions, width, vocabulary), above the memory before its later steps
    (the gradients it returns are freed each step: the planner counts them as fixed)."""
    import torch

    from whisper_finetuning.model.fast_loss import nll_loss
    from whisper_finetuning.training.allocator import return_freed_memory

    return_freed_memory(SMALL_ALLOCATION)  # the peak the planner counts: the live tensors'
    torch.set_num_threads(1)
    batch, positions, width, vocab = shape
    generator = torch.Generator().manual_seed(0)
    projection = torch.nn.Linear(width, vocab, bias=False).requires_grad_(projection_trains)
    hidden = torch.randn(batch, positions, width, generator=generator, requires_grad=True)
    targets = torch.randint(0, vocab, (batch, positions), generator=generator)
    for step in range(STEPS):
        if step == 1:
            before = _status_kb("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")
        loss, _ = nll_loss(
            projection, hidden, targets, torch.ones(batch), 0.1, chunk_size, statistics_rows=batch
        )
        loss.backward()
        hidden.grad = projection.weight.grad = loss = None
    queue.put(_status_kb("VmHWM") - before)


def _in_child(target, *args):
    """``target(*args, queue)``'s one result, run in a fresh process."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=target, args=(*args, queue))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"measurement {target.__name__}{args} failed (exit {child.exitcode})")
    return queue.get()


def measure(settings, model_dir):
    """Measured peak bytes of ``settings``'s training steps, in a fresh process."""
    return _in_child(_measure, settings, model_dir)


def measure_loss(shape, chunk_size, projection_trains):
    """Measured peak bytes of the loss alone (``_measure_loss``), in a fresh process."""
    return _in_child(_measure_loss, shape, chunk_size, projection_trains)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base.en"])
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--encoder_window_seconds", type=int, default=10)
    parser.add_argument("--loss_chunk_size", type=int, default=Settings.loss_chunk_size)
    parser.add_argument(
        "--configurations", nargs="+", choices=list(CONFIGURATIONS), default=list(CONFIGURATIONS)
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    from whisper_finetuning.model.bundled import BUNDLED_TINY_EN, resolve_source

    tokenizer_source = resolve_source(BUNDLED_TINY_EN, None)
    rows = []
    print(
        "| model | trains | trainable | predicted step GB | measured step GB | error | "
        "error of the peak (weights included) |"
    )
    print("|---|---|---|---|---|---|---|")
    for model in args.models:
        with tempfile.TemporaryDirectory() as model_dir:
            base = Settings(
                model=model,
                batch_size=args.batch_size,
                tokens=args.tokens,
                encoder_window_seconds=args.encoder_window_seconds,
                loss_chunk_size=args.loss_chunk_size,
            )
            save_random_whisper(model_dir, tokenizer_source, SHAPES[shape_name(model)])
            for label in args.configurations:
                settings = dataclasses.replace(base, **CONFIGURATIONS[label])
                plan = predict(settings)
                predicted, measured = plan.peak - plan.weights, measure(settings, model_dir)
                error = (predicted - measured) / measured
                peak_error = (predicted - measured) / (plan.weights + measured)
                rows.append(
                    {
                        "model": model,
                        "trains": label,
                        "trainable_params": plan.trainable_params,
                        "predicted": predicted,
                        "measured": measured,
                        "error": error,
                        "peak_error": peak_error,
                    }
                )
                print(
                    f"| {model} | {label} | {plan.trainable_params / 1e6:.2f} M | "
                    f"{predicted / GB:.3f} | {measured / GB:.3f} | "
                    f"{100 * error:+.1f}% | {100 * peak_error:+.1f}% |",
                    flush=True,
                )
    worst = max(abs(r["error"]) for r in rows)
    worst_peak = max(abs(r["peak_error"]) for r in rows)
    print(
        f"largest error: {100 * worst:.1f}% of the measured step, "
        f"{100 * worst_peak:.1f}% of the peak"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
