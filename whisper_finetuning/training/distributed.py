"""Several processes (torchrun): launch flags, sharded evaluation, agreement and sums.

SpeechBrain 1.1.2 infers DDP from torchrun's ``RANK``/``LOCAL_RANK`` variables and no longer
knows ``--distributed_launch``; it is accepted here so the documented command works:

    torchrun --nproc_per_node=2 train.py hparams/whisper_small.yaml --distributed_launch \
        --distributed_backend=gloo

SpeechBrain wraps the Whisper module in ``DistributedDataParallel``: gradients are averaged
during backward. Evaluation is sharded here without padding (``ShardSampler``).
"""

import os

import speechbrain as sb
import torch

from whisper_finetuning.common.errors import RecipeError

LAUNCH_FLAG = "--distributed_launch"


def accept_launch_flag(argv):
    """``argv`` minus ``--distributed_launch`` (torchrun implies it); an error outside torchrun."""
    kept = [a for a in argv if a.split("=", 1)[0] != LAUNCH_FLAG]
    if len(kept) < len(argv) and os.environ.get("RANK") is None:
        raise RecipeError(
            f"{LAUNCH_FLAG} needs torchrun: "
            "torchrun --nproc_per_node=N train.py HPARAMS --distributed_backend=gloo|nccl"
        )
    return kept


def init_group(run_opts):
    """Join the process group when started by torchrun; one-line errors for a wrong backend."""
    if os.environ.get("RANK") is None:
        return
    if run_opts["distributed_backend"] == "nccl" and not torch.cuda.is_available():
        raise RecipeError("the nccl backend needs CUDA GPUs; use --distributed_backend=gloo on CPU")
    try:
        sb.utils.distributed.ddp_init_group(run_opts)
    except ValueError as error:
        raise RecipeError(str(error).strip().splitlines()[-1]) from None


def leave_group():
    """Destroy the process group, if any: gloo's worker threads left to the interpreter's exit
    can abort the process (SIGABRT) while it finalizes (pytorch/pytorch#179291)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def is_distributed():
    """True when several processes share the work."""
    return sb.utils.distributed.is_distributed_initialized()


class ShardSampler(torch.utils.data.Sampler):
    """This process's share of an evaluation set: items r, r+N, r+2N, ... (none repeated).

    Unlike ``DistributedSampler``, shares are not padded to equal sizes with repeats, so
    every utterance is scored once; evaluation needs no per-batch communication.
    """

    def __init__(self, dataset):
        super().__init__()
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        self.indices = range(rank, len(dataset), world)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def eval_sampler(dataset):
    """A ``ShardSampler`` under DDP, None alone."""
    return ShardSampler(dataset) if is_distributed() else None


def any_true(*flags):
    """For each flag, whether it holds on any process (one collective for all of them)."""
    if not is_distributed():
        return tuple(bool(flag) for flag in flags)
    values = torch.tensor([int(flag) for flag in flags])
    torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.MAX)
    return tuple(bool(value) for value in values)


def all_true(flag):
    """Whether ``flag`` holds on every process."""
    if not is_distributed():
        return flag
    value = torch.tensor(int(flag))
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
    return bool(value)


def rank():
    """This process's rank in the process group (0 alone; unlike SpeechBrain's ``get_rank``,
    not guessed from environment variables such as SLURM's)."""
    return torch.distributed.get_rank() if is_distributed() else 0


def gather_objects(obj):
    """``obj`` from every process, in rank order (``[obj]`` alone); call on every process."""
    if not is_distributed():
        return [obj]
    everyone = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(everyone, obj)
    return everyone


def sum_over_processes(accumulator):
    """``accumulator`` with its numbers and tensors (nested ones too) summed over processes."""
    if not is_distributed():
        return accumulator
    return _sum(gather_objects(accumulator))


def _sum(values):
    """Sum numbers or tensors; for objects, sum each attribute (into the first object)."""
    first = values[0]
    if isinstance(first, int | float | torch.Tensor):
        return sum(values[1:], start=first)
    for name in vars(first):
        setattr(first, name, _sum([vars(value)[name] for value in values]))
    return first


def global_ratio(total, count):
    """``sum(total) / sum(count)`` over the processes (``total / count`` alone); 0 if no count."""
    if is_distributed():
        sums = torch.tensor([float(total), float(count)], dtype=torch.float64)
        torch.distributed.all_reduce(sums)
        total, count = float(sums[0]), float(sums[1])
    return total / count if count else 0.0


def interleave_unique(per_process, key):
    """Merge per-process lists of ``ShardSampler`` shares back into set order.

    Process r holds items r, r+N, r+2N, ...; taking one item from each process in turn restores
    the order. Items whose ``key`` was seen already are dropped, should a sampler repeat some.
    """
    merged, seen = [], set()
    for position in range(max(len(items) for items in per_process)):
        for items in per_process:
            if position < len(items) and key(items[position]) not in seen:
                seen.add(key(items[position]))
                merged.append(items[position])
    return merged
