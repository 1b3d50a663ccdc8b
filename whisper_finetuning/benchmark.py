"""Benchmark this recipe against Seq2SeqTrainer and SpeechBrain's own Whisper recipe, same data.

Both fine-tune Whisper tiny.en's decoder with the encoder frozen, on the same demo-corpus
utterances, with the same batch size, peak learning rate and number of optimizer steps, then
decode the same validation utterances greedily. The baseline is the standard transformers
setup: log-mel features padded to 30 s computed up front, the encoder run on every step, and
``predict_with_generate`` for validation. The second baseline is SpeechBrain's own Whisper
recipe (``profiling/speechbrain_baseline.py``: LibriSpeech ``train_with_whisper.py`` with
``train_hf_whisper.yaml``; the JSON's ``speechbrain_fixes`` and ``speechbrain_kept`` say what
had to be fixed to run it and what was kept as shipped). This recipe's training time includes
building its encoder-output cache for the training utterances, and its decoding time the
validation utterances' encoder pass (the baselines run the encoder while decoding), so neither
ratio is flattered; a second recipe run shows the throughput of any later experiment that
finds the cache built.

Each system runs in its own process, so each peak memory figure is its own. Each system's
training FLOPs are counted from the model's shapes (``profiling.flops``) and set
against a matrix-product probe run at the start: how close each comes to the machine's limit.

A single invocation is at the mercy of the machine's drift (the baselines' throughput moved by
up to 20% between invocations on an idle machine); ``--repeats N`` runs every system N times,
alternating which goes first, and reports medians with their ranges.

Usage: python -m whisper_finetuning.benchmark \
           [--epochs N] [--train_utterances N] [--encoder_window_seconds S] [--repeats N]
           [--json FILE]
       python -m whisper_finetuning.benchmark --device cuda ...
           (random models of the real shapes on a GPU: whisper_finetuning/synthetic_benchmark.py)
"""

import argparse
import csv
import json
import math
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT_PREFIX = "BENCHMARK "
SYSTEMS = ("recipe", "recipe_warm_cache", "baseline", "speechbrain")
BASELINES = {"baseline": "Seq2SeqTrainer", "speechbrain": "SpeechBrain"}


def demo_window_seconds():
    """The encoder window the demo trains with, on the corpus and model benchmarked here."""
    from whisper_finetuning.training.config import plain_values

    demo = plain_values(ROOT / "hparams/demo_tiny_en.yaml")
    return demo["encoder_window_seconds"]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_folder", default="data/accent_corpus")
    parser.add_argument("--model_folder", default="data/models")
    parser.add_argument("--train_utterances", type=int, default=64)
    parser.add_argument("--valid_utterances", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--warmup_steps", type=int, default=10)
    parser.add_argument(
        "--encoder_window_seconds",
        type=int,
        default=demo_window_seconds(),
        help="the recipe's encoder window step; default: the demo's (30 is Whisper's own; "
        "the baseline always pads to 30 s)",
    )
    parser.add_argument(
        "--model", help="a local Whisper folder instead of the bundled tiny.en (tests)"
    )
    parser.add_argument(
        "--manifests",
        help="a folder with train.csv and valid.csv to take the utterances from instead of the "
        "demo corpus (their $data_root is --data_folder)",
    )
    parser.add_argument(
        "--systems",
        nargs="+",
        choices=SYSTEMS,
        default=list(SYSTEMS),
        help="which systems to run (the recipe always runs: the ratios are its own)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run every system this many times, each repeat on a fresh work folder (the "
        "recipe's cold run builds its cache again) and the baselines first in every second "
        "one; the figures and ratios are then medians over the repeats, each repeat's own "
        "report under 'repeats'",
    )
    parser.add_argument("--json", help="also write the figures and ratios to this file")
    parser.add_argument("--system", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--work_folder", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def prepare_subsets(args, work):
    """The model directory and train/valid manifests with the first N utterances of each."""
    from whisper_finetuning.data.prepare.accent_corpus import prepare_accent_corpus
    from whisper_finetuning.model.bundled import resolve_source

    if args.manifests:
        manifests = {split: Path(args.manifests) / f"{split}.csv" for split in ("train", "valid")}
    else:
        manifests = prepare_accent_corpus(args.data_folder, Path(args.data_folder) / "manifests")
    model = args.model or resolve_source("bundled:tiny.en", args.model_folder)
    for split, count in (("train", args.train_utterances), ("valid", args.valid_utterances)):
        with open(manifests[split], newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)[:count]
            fields = reader.fieldnames
        with open(work / f"{split}.csv", "w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    return model


def read_rows(path, data_folder):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["wav"] = row["wav"].replace("$data_root", str(data_folder))
    return rows


def run_recipe(args, work, model, run_name="recipe"):
    """This recipe's own Brain, data pipeline and cache; greedy = beam search of width 1.

    The cache lives in ``work/encoder_cache``: the first run builds it (charged to its training
    time), a second run with another output folder finds it, as a user's next experiment on
    the same data and model would.
    """
    sys.argv = ["train.py"]  # SpeechBrain reads nothing from the benchmark's arguments
    import train
    from whisper_finetuning.data import checks, manifests
    from whisper_finetuning.evaluation import scoring
    from whisper_finetuning.training import runs
    from whisper_finetuning.training.config import load_hparams

    overrides = {
        "whisper_hub": model,
        "data_folder": args.data_folder,
        "output_folder": str(work / run_name),
        "encoder_cache_folder": str(work / "encoder_cache"),
        "skip_prep": True,
        "train_csv": str(work / "train.csv"),
        "valid_csv": str(work / "valid.csv"),
        # The valid set is decoded once, after training, as the baseline does; the recipe
        # requires a test manifest, so the valid set stands in under another name (never
        # decoded; the encoder cache serves it from the valid set's entries).
        "test_csv": [str(shutil.copyfile(work / "valid.csv", work / "heldout.csv"))],
        "number_of_epochs": args.epochs,
        "batch_size": args.batch_size,
        "test_batch_size": args.batch_size,
        "lr": args.lr,
        "warmup_steps": args.warmup_steps,
        "grad_accumulation_factor": 1,
        "num_workers": 0,
        "data_checks": "off",
        "test_beam_size": 1,
        "encoder_window_seconds": args.encoder_window_seconds,
        # plain greedy, as both baselines decode: openai's transcribe rules off
        "logprob_threshold": None,
        "no_speech_threshold": None,
        "compression_ratio_threshold": None,
    }
    hparams, _ = load_hparams(ROOT / "hparams/whisper_small.yaml", overrides)
    Path(hparams["output_folder"]).mkdir(parents=True, exist_ok=True)
    whisper = hparams["whisper"]
    valid_encode_seconds = encode_valid_set(hparams, whisper)
    start = time.perf_counter()
    named = manifests.named_manifests(
        hparams["train_csv"], hparams["valid_csv"], hparams["test_csv"]
    )
    normalize = scoring.Normalizers.of(hparams["normalizer"], whisper)
    datasets = checks.before_training(hparams, whisper, named, normalize, "skip")
    datasets, loader_kwargs, _ = train.dataio_prepare(hparams, datasets, whisper)
    brain = train.WhisperFineTuning(
        modules=hparams["modules"],
        opt_class=hparams["optimizer"],
        hparams=hparams,
        checkpointer=None,
        normalize=normalize,
    )
    brain.fit(hparams["epoch_counter"], datasets["train"], train_loader_kwargs=loader_kwargs)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    valid = {"valid": datasets["valid"]}
    test_kwargs = hparams["test_loader_kwargs"]
    runs.decode_test_sets(brain, valid, hparams, str(work / run_name), test_kwargs)
    valid_seconds = time.perf_counter() - start + valid_encode_seconds
    summary = json.loads((work / run_name / "summary_valid.json").read_text())
    return train_seconds, valid_seconds, summary


def encode_valid_set(hparams, whisper):
    """Cache the valid set's frozen encoder outputs; the seconds it took.

    The recipe caches every manifest while preparing its data, which would charge the valid
    set's encoder pass to training and leave its decoding only the decoder's work. The
    baselines run the encoder while decoding, so the valid set's pass is timed here and
    charged to decoding (where the cache already holds it, only the files' hashing).
    """
    from whisper_finetuning.data import encoder_cache, manifests

    valid = manifests.load_manifest(hparams["valid_csv"], hparams["data_folder"])
    start = time.perf_counter()
    encoder_cache.EncoderCache(hparams["encoder_cache_folder"], whisper).prepare(valid)
    return time.perf_counter() - start


def run_baseline(args, work, model):
    """transformers' Seq2SeqTrainer in its standard Whisper fine-tuning setup."""
    import torch
    from transformers import (
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    from whisper_finetuning.data.audio import SAMPLE_RATE, read_audio
    from whisper_finetuning.evaluation.scoring import Scorer, text_normalizer

    processor = WhisperProcessor.from_pretrained(model)
    whisper = WhisperForConditionalGeneration.from_pretrained(model)
    whisper.model.encoder.requires_grad_(False)
    start = time.perf_counter()

    def featurize(rows):
        return [
            {
                "input_features": processor.feature_extractor(
                    read_audio(row["wav"]).numpy(), sampling_rate=SAMPLE_RATE
                ).input_features[0],
                "labels": processor.tokenizer(row["wrd"]).input_ids,
            }
            for row in rows
        ]

    def collate(features):
        batch = processor.feature_extractor.pad(
            [{"input_features": f["input_features"]} for f in features], return_tensors="pt"
        )
        labels = processor.tokenizer.pad(
            [{"input_ids": f["labels"]} for f in features], return_tensors="pt"
        )
        ids = labels["input_ids"].masked_fill(labels.attention_mask.ne(1), -100)
        if (ids[:, 0] == whisper.config.decoder_start_token_id).all():
            ids = ids[:, 1:]
        batch["labels"] = ids
        return batch

    train_rows = read_rows(work / "train.csv", args.data_folder)
    valid_rows = read_rows(work / "valid.csv", args.data_folder)
    trainer = Seq2SeqTrainer(
        model=whisper,
        args=Seq2SeqTrainingArguments(
            output_dir=str(work / "baseline"),
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=args.batch_size,
            learning_rate=args.lr,
            warmup_steps=args.warmup_steps,
            num_train_epochs=args.epochs,
            weight_decay=0.01,
            max_grad_norm=2.0,
            predict_with_generate=True,
            generation_max_length=224,
            generation_num_beams=1,
            save_strategy="no",
            eval_strategy="no",
            report_to=[],
            dataloader_num_workers=0,
            use_cpu=True,
            seed=1986,
        ),
        data_collator=collate,
        train_dataset=featurize(train_rows),
    )
    trainer.train()
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        predictions = trainer.predict(featurize(valid_rows)).predictions
    valid_seconds = time.perf_counter() - start
    predictions[predictions == -100] = processor.tokenizer.pad_token_id
    hyps = [h.strip() for h in processor.batch_decode(predictions, skip_special_tokens=True)]
    scorer = Scorer(text_normalizer("english", processor.tokenizer, True))
    scorer.append([r["ID"] for r in valid_rows], hyps, [r["wrd"] for r in valid_rows])
    return train_seconds, valid_seconds, scorer.summary()


def run_speechbrain(args, work, model):
    """SpeechBrain's own Whisper recipe (``profiling.speechbrain_baseline``), scored as the
    transformers baseline is (the same normalizer and scorer)."""
    from transformers import WhisperTokenizer

    from whisper_finetuning.evaluation.scoring import Scorer, text_normalizer
    from whisper_finetuning.profiling import speechbrain_baseline

    train_seconds, valid_seconds, hypotheses = speechbrain_baseline.run(
        model,
        work / "train.csv",
        work / "valid.csv",
        Path(args.data_folder).resolve(),
        args.epochs,
        args.batch_size,
        args.lr,
        args.warmup_steps,
        work,
    )
    valid_rows = read_rows(work / "valid.csv", args.data_folder)
    scorer = Scorer(text_normalizer("english", WhisperTokenizer.from_pretrained(model), True))
    scorer.append(
        [r["ID"] for r in valid_rows],
        [hypotheses[r["ID"]] for r in valid_rows],
        [r["wrd"] for r in valid_rows],
    )
    return train_seconds, valid_seconds, scorer.summary()


def training_flops(args, work, model, system):
    """FLOPs a system's training phase computes (``flops.py``: real token lengths, no padding).

    The baseline runs the 30 s encoder on every utterance in every epoch and projects every
    decoder position; the recipe's first run encodes the train utterances once, at their
    windows, for its cache, and projects only target positions (``loss_chunk_size``).
    """
    from transformers import WhisperConfig, WhisperTokenizer

    from whisper_finetuning.data.audio import CHUNK_SECONDS
    from whisper_finetuning.model.absorbed_attention import width_budget
    from whisper_finetuning.profiling import flops

    config = WhisperConfig.from_pretrained(model)
    tokenizer = WhisperTokenizer.from_pretrained(model)
    train_rows = read_rows(work / "train.csv", "")
    full_frames = CHUNK_SECONDS * 50
    if system in BASELINES:  # both pad to 30 s and project every decoder position
        per_epoch = 0
        for row in train_rows:
            positions = len(tokenizer(row["wrd"]).input_ids) - 1  # labels without the start
            per_epoch += flops.encoder_forward(config, CHUNK_SECONDS)
            per_epoch += flops.decoder_training_step(config, positions, full_frames, positions)
        return per_epoch * args.epochs

    def window(row):
        step = args.encoder_window_seconds
        return min(math.ceil(float(row["duration"]) / step) * step, CHUNK_SECONDS)

    prompt = len(tokenizer("").input_ids) - 1  # the prompt before the text (no end of text)
    per_epoch = 0
    for row in train_rows:
        text = len(tokenizer.encode(" " + row["wrd"].strip(), add_special_tokens=False))
        frames = window(row) * 50
        positions = prompt + text
        # the absorbed cross-attention where the sequence is short enough (the recipe decides
        # per batch, by its longest); the key/value projections train here
        short = positions * config.decoder_attention_heads < width_budget(config.d_model, False)
        keys_values = "absorbed" if short else "train"
        per_epoch += flops.decoder_training_step(config, positions, frames, text + 1, keys_values)
    total = per_epoch * args.epochs
    if system == "recipe":  # it builds the encoder cache (the valid set's: ``encode_valid_set``)
        total += sum(flops.encoder_forward(config, window(row)) for row in train_rows)
    return total


def worker(args):
    """Run one system and print its figures as one JSON line."""
    work, model = Path(args.work_folder), str(Path(args.work_folder) / "model")
    if args.system == "baseline":
        train_seconds, valid_seconds, summary = run_baseline(args, work, model)
    elif args.system == "speechbrain":
        train_seconds, valid_seconds, summary = run_speechbrain(args, work, model)
    else:
        train_seconds, valid_seconds, summary = run_recipe(args, work, model, args.system)
    audio_seconds = (
        sum(float(r["duration"]) for r in read_rows(work / "train.csv", "")) * args.epochs
    )
    train_flops = training_flops(args, work, model, args.system)
    figures = {
        "train_audio_seconds_per_second": audio_seconds / train_seconds,
        "train_seconds": train_seconds,
        "train_flops": train_flops,
        "train_flops_per_second": train_flops / train_seconds,
        "valid_utterances_per_second": summary["n_utterances"] / valid_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "wer": summary["wer"],
        "wer_ci95": summary["wer_ci95"],
        "loop_stopped": summary["loop_stopped"],  # hypotheses the recipe's loop stop ended
    }
    print(RESULT_PREFIX + json.dumps(figures), flush=True)


RATIOS = (  # (figure, the ratio's key against the Seq2SeqTrainer baseline)
    ("train_audio_seconds_per_second", "train_throughput_ratio"),
    ("valid_utterances_per_second", "valid_decode_ratio"),
    ("peak_rss_mb", "peak_rss_ratio"),
)
# what the warm-cache run is also set against the baselines for: training, decoding from the cache
WARM_RATIOS = RATIOS[:2]


def build_report(results, peak):
    """The JSON report: each system's figures, and the recipe's ratios against each baseline
    that ran (``..._ratio``: Seq2SeqTrainer; ``..._ratio_speechbrain``: SpeechBrain's recipe)."""
    from whisper_finetuning.profiling import speechbrain_baseline

    for figures in results.values():
        figures["flop_utilisation"] = figures["train_flops_per_second"] / peak
    recipe = results["recipe"]
    report = {**results, "matmul_peak_flops": peak, "wer_recipe": recipe["wer"]}
    if "recipe_warm_cache" in results:
        report["wer_recipe_warm_cache"] = results["recipe_warm_cache"]["wer"]
    for baseline in BASELINES:
        if baseline not in results:
            continue
        suffix = "" if baseline == "baseline" else "_" + baseline
        for figure, ratio in RATIOS:
            report[ratio + suffix] = recipe[figure] / results[baseline][figure]
        if "recipe_warm_cache" in results:  # training, and decoding the valid set once cached
            for figure, ratio in WARM_RATIOS:
                report[ratio + "_warm_cache" + suffix] = (
                    results["recipe_warm_cache"][figure] / results[baseline][figure]
                )
        report["wer_" + baseline] = results[baseline]["wer"]
    if "speechbrain" in results:
        report["speechbrain_fixes"] = speechbrain_baseline.FIXES
        report["speechbrain_kept"] = speechbrain_baseline.KEPT
    return report


def print_table(report, systems):
    """The side-by-side table: a column per system, the recipe's ratio against each baseline."""
    recipe = report["recipe"]
    baselines = [b for b in BASELINES if b in report]
    columns = ["recipe", *(s for s in ("recipe_warm_cache",) if s in report), *baselines]
    names = {"recipe": "recipe", "recipe_warm_cache": "warm cache", **BASELINES}
    header = f"{'':30}" + "".join(f"{names[c]:>15}" for c in columns)
    header += "".join(f"{'vs ' + BASELINES[b]:>20}" for b in baselines)
    print(header)

    def suffix(baseline):
        return "" if baseline == "baseline" else "_" + baseline

    for label, key, ratio in (
        ("train audio-s per wall-s", *RATIOS[0]),
        ("valid decode utterances/s", *RATIOS[1]),
        ("peak RSS (MB)", *RATIOS[2]),
        ("valid WER (%)", "wer", None),
    ):
        warm_figures = [figure for figure, _ in WARM_RATIOS]
        shown = [c != "recipe_warm_cache" or key in warm_figures for c in columns]
        cells = "".join(
            f"{report[c][key]:>15.2f}" if show else f"{'':>15}"
            for c, show in zip(columns, shown, strict=True)
        )
        for b in baselines:
            cells += f"{report[ratio + suffix(b)]:>19.2f}x" if ratio else ""
        print(f"{label:30}{cells}")
    if "recipe_warm_cache" in report:
        whats = (
            "training with the cache already built",
            "valid decoding from the cache (each epoch's validation in training)",
        )
        for what, (_, ratio) in zip(whats, WARM_RATIOS, strict=True):
            warm = (
                f"{BASELINES[b]} {report[ratio + '_warm_cache' + suffix(b)]:.2f}x"
                for b in baselines
            )
            print(f"  {what}, vs " + ", ".join(warm))
    for c in columns:
        lo, hi = report[c]["wer_ci95"]
        print(f"  {names[c]} WER 95% CI: [{lo:.2f}, {hi:.2f}]")
    peak = report["matmul_peak_flops"]
    print(f"training GFLOP/s (share of the {peak / 1e9:.1f} GFLOP/s fp32 matmul peak):")
    for system in systems:
        figures = report[system]
        print(
            f"{'  ' + system:32}{figures['train_flops_per_second'] / 1e9:>12.2f}"
            f"{figures['flop_utilisation']:>12.1%}"
            f"  ({figures['train_flops'] / 1e12:.2f} TFLOP in {figures['train_seconds']:.0f} s)"
        )
    print(f"repetition loops stopped in the recipe's valid decoding: {recipe['loop_stopped']}")
    if "speechbrain" in report:
        print("SpeechBrain's recipe, fixed to run: " + "; ".join(report["speechbrain_fixes"]))
        print("  kept as shipped: " + "; ".join(report["speechbrain_kept"]))


def run_systems(argv, args, systems, order):
    """One repeat: the probe, then each system in ``order`` in its own process, on a fresh work
    folder; its report."""
    from whisper_finetuning.profiling.flops import matmul_peak

    peak = matmul_peak()  # before the systems, on the same threads and machine
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = prepare_subsets(args, work)
        (work / "model").symlink_to(Path(model).resolve())
        results = {}
        for system in order:
            command = [sys.executable, "-m", "whisper_finetuning.benchmark", *argv]
            command += [f"--system={system}", f"--work_folder={work}"]
            done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
            if done.returncode or not lines:
                sys.exit(f"error: the {system} run failed:\n{done.stderr[-2000:]}")
            results[system] = json.loads(lines[-1][len(RESULT_PREFIX) :])
    return build_report({system: results[system] for system in systems}, peak)


def median_of(values):
    """The element-wise median of equally shaped reports (numbers; lists and dicts of them);
    anything else is taken from the first."""
    first = values[0]
    if isinstance(first, dict):
        return {key: median_of([v[key] for v in values]) for key in first}
    if isinstance(first, list):
        return [median_of(list(items)) for items in zip(*values, strict=True)]
    if isinstance(first, int | float) and not isinstance(first, bool):
        return statistics.median(values)
    return first


def print_spread(reports, systems):
    """Each ratio and share of the probe: its median and range over the repeats."""
    print(f"over {len(reports)} repeats, median (lowest-highest):")
    rows = [(key, [r[key] for r in reports]) for key in reports[0] if "_ratio" in key]
    rows += [
        (f"{system} share of the probe", [r[system]["flop_utilisation"] for r in reports])
        for system in systems
    ]
    for label, values in rows:
        middle, low, high = statistics.median(values), min(values), max(values)
        print(f"  {label:50}{middle:>7.3f}  ({low:.3f}-{high:.3f})")


def main(argv=None):
    argv = list(argv if argv is not None else sys.argv[1:])
    if any(arg == "--device" or arg.startswith("--device=") for arg in argv):
        from whisper_finetuning import synthetic_benchmark

        return synthetic_benchmark.main(argv)
    args = parse_args(argv)
    if args.system:
        return worker(args)
    if args.repeats < 1:
        sys.exit(f"error: --repeats must be at least 1, not {args.repeats}")
    systems = [s for s in SYSTEMS if s == "recipe" or s in args.systems]
    baselines_first = [s for s in systems if s in BASELINES] + [
        s for s in systems if s not in BASELINES
    ]
    reports = [
        run_systems(argv, args, systems, baselines_first if repeat % 2 else systems)
        for repeat in range(args.repeats)
    ]
    report = reports[0] if len(reports) == 1 else {**median_of(reports), "repeats": reports}
    print_table(report, systems)
    if len(reports) > 1:
        print_spread(reports, systems)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
