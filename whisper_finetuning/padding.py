"""Share of padded decoder positions per epoch: plain batches, or dynamic batches bucketed by
audio duration or by decoder tokens (``dynamic_batch_length``).

Plain batches are ``--batch_size`` rows of a reshuffled epoch (``train_loader_kwargs``); the
dynamic ones SpeechBrain's ``DynamicBatchSampler`` with ``--num_buckets`` and a bound of
``--max_batch_length`` seconds or, for tokens, as many decoder positions as the corpus has in
that many seconds on average (so both hold about as many rows). Rows' decoder positions are
the plain prompt, the tokenizer's tokens of ``wrd`` and end of text; examples built on the fly
(timestamps, previous text, long-form) are not counted. Nothing is trained.

Usage: python -m whisper_finetuning.padding TRAIN_CSV \
    [--whisper_hub bundled:tiny.en] [--batch_size 8]
       [--max_batch_length 120] [--num_buckets 20] [--epochs 5]
"""

import argparse
import sys

import torch

from whisper_finetuning.data import batching, manifests
from whisper_finetuning.data.manifests import DataError
from whisper_finetuning.model.asr import WhisperASR
from whisper_finetuning.model.bundled import resolve_source


def plain_batches(rows, batch_size, epoch, seed):
    """One epoch of ``batch_size``-row batches of a shuffled order, as the plain loader."""
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    return [order[start : start + batch_size] for start in range(0, rows, batch_size)]


def positions_per_second(dataset, whisper):
    """Every row's decoder positions, and the corpus's decoder positions per audio second."""
    positions = [whisper.decoder_positions(dataset.data[u]["wrd"]) for u in dataset.data_ids]
    seconds = sum(float(dataset.data[u]["duration"]) for u in dataset.data_ids)
    return positions, sum(positions) / seconds


def epochs_of_padding(dataset, whisper, batch_size, max_seconds, num_buckets, epochs, seed=0):
    """{setting: (padded, total positions, batches)} summed over ``epochs`` epochs."""
    positions, rate = positions_per_second(dataset, whisper)
    bounds = {"duration": max_seconds, "tokens": max_seconds * rate}
    batchings = {"plain": lambda epoch: plain_batches(len(positions), batch_size, epoch, seed)}
    for kind, bound in bounds.items():
        options = {"max_batch_length": bound, "num_buckets": num_buckets, "seed": seed}
        sampler = batching.dynamic_batch_sampler(dataset, kind, whisper, options)

        def epoch_batches(epoch, sampler=sampler):
            sampler.set_epoch(epoch)
            return list(sampler)

        batchings[f"{kind} buckets"] = epoch_batches
    results = {}
    for name, batches_of in batchings.items():
        padded = total = count = 0
        for epoch in range(epochs):
            batches = batches_of(epoch)
            epoch_padded, epoch_total = batching.padding(batches, positions)
            padded, total, count = padded + epoch_padded, total + epoch_total, count + len(batches)
        results[name] = (padded, total, count)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("train_csv")
    parser.add_argument("--data_folder", default=".", help="$data_root (audio is not read)")
    parser.add_argument("--whisper_hub", default="bundled:tiny.en", help="for its tokenizer")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_batch_length", type=float, default=120, help="seconds")
    parser.add_argument("--num_buckets", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args(argv)
    try:
        dataset = manifests.load_manifest(args.train_csv, args.data_folder)
    except (DataError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    whisper = WhisperASR(str(resolve_source(args.whisper_hub, None)))
    results = epochs_of_padding(
        dataset,
        whisper,
        args.batch_size,
        args.max_batch_length,
        args.num_buckets,
        args.epochs,
    )
    rows, rate = len(dataset.data_ids), positions_per_second(dataset, whisper)[1]
    print(
        f"{rows} rows, {args.epochs} epochs; bound {args.max_batch_length:g} s or "
        f"{args.max_batch_length * rate:.0f} decoder positions ({rate:.2f} per second)"
    )
    print("| batches | per epoch | rows per batch | decoder positions | padded | padded share |")
    print("|---|---|---|---|---|---|")
    for name, (padded, total, count) in results.items():
        print(
            f"| {name} | {count / args.epochs:.1f} | {rows * args.epochs / count:.1f} | "
            f"{total:,} | {padded:,} | {100 * padded / total:.1f}% |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
