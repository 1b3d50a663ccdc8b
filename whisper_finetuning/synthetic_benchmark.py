"""The benchmark's device section: training steps of randomly initialised Whisper models of the
real shapes on synthetic data, this recipe's step against transformers' Seq2SeqTrainer's.

Speed and memory do not depend on the weights or on what the audio says, so no checkpoint,
tokenizer or corpus is needed and it runs offline. Both systems train the whole decoder with
the encoder frozen, AdamW, gradient clipping, bf16 autocast (fp32 on CPU unless asked) and
transformers' SDPA attention, on the same batches: ``--batch_size`` utterances with decoder
inputs of 20-40 tokens (a short sentence each), 30 s of audio.

* recipe: the step of ``train.py`` with the encoder cache built: the frozen encoder's output
  read as float16 (as the cache stores it), moved to the device, the decoder, and the chunked
  projection + label-smoothed NLL (``fast_loss``). Building the cache costs one encoder pass
  per utterance, reported apart (``cache_utterances_per_second``);
* baseline: ``Seq2SeqTrainer.train`` on 30 s log-mel features, the encoder run in every step,
  transformers' own loss over every decoder position;
* speechbrain: SpeechBrain's own recipe's step (``profiling/speechbrain_baseline.py``): its
  Brain's ``fit_batch`` on waveforms, SpeechBrain's Whisper lobe padding each to 30 s and
  computing the log-mel on the device, the frozen encoder in every step, the logits of every
  position, ``nll_loss``, AdamW and the Noam step (in the same precision as the others).

Each (shape, system) runs in its own process: its peak memory (CUDA: max allocated; CPU: peak
RSS) is its own. FLOPs are counted from the shapes (``profiling.flops``) and set
against a matrix-product probe in the same dtype on the same device.

``--ddp N`` (CPU) also runs the recipe's step in N gloo DDP processes under torchrun.

Usage: python -m whisper_finetuning.benchmark --device cuda [--shapes small,medium,large-v3]
           [--batch_size 16] [--steps 20] [--precision bf16] [--json FILE]
       python -m whisper_finetuning.benchmark --device cpu --shapes tiny --ddp 2
       python -m whisper_finetuning.benchmark --device cpu --shapes test   (tiny shape, for tests)
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from whisper_finetuning.profiling import shapes

RESULT_PREFIX = "SYNTHETIC "
SYSTEMS = ("recipe", "baseline", "speechbrain")
WINDOW_SECONDS = 30
FRAMES = WINDOW_SECONDS * 50
PROMPT = 2  # <|startoftranscript|><|notimestamps|>: decoder positions that predict no target
MIN_POSITIONS, MAX_POSITIONS = 20, 40
LABEL_SMOOTHING = 0.1
# The real shapes, and the 64-wide 2-layer one for tests.
SHAPES = {"test": shapes.TEST_SHAPE, **shapes.SHAPES}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", required=True, help="cuda, cuda:N or cpu")
    parser.add_argument("--shapes", default="small,medium,large-v3", help=",".join(SHAPES))
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20, help="timed steps, after 3 warm-ups")
    parser.add_argument("--precision", choices=("bf16", "fp32"), help="default: bf16 on cuda")
    parser.add_argument(
        "--ddp",
        type=int,
        default=0,
        help="also run the recipe's step in this many gloo DDP processes on CPU (each with "
        "cores/N threads, as the single process it is compared with): scaling efficiency",
    )
    parser.add_argument("--json", help="also write the figures and ratios to this file")
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--system", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--shape", choices=tuple(SHAPES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = [s for s in args.shapes.split(",") if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shape {unknown[0]}: choose from {', '.join(SHAPES)}")
    if args.ddp and args.device != "cpu":
        parser.error("--ddp measures gloo processes on CPU: use it with --device cpu")
    if args.precision is None:
        args.precision = "fp32" if args.device == "cpu" else "bf16"
    return args


def whisper_config(shape):
    """A transformers WhisperConfig of ``shape``'s dimensions, SDPA attention."""
    return shapes.config_of(SHAPES[shape], attn_implementation="sdpa")


def synthetic_batches(config, batch_size, count, seed=0):
    """``count`` batches: decoder inputs (positions in [20, 40] per row) and their targets
    (the inputs shifted by one, the prompt dropped, end of text appended)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        lengths = torch.randint(
            MIN_POSITIONS, MAX_POSITIONS + 1, (batch_size,), generator=generator
        )
        tokens = torch.randint(1000, 50000, (batch_size, int(lengths.max())), generator=generator)
        batches.append((tokens, lengths))
    return batches


def _autocast(args):
    import torch

    device_type = "cuda" if args.device.startswith("cuda") else "cpu"
    return torch.autocast(device_type, torch.bfloat16, enabled=args.precision == "bf16")


def _synchronize(args):
    import torch

    if args.device.startswith("cuda"):
        torch.cuda.synchronize()


def _decoder_hidden_module(model):
    """The recipe's forward with the encoder cache as a module (what DDP wraps): the decoder's
    final hidden states for tokens and cached encoder output."""
    import torch

    class DecoderHidden(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, tokens, encoder_out):
            decoder = self.model.model.decoder
            return decoder(input_ids=tokens, encoder_hidden_states=encoder_out).last_hidden_state

    return DecoderHidden()


def _new_model(args):
    """A random Whisper of the shape, on the device, encoder frozen."""
    import torch
    from transformers import WhisperForConditionalGeneration

    torch.manual_seed(0)
    with torch.device(args.device):
        model = WhisperForConditionalGeneration(whisper_config(args.shape))
    model.model.encoder.requires_grad_(False)
    return model


def run_recipe(args, batches):
    """Seconds per step of the recipe's cached step, and per batch of the cache's encoder pass.
    Under torchrun (``--ddp``) the decoder is wrapped in DistributedDataParallel, as the
    recipe's model is by SpeechBrain."""
    import torch

    from whisper_finetuning.model import fast_loss

    model = _new_model(args)
    config = model.config
    decoder = _decoder_hidden_module(model)
    if torch.distributed.is_initialized():
        decoder = torch.nn.parallel.DistributedDataParallel(decoder)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    encoder_out = torch.randn(args.batch_size, FRAMES, config.d_model, dtype=torch.float16)
    encoder_out = encoder_out.pin_memory() if args.device.startswith("cuda") else encoder_out
    features = torch.randn(args.batch_size, config.num_mel_bins, 2 * FRAMES, device=args.device)

    def step(tokens, lengths):
        cached = encoder_out.to(args.device, non_blocking=True).float()  # as load_entry does
        tokens = tokens.to(args.device)
        lengths = lengths.to(args.device)
        targets = torch.cat([tokens[:, PROMPT:], tokens[:, :1]], dim=1)  # any ids do
        target_lens = (lengths - PROMPT + 1) / targets.shape[1]
        with _autocast(args):
            hidden = decoder(tokens, cached)
            # every row's prompt has the same length: the alignment is a slice
            hidden = hidden[:, PROMPT - 1 : PROMPT - 1 + targets.shape[1]]
            loss, _ = fast_loss.nll_loss(
                model.proj_out, hidden, targets, target_lens, LABEL_SMOOTHING, 256
            )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def encode():
        with torch.no_grad(), _autocast(args):
            model.model.encoder(features)

    return _time(args, step, batches), _time(args, lambda *_: encode(), batches[:5])


def run_baseline(args, batches):
    """Seconds per step of Seq2SeqTrainer.train on 30 s features, timed step by step."""
    import torch
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback

    model = _new_model(args)
    generator = torch.Generator().manual_seed(1)
    pool = torch.randn(args.batch_size, model.config.num_mel_bins, 2 * FRAMES, generator=generator)
    rows = []
    for tokens, lengths in batches:
        for row, (ids, n) in enumerate(zip(tokens, lengths, strict=True)):
            labels = torch.cat([ids[1:n], ids[:1]])  # without the start, with an end
            rows.append({"input_features": pool[row], "labels": labels})

    def collate(features):
        labels = torch.nn.utils.rnn.pad_sequence(
            [f["labels"] for f in features], batch_first=True, padding_value=-100
        )
        return {
            "input_features": torch.stack([f["input_features"] for f in features]),
            "labels": labels,
        }

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_begin(self, *unused, **kwargs):
            _synchronize(args)
            self.start = time.perf_counter()

        def on_step_end(self, *unused, **kwargs):
            _synchronize(args)
            self.times.append(time.perf_counter() - self.start)

    times = StepTimes()
    trainer = Seq2SeqTrainer(
        model=model,
        args=Seq2SeqTrainingArguments(
            output_dir="/tmp/synthetic_benchmark_baseline",
            per_device_train_batch_size=args.batch_size,
            learning_rate=1e-5,
            max_steps=len(batches),
            max_grad_norm=2.0,
            bf16=args.precision == "bf16",
            save_strategy="no",
            eval_strategy="no",
            report_to=[],
            dataloader_num_workers=0,
            use_cpu=args.device == "cpu",
            seed=1986,
            disable_tqdm=True,
        ),
        data_collator=collate,
        train_dataset=rows,
        callbacks=[times],
    )
    trainer.train()
    return sum(times.times[3:]) / len(times.times[3:])


def _speechbrain_lobe(args):
    """SpeechBrain's Whisper lobe around a random ``WhisperModel`` of the shape: its own
    forward, 30 s padding, log-mel and decoder logits, without a checkpoint or tokenizer."""
    import torch
    from speechbrain.integrations.huggingface.whisper import Whisper
    from transformers import WhisperFeatureExtractor, WhisperModel

    torch.manual_seed(0)
    config = whisper_config(args.shape)
    lobe = Whisper.__new__(Whisper)
    torch.nn.Module.__init__(lobe)
    with torch.device(args.device):
        lobe.model = WhisperModel(config)
    lobe.model.encoder.requires_grad_(False)  # freeze_encoder: True
    lobe.freeze, lobe.encoder_only, lobe.freeze_encoder = False, False, True
    lobe.output_attentions, lobe.output_all_hiddens = False, False
    extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    lobe._n_fft, lobe._hop_length = extractor.n_fft, extractor.hop_length
    filters = torch.as_tensor(extractor.mel_filters, dtype=torch.float32)
    filters = filters if filters.shape[0] == config.num_mel_bins else filters.T
    lobe.register_buffer("_mel_filters", filters.to(args.device))
    return lobe


def run_speechbrain(args, batches):
    """Seconds per step of SpeechBrain's recipe's ``fit_batch`` (``speechbrain_baseline``) on
    clips of 4-12 s (each padded to 30 s by the lobe, as the recipe does)."""
    from types import SimpleNamespace

    import torch
    from speechbrain.dataio.batch import PaddedBatch
    from speechbrain.nnet.activations import Softmax
    from speechbrain.nnet.losses import nll_loss
    from speechbrain.nnet.schedulers import NoamScheduler

    from whisper_finetuning.profiling import speechbrain_baseline

    lobe = _speechbrain_lobe(args)
    precision = {"bf16": "bf16", "fp32": "fp32"}[args.precision]
    brain = speechbrain_baseline._brain_class()(
        modules={"whisper": lobe},
        opt_class=lambda params: torch.optim.AdamW(
            params, lr=1e-5, weight_decay=speechbrain_baseline.WEIGHT_DECAY
        ),
        hparams={
            "log_softmax": Softmax(apply_log=True),
            "nll_loss": nll_loss,
            "lr_annealing_whisper": NoamScheduler(lr_initial=1e-5, n_warmup_steps=500),
            "max_grad_norm": speechbrain_baseline.MAX_GRAD_NORM,
        },
        run_opts={"device": args.device, "precision": precision},
    )
    brain.tokenizer = SimpleNamespace(pad_token_id=lobe.model.config.pad_token_id)
    brain.init_optimizers()
    brain.modules.train()
    generator = torch.Generator().manual_seed(2)
    padded = []
    for tokens, lengths in batches:
        rows = []
        for ids, n in zip(tokens, lengths.tolist(), strict=True):
            seconds = 4 + 8 * torch.rand(1, generator=generator).item()
            wav = torch.randn(int(seconds * 16000), generator=generator) * 0.1
            eos = ids[:1]  # any id does
            rows.append(
                {
                    "id": "x",
                    "sig": wav,
                    "tokens_bos": ids[:n],
                    "tokens_eos": torch.cat([ids[1:n], eos]),
                }
            )
        padded.append((PaddedBatch(rows),))
    return _time(args, brain.fit_batch, padded)


def _time(args, function, batches):
    """Mean seconds per call of ``function(*batch)`` after 3 warm-up calls."""
    for batch in batches[:3]:
        function(*batch)
    _synchronize(args)
    start = time.perf_counter()
    for batch in batches[3:]:
        function(*batch)
    _synchronize(args)
    return (time.perf_counter() - start) / max(len(batches) - 3, 1)


def step_flops(config, batches, system):
    """Mean FLOPs of one step (``flops.py``): real positions; the baseline also encodes 30 s
    and projects every decoder position, the recipe only the target positions."""
    from whisper_finetuning.profiling import flops

    total = 0
    for _, lengths in batches[3:]:
        for positions in lengths.tolist():
            if system in ("baseline", "speechbrain"):  # 30 s encoder, every position projected
                total += flops.encoder_forward(config, WINDOW_SECONDS)
                total += flops.decoder_training_step(config, positions, FRAMES, positions)
            else:
                projected = positions - PROMPT + 1
                total += flops.decoder_training_step(config, positions, FRAMES, projected)
    return total / max(len(batches) - 3, 1)


def worker(args):
    """One (shape, system): its figures as one JSON line (under torchrun: the first process's)."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rank = int(os.environ.get("RANK", 0))
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        torch.distributed.init_process_group("gloo")
    config = whisper_config(args.shape)
    batches = synthetic_batches(config, args.batch_size, args.steps + 3, seed=rank)
    figures = {}
    if args.system == "recipe":
        step_seconds, encode_seconds = run_recipe(args, batches)
        figures["cache_utterances_per_second"] = args.batch_size / encode_seconds
    elif args.system == "speechbrain":
        step_seconds = run_speechbrain(args, batches)
    else:
        step_seconds = run_baseline(args, batches)
    flops_per_step = step_flops(config, batches, args.system)
    figures.update(
        {
            "step_seconds": step_seconds,
            "train_utterances_per_second": args.batch_size / step_seconds,
            "train_flops_per_second": flops_per_step / step_seconds,
            "peak_memory_mb": (
                torch.cuda.max_memory_allocated() / 2**20
                if args.device.startswith("cuda")
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            ),
        }
    )
    if rank == 0:
        print(RESULT_PREFIX + json.dumps(figures), flush=True)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def run_worker(argv, system, shape, processes=0, threads=None):
    """One worker's figures; ``processes``: started by torchrun with that many processes."""
    command = [sys.executable, "-m", "whisper_finetuning.benchmark", *argv]
    if processes:
        command[1:1] = ["-m", "torch.distributed.run", "--standalone"]
        command[4:4] = [f"--nproc_per_node={processes}"]
    command += [f"--system={system}", f"--shape={shape}"]
    command += [f"--threads={threads}"] if threads else []
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if done.returncode or not lines:
        sys.exit(f"error: {shape} {system} failed:\n{done.stderr[-2000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def ddp_scaling(argv, args, shape):
    """The recipe's step in one process and in ``args.ddp`` gloo processes, each with
    cores/N threads: the N processes' utterances per second over N times the one's."""
    threads = max(1, (os.cpu_count() or 1) // args.ddp)
    single = run_worker(argv, "recipe", shape, 1, threads)
    several = run_worker(argv, "recipe", shape, args.ddp, threads)
    total = args.ddp * several["train_utterances_per_second"]
    return {
        "processes": args.ddp,
        "threads_per_process": threads,
        "one_process_utterances_per_second": single["train_utterances_per_second"],
        "utterances_per_second": total,
        "scaling_efficiency": total / (args.ddp * single["train_utterances_per_second"]),
    }


def main(argv):
    args = parse_args(argv)
    if args.system:
        return worker(args)
    import torch

    from whisper_finetuning.profiling.flops import matmul_peak

    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    peak = matmul_peak(args.device, dtype, size=8192 if args.device != "cpu" else 2048)
    device_name = torch.cuda.get_device_name(args.device) if args.device != "cpu" else "cpu"
    report = {"device": device_name, "precision": args.precision, "matmul_peak_flops": peak}
    print(f"{device_name}, {args.precision}: matmul peak {peak / 1e12:.2f} TFLOP/s")
    print(f"{'':26}{'recipe':>12}{'baseline':>12}{'speechbrain':>12}{'ratios':>14}")
    for shape in args.shapes.split(","):
        results = {}
        for system in SYSTEMS:
            results[system] = run_worker(argv, system, shape)
            results[system]["flop_utilisation"] = results[system]["train_flops_per_second"] / peak
        recipe = results["recipe"]
        report[shape] = dict(results)
        for baseline, suffix in (("baseline", ""), ("speechbrain", "_speechbrain")):
            report[shape]["train_throughput_ratio" + suffix] = (
                recipe["train_utterances_per_second"]
                / results[baseline]["train_utterances_per_second"]
            )
            report[shape]["peak_memory_ratio" + suffix] = (
                recipe["peak_memory_mb"] / results[baseline]["peak_memory_mb"]
            )
        print(f"{shape} (batch {args.batch_size}, 30 s)")
        for label, key, ratio in (
            ("  train utterances/s", "train_utterances_per_second", "train_throughput_ratio"),
            ("  peak memory (MB)", "peak_memory_mb", "peak_memory_ratio"),
        ):
            print(
                f"{label:26}"
                + "".join(f"{results[s][key]:>12.2f}" for s in SYSTEMS)
                + f"{report[shape][ratio]:>7.2f}/{report[shape][ratio + '_speechbrain']:.2f}"
            )
        print(
            f"{'  TFLOP/s (of the peak)':26}"
            + "".join(
                f"{results[s]['train_flops_per_second'] / 1e12:>7.2f} "
                f"{results[s]['flop_utilisation']:>4.0%}"
                for s in SYSTEMS
            )
        )
        print(f"{'  cache build utterances/s':26}{recipe['cache_utterances_per_second']:>12.2f}")
        if args.ddp:
            scaling = report[shape]["ddp"] = ddp_scaling(argv, args, shape)
            print(
                f"  DDP, {args.ddp} gloo processes x {scaling['threads_per_process']} threads: "
                f"{scaling['utterances_per_second']:.2f} utterances/s vs "
                f"{scaling['one_process_utterances_per_second']:.2f} in one process, "
                f"scaling efficiency {scaling['scaling_efficiency']:.0%}"
            )
    if args.json:
        from whisper_finetuning.common.files import write_json

        write_json(args.json, report)
    return 0
