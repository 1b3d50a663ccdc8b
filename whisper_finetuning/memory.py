"""Predict a training step's peak memory from the model's shapes, and which settings fit.

Settings come from an hparams file (default hparams/whisper_small.yaml);
the options below override them. Nothing is downloaded: the model is built on the meta device.

Usage: python -m whisper_finetuning.memory \
           --model large-v3 --batch_size 8 --adapter lora [--budget_gb 24]
       python -m whisper_finetuning.memory --hparams hparams/whisper_large-v3_full.yaml \
           --gpus 4  # per-GPU peak under sharding: fsdp
       python -m whisper_finetuning.memory --table  # largest batch per model and GPU
"""

import argparse
import dataclasses
import sys

from whisper_finetuning.profiling.memory_plan import GB, SHAPES, Settings, predict, shape_name
from whisper_finetuning.training.config import HparamsError, plain_values

BUDGETS_GB = (16, 24, 40, 80)
TABLE_MODELS = ("tiny", "base", "small", "medium", "large-v3", "large-v3-turbo")


def settings_from_hparams(hparams_file):
    """The memory-relevant settings of an hparams file."""
    # Memory does not depend on where the data are: any data_folder resolves the references.
    values = plain_values(hparams_file, {"data_folder": "."})
    return Settings(
        model=shape_name(values["whisper_hub"]),
        batch_size=values["batch_size"],
        encoder_window_seconds=values["encoder_window_seconds"],
        trainable_patterns=tuple(values["trainable_patterns"]),
        trainable_encoder_layers=values["trainable_encoder_layers"],
        adapter=values["adapter"],
        lora_rank=values["lora_rank"],
        lora_dropout=values["lora_dropout"],
        adapter_targets=tuple(values["adapter_targets"]),
        gradient_checkpointing=values["gradient_checkpointing"],
        bf16=values["precision"] == "bf16",
        adamw_8bit=values["adamw_8bit"],
        encoder_cache=str(values["encoder_cache"]).lower() != "false" and not values["augment"],
        loss_chunk_size=values["loss_chunk_size"],
        freeze_encoder=values["freeze_encoder"],
        sharding=values["sharding"],
    )


def variants(settings):
    """The given settings and the same with each memory saver added in turn."""
    return [
        ("as given", settings),
        ("+ gradient checkpointing", dataclasses.replace(settings, gradient_checkpointing=True)),
        (
            "+ gradient checkpointing + bf16",
            dataclasses.replace(settings, gradient_checkpointing=True, bf16=True),
        ),
        (
            "+ gradient checkpointing + bf16 + 8-bit AdamW",
            dataclasses.replace(settings, gradient_checkpointing=True, bf16=True, adamw_8bit=True),
        ),
    ]


def report(settings, budget_gb):
    """Lines describing the predicted peak and what fits ``budget_gb``."""
    plan = predict(settings)
    optimizer = "8-bit AdamW" if settings.adamw_8bit else "AdamW, fp32 states"
    lines = [
        f"{settings.model}: {plan.total_params:,} parameters, {plan.trainable_params:,} "
        f"trainable; batch {settings.batch_size}, {settings.tokens} tokens, "
        f"{settings.encoder_window_seconds} s window, loss chunks of "
        + (f"{settings.loss_chunk_size} positions" if settings.loss_chunk_size else "the batch"),
        f"  weights      {plan.weights / GB:7.2f} GB (fp32)",
        f"  gradients    {plan.gradients / GB:7.2f} GB",
        f"  optimizer    {plan.optimizer / GB:7.2f} GB ({optimizer})",
        f"  activations  {plan.activations / GB:7.2f} GB"
        + (" (bf16 autocast)" if settings.bf16 else "")
        + ": forward and loss",
        f"  backward     {plan.backward_of(settings.batch_size) / GB:7.2f} GB: the gradients "
        "and what the backward holds beside them",
        *(
            [f"  gathered     {plan.gathered / GB:7.2f} GB (root + 2 layers, with gradients)"]
            if settings.sharding == "fsdp"
            else []
        ),
        f"  peak         {plan.peak / GB:7.2f} GB"
        + (f" per GPU ({settings.gpus} GPUs, fsdp)" if settings.sharding == "fsdp" else "")
        + " (weights + optimizer + the larger of the two): "
        + ("fits" if plan.peak <= budget_gb * GB else "does not fit")
        + f" in {budget_gb:g} GB",
        f"largest batch within {budget_gb:g} GB:",
    ]
    for label, variant in variants(settings):
        lines.append(f"  {label}: {predict(variant).largest_batch(budget_gb)}")
    return lines


def table(settings):
    """The README's Markdown table: largest batch size per model and memory budget."""
    lora = dataclasses.replace(settings, adapter="lora")
    configurations = [
        lora,
        dataclasses.replace(lora, gradient_checkpointing=True, bf16=True),
        dataclasses.replace(
            settings, adapter=None, trainable_patterns=(), gradient_checkpointing=True, bf16=True
        ),
    ]
    lines = [
        "| model | params | " + " | ".join(f"{b} GB" for b in BUDGETS_GB) + " |",
        "|---|---|" + "---|" * len(BUDGETS_GB),
    ]
    for model in TABLE_MODELS:
        plans = [predict(dataclasses.replace(c, model=model)) for c in configurations]
        cells = [" / ".join(str(p.largest_batch(b)) for p in plans) for b in BUDGETS_GB]
        lines.append(
            f"| {model} | {plans[0].total_params / 1e6:.0f} M | " + " | ".join(cells) + " |"
        )
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hparams", default="hparams/whisper_small.yaml")
    parser.add_argument("--model", choices=sorted(SHAPES), help="shapes (default: whisper_hub's)")
    parser.add_argument("--batch_size", type=int)
    parser.add_argument("--tokens", type=int, help="decoder positions per utterance (128)")
    parser.add_argument("--encoder_window_seconds", type=int)
    parser.add_argument("--adapter", choices=["lora", "dora", "none"])
    parser.add_argument("--lora_rank", type=int)
    parser.add_argument("--lora_dropout", type=float)
    parser.add_argument("--gradient_checkpointing", action="store_true", default=None)
    parser.add_argument("--bf16", action="store_true", default=None)
    parser.add_argument("--adamw_8bit", action="store_true", default=None)
    parser.add_argument(
        "--no_encoder_cache", dest="encoder_cache", action="store_false", default=None
    )
    parser.add_argument("--loss_chunk_size", type=int, help="0: the whole batch's loss at once")
    parser.add_argument("--sharding", choices=["ddp", "fsdp"], help="default: the hparams'")
    parser.add_argument("--gpus", type=int, help="processes under fsdp (1)")
    parser.add_argument("--budget_gb", type=float, default=24, help="per GPU")
    parser.add_argument("--table", action="store_true", help="print the README table")
    args = parser.parse_args(argv)
    try:
        settings = settings_from_hparams(args.hparams)
        given = {
            k: v
            for k, v in vars(args).items()
            if v is not None and k in {f.name for f in dataclasses.fields(Settings)}
        }
        if given.get("adapter") == "none":
            given["adapter"] = None
        if given.get("adapter"):
            given["trainable_patterns"] = ()
        settings = dataclasses.replace(settings, **given)
        lines = table(settings) if args.table else report(settings, args.budget_gb)
    except (HparamsError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
