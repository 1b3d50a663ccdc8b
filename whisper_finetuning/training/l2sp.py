"""L2-SP (Li et al., 2018): fine-tuning held near the pretrained weights.

``l2sp_weight`` w adds ``w * sum over trained parameters of ||theta - theta_pretrained||^2`` to
each training batch's loss: the sum is not halved, so its gradient is
``2 * w * (theta - theta_pretrained)``. The pretrained copies are those of the trained
parameters only (``requires_grad``), taken when the Brain is built: the weights as loaded from
``whisper_hub``, before a checkpoint is recovered, ``init_from`` or ``mwer_init`` is loaded, so
a resumed run is held to the same point. With adapters the trained parameters are the
adapters', held near their initial values. The penalty is part of the logged training loss.
"""

import torch


class L2SP:
    """The penalty toward the trained parameters' values when it was built."""

    def __init__(self, parameters, weight):
        self.weight = weight
        self.pairs = [(p, p.detach().clone()) for p in parameters if p.requires_grad]

    def penalty(self):
        """``weight * sum ||theta - theta_0||^2`` (float32), differentiable in theta."""
        total = sum(((p.float() - p0.float()) ** 2).sum() for p, p0 in self.pairs)
        return self.weight * torch.as_tensor(total, dtype=torch.float32)


def from_hparams(hparams, modules):
    """The run's ``L2SP`` over ``modules``' trained parameters, or None (``l2sp_weight`` 0)."""
    weight = hparams.l2sp_weight
    return L2SP(modules.parameters(), weight) if weight > 0 else None
