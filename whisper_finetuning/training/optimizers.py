"""Optimizers the yaml cannot build alone."""

import functools
import sys

import torch


def adamw_8bit(hparams):
    """bitsandbytes' AdamW with 8-bit states, the recipe's rate and weight decay (CUDA only)."""
    if not torch.cuda.is_available():
        sys.exit("error: adamw_8bit needs a CUDA GPU (bitsandbytes); set adamw_8bit: False on CPU")
    try:
        import bitsandbytes
    except ImportError:
        sys.exit("error: adamw_8bit needs bitsandbytes: pip install bitsandbytes")
    return functools.partial(
        bitsandbytes.optim.AdamW8bit, lr=hparams["lr"], weight_decay=hparams["weight_decay"]
    )
