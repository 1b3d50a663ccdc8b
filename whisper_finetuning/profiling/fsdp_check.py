"""FSDP2 (``sharding: fsdp``) checked where it runs: 2 gloo processes on CPU (the tests), one
process per GPU with NCCL and bf16 mixed precision (``profiling/gpu_benchmark.sh``).

N processes (one per GPU, at most 4; 2 gloo processes on CPU) train a 2-layer random Whisper
with every parameter trainable under ``sharding.shard``, each on its rows of one global batch,
save the consolidated checkpoint, and load it into a fresh sharded model. Then this process
checks, per precision:

* ``max_difference_vs_one_process``: one process training the whole batch reaches the same
  weights (fp32: under ``TOLERANCE``); under bf16 the one process trains in fp32, so the figure
  is bf16's effect (not checked); ``min_moved``: the sharded training moved every parameter by
  at least this (more than 100 x ``TOLERANCE``);
* ``checkpoint_is_the_gathered_model``: ``whisper.ckpt`` holds the gathered parameters exactly,
  and ``loaded_is_the_checkpoint``: a fresh sharded model loads them exactly;
* ``resumed_step_max_difference``: the fresh model's next step against the next step of the
  model that went on (0: exact resume).

Usage: python -m whisper_finetuning.profiling.fsdp_check OUT_DIR --tokenizer_source WHISPER_DIR
           [--precisions fp32,bf16] [--processes N]
WHISPER_DIR is any English-only Whisper folder (only its tokenizer files are read). Writes
``OUT_DIR/fsdp_check.json``; exits 1 when a check fails.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from whisper_finetuning.model.asr import WhisperASR
from whisper_finetuning.profiling import shapes
from whisper_finetuning.training import sharding

STEPS = 2
ROWS, SAMPLES, TOKENS = 4, 16000, 6
LR = 1e-2
# FSDP's reduce-scatter sums the processes' gradients in another order than one process's
# backward over the whole batch: float32 rounding, amplified by AdamW's normalisation over
# 2 steps of lr 1e-2 (measured on CPU: 1.1e-5). Training moves every parameter by more than
# 100x this.
TOLERANCE = 1e-4


def global_batch(step):
    """The step's waveforms and tokens (the same on every process)."""
    generator = torch.Generator().manual_seed(100 + step)
    wavs = torch.randn(ROWS, SAMPLES, generator=generator) * 0.1
    tokens = torch.randint(0, 50000, (ROWS, TOKENS), generator=generator)
    return wavs, tokens


def model(model_dir, device="cpu"):
    """The random Whisper, everything trainable (full fine-tuning), on ``device``."""
    return WhisperASR(str(model_dir), freeze_encoder=False).to(device)


def optimizer(whisper):
    return torch.optim.AdamW([p for p in whisper.parameters() if p.requires_grad], lr=LR)


def train_step(whisper, opt, step, rows, bf16=False):
    """One AdamW step on ``rows`` of the step's global batch (mean token NLL), under bf16
    autocast with ``bf16`` (as the recipe's ``precision: bf16``)."""
    device = next(whisper.parameters()).device
    wavs, tokens = (t[rows].to(device) for t in global_batch(step))
    ones = torch.ones(len(wavs), device=device)
    with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
        log_probs, _ = whisper(wavs, ones, tokens[:, :-1], ones)
    loss = torch.nn.functional.nll_loss(log_probs.flatten(0, 1).float(), tokens[:, 1:].flatten())
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in whisper.parameters() if p.requires_grad], 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def full_parameters(whisper):
    """Every trainable parameter as a full tensor on the CPU (a collective under FSDP)."""
    return {
        name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu().clone()
        for name, p in whisper.model.named_parameters()
        if p.requires_grad
    }


def deterministic_cuda():
    """Kernels that give the same result for the same inputs, so that the resumed step can be
    compared bit for bit: deterministic cuBLAS workspaces and algorithms, and attention by the
    math backend (the fused ones accumulate their backward in no fixed order)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cuda.enable_flash_sdp(False)
    torch.backends.cuda.enable_mem_efficient_sdp(False)
    torch.backends.cuda.enable_cudnn_sdp(False)


def worker(model_dir, out_dir, bf16):
    """One torchrun process: train, save the consolidated checkpoint and what the checks read
    (``reference.pt``: the gathered parameters and AdamW moments; ``resumed.pt``: a fresh
    sharded model's loaded parameters and optimizer settings, and both models' next step)."""
    cuda = torch.cuda.is_available()
    device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(device)
        deterministic_cuda()
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    rows = list(range(rank, ROWS, world))
    out = Path(out_dir)
    whisper = sharding.shard(model(model_dir, device), device, bf16=bf16)
    opt = optimizer(whisper)
    for step in range(STEPS):
        train_step(whisper, opt, step, rows, bf16)
    model_state = sharding.ShardedModelState(whisper)
    optimizer_state = sharding.ShardedOptimizerState(whisper, opt)
    model_state.gather_before_save()
    optimizer_state.gather_before_save()
    params = full_parameters(whisper)
    names = {id(p): n for n, p in whisper.model.named_parameters()}
    moments = {
        names[id(p)]: {
            k: (v.full_tensor() if hasattr(v, "full_tensor") else v).cpu() for k, v in s.items()
        }
        for p, s in opt.state.items()
    }
    if rank == 0:
        model_state.save(out / "whisper.ckpt")
        optimizer_state.save(out / "optimizer.ckpt")
        torch.save({"params": params, "moments": moments}, out / "reference.pt")
    torch.distributed.barrier()

    resumed = sharding.shard(model(model_dir, device), device, bf16=bf16)
    resumed_opt = optimizer(resumed)
    sharding.ShardedModelState(resumed).load(out / "whisper.ckpt", True)
    sharding.ShardedOptimizerState(resumed, resumed_opt).load(out / "optimizer.ckpt", True)
    loaded = full_parameters(resumed)
    groups = [{k: v for k, v in g.items() if k != "params"} for g in resumed_opt.param_groups]
    train_step(whisper, opt, STEPS, rows, bf16)
    train_step(resumed, resumed_opt, STEPS, rows, bf16)
    went_on, after = full_parameters(whisper), full_parameters(resumed)
    if rank == 0:
        torch.save(
            {"loaded": loaded, "groups": groups, "went_on": went_on, "resumed": after},
            out / "resumed.pt",
        )
    torch.distributed.destroy_process_group()


def run_processes(model_dir, out_dir, processes, bf16):
    """``worker`` in ``processes`` torchrun processes; their stderr's end on failure."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={processes}", "-m", "whisper_finetuning.profiling.fsdp_check"]
    command += [str(out_dir), "--worker", str(model_dir)] + (["--bf16"] if bf16 else [])
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode:
        sys.exit(f"error: the FSDP processes failed:\n{done.stderr[-3000:]}")


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _largest_difference(these, those):
    return max(float((these[name] - those[name]).abs().max()) for name in these)


def check(model_dir, out_dir, device, bf16):
    """The checks of one precision from what the processes wrote in ``out_dir``."""
    out = Path(out_dir)
    saved, reference = _load(out / "whisper.ckpt"), _load(out / "reference.pt")
    resumed = _load(out / "resumed.pt")
    single = model(model_dir, device)
    initial = full_parameters(single)
    opt = optimizer(single)
    for step in range(STEPS):
        train_step(single, opt, step, list(range(ROWS)))
    trained = full_parameters(single)
    result = {
        "parameters": len(saved),
        "max_difference_vs_one_process": _largest_difference(saved, trained),
        "min_moved": min(float((saved[n] - initial[n]).abs().max()) for n in saved),
        "checkpoint_is_the_gathered_model": saved.keys() == reference["params"].keys()
        and all(torch.equal(saved[n], reference["params"][n]) for n in saved),
        "loaded_is_the_checkpoint": all(torch.equal(resumed["loaded"][n], saved[n]) for n in saved),
        "resumed_step_max_difference": _largest_difference(resumed["resumed"], resumed["went_on"]),
    }
    result["passed"] = (
        result["checkpoint_is_the_gathered_model"]
        and result["loaded_is_the_checkpoint"]
        and result["resumed_step_max_difference"] == 0
        and result["min_moved"] > 100 * TOLERANCE
        and (bf16 or result["max_difference_vs_one_process"] < TOLERANCE)
    )
    return result


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--tokenizer_source", help="an English-only Whisper folder")
    parser.add_argument("--precisions", default=None, help="default: fp32,bf16 on GPUs, fp32")
    parser.add_argument("--processes", type=int, help="default: one per GPU (at most 4); 2 on CPU")
    # one torchrun process, training the model of this folder
    parser.add_argument("--worker", metavar="MODEL_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.out_dir, args.bf16)
    if args.tokenizer_source is None:
        parser.error("--tokenizer_source is required")
    cuda = torch.cuda.is_available()
    if cuda:  # the one-process reference too; the processes inherit the cuBLAS setting
        deterministic_cuda()
    processes = args.processes or (min(torch.cuda.device_count(), ROWS) if cuda else 2)
    if not 1 <= processes <= ROWS:
        sys.exit(f"error: --processes must be 1 to {ROWS} (the global batch's rows)")
    precisions = (args.precisions or ("fp32,bf16" if cuda else "fp32")).split(",")
    out = Path(args.out_dir)
    model_dir = shapes.save_random_whisper(out / "model", args.tokenizer_source)
    report = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "backend": "nccl" if cuda else "gloo",
        "processes": processes,
        "tolerance": TOLERANCE,
    }
    for precision in precisions:
        folder = out / precision
        folder.mkdir(parents=True, exist_ok=True)
        run_processes(model_dir, folder, processes, precision == "bf16")
        report[precision] = check(model_dir, folder, "cuda" if cuda else "cpu", precision == "bf16")
        print(f"fsdp {processes} x {report['backend']}, {precision}: {report[precision]}")
    report["passed"] = all(report[p]["passed"] for p in precisions)
    (out / "fsdp_check.json").write_text(json.dumps(report, indent=2))
    print("wrote", out / "fsdp_check.json", "; passed" if report["passed"] else "; FAILED")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
