"""Optimizers the yaml cannot build alone."""

import functools

from whisper_finetuning.common.errors import RecipeError


def adamw_8bit(hparams):
    """bitsandbytes' AdamW with 8-bit states, the recipe's rate and weight decay (CUDA only:
    ``load_hparams`` refuses it on CPU)."""
    try:
        import bitsandbytes
    except ImportError:
        raise RecipeError("adamw_8bit needs bitsandbytes: pip install bitsandbytes") from None
    return functools.partial(
        bitsandbytes.optim.AdamW8bit, lr=hparams["lr"], weight_decay=hparams["weight_decay"]
    )
