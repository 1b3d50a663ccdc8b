"""Checkpoint averaging: the mean of the trainable weights of a run's best epochs."""

import torch


def average_parameters(saved):
    """Element-wise mean of parameter dicts (``{name: tensor}``) of one model, in float64.

    Dicts whose parameter names or shapes differ come from different models (or different
    trainable sets) and are refused.
    """
    first = saved[0]
    for other in saved[1:]:
        if other.keys() != first.keys():
            missing = sorted(first.keys() ^ other.keys())[0]
            raise ValueError(
                f"cannot average checkpoints of different models: only some hold {missing}"
            )
        for name, value in first.items():
            if other[name].shape != value.shape:
                raise ValueError(
                    f"cannot average checkpoints of different models: {name} has shapes "
                    f"{tuple(value.shape)} and {tuple(other[name].shape)}"
                )
    return {
        name: torch.stack([s[name].double() for s in saved]).mean(dim=0).to(value.dtype)
        for name, value in first.items()
    }
