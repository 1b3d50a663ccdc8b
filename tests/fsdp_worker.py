"""One process of a torchrun that trains a tiny random Whisper under FSDP2 (gloo, CPU) and
writes what ``tests/unit/test_sharding.py`` compares (``python -m torch.distributed.run
--nproc_per_node=2 tests/fsdp_worker.py MODEL_DIR OUT_DIR``):

* ``whisper.ckpt``, ``optimizer.ckpt``: the consolidated checkpoint after ``STEPS`` steps;
* ``reference.pt``: every parameter and AdamW moment then, gathered with ``full_tensor``;
* ``resumed.pt``: the parameters a fresh sharded model loaded (``loaded``), its optimizer's
  param_groups without their parameters (``groups``), and the parameters one step later, trained
  on by the model that went on (``went_on``) and by the fresh one (``resumed``).

Each process trains on its rows of one global batch (``global_batch``), so one process on the
whole batch takes the same steps.
"""

import sys
from pathlib import Path

import torch

from whisper_finetuning.model.asr import WhisperASR
from whisper_finetuning.training import sharding

STEPS = 2
ROWS, SAMPLES, TOKENS = 4, 16000, 6
LR = 1e-2


def global_batch(step):
    """The step's waveforms and tokens (the same on every process)."""
    generator = torch.Generator().manual_seed(100 + step)
    wavs = torch.randn(ROWS, SAMPLES, generator=generator) * 0.1
    tokens = torch.randint(0, 50000, (ROWS, TOKENS), generator=generator)
    return wavs, tokens


def model(model_dir):
    """The tiny Whisper, everything trainable (full fine-tuning)."""
    return WhisperASR(str(model_dir), freeze_encoder=False)


def optimizer(whisper):
    return torch.optim.AdamW([p for p in whisper.parameters() if p.requires_grad], lr=LR)


def train_step(whisper, opt, step, rows):
    """One AdamW step on ``rows`` of the step's global batch (mean token NLL)."""
    wavs, tokens = global_batch(step)
    wavs, tokens = wavs[rows], tokens[rows]
    ones = torch.ones(len(wavs))
    log_probs, _ = whisper(wavs, ones, tokens[:, :-1], ones)
    loss = torch.nn.functional.nll_loss(log_probs.flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in whisper.parameters() if p.requires_grad], 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def full_parameters(whisper):
    """Every trainable parameter as a full tensor (a collective under FSDP)."""
    return {
        name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
        for name, p in whisper.model.named_parameters()
        if p.requires_grad
    }


def main(model_dir, out_dir):
    torch.distributed.init_process_group("gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    rows = list(range(rank, ROWS, world))
    out = Path(out_dir)
    whisper = sharding.shard(model(model_dir), "cpu", bf16=False)
    opt = optimizer(whisper)
    for step in range(STEPS):
        train_step(whisper, opt, step, rows)
    model_state = sharding.ShardedModelState(whisper)
    optimizer_state = sharding.ShardedOptimizerState(whisper, opt)
    model_state.gather_before_save()
    optimizer_state.gather_before_save()
    params = full_parameters(whisper)
    names = {id(p): n for n, p in whisper.model.named_parameters()}
    moments = {
        names[id(p)]: {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in s.items()}
        for p, s in opt.state.items()
    }
    if rank == 0:
        model_state.save(out / "whisper.ckpt")
        optimizer_state.save(out / "optimizer.ckpt")
        torch.save({"params": params, "moments": moments}, out / "reference.pt")
    torch.distributed.barrier()

    resumed = sharding.shard(model(model_dir), "cpu", bf16=False)
    resumed_opt = optimizer(resumed)
    sharding.ShardedModelState(resumed).load(out / "whisper.ckpt", True)
    sharding.ShardedOptimizerState(resumed, resumed_opt).load(out / "optimizer.ckpt", True)
    loaded = full_parameters(resumed)
    groups = [{k: v for k, v in g.items() if k != "params"} for g in resumed_opt.param_groups]
    train_step(whisper, opt, STEPS, rows)
    train_step(resumed, resumed_opt, STEPS, rows)
    went_on, after = full_parameters(whisper), full_parameters(resumed)
    if rank == 0:
        torch.save(
            {"loaded": loaded, "groups": groups, "went_on": went_on, "resumed": after},
            out / "resumed.pt",
        )
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
