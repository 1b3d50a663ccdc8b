"""The decoder's output projection for search steps on CPU.

A search step projects one position of a few rows onto the whole vocabulary: for tiny.en a
[rows, 384] x [384, 51864] product that is half or more of a CPU decoder step. ``nn.Linear``
multiplies by its [vocabulary, width] weight transposed; with a row-major copy of that
transpose the same product runs about twice as fast for 1-2 rows (tiny.en, 2 threads; equal
from ~16 rows; docs/speed.md).

The copy must never outlive the weights it was taken from. Fused optimizers step without
moving a parameter's version counter, so the copy is taken only for a model in eval mode and
forgotten whenever its owner switches to train mode (``WhisperASR.train``); loading weights
(``load_state_dict`` moves the version counter) or a new parameter or ``.data`` tensor (its
identity or storage) takes a fresh copy. Only a bias-free ``nn.Linear`` on CPU in eval mode,
without gradients or autocast, takes this path; anything else (CUDA, training, a LoRA-wrapped
projection) calls the module as it is.
"""

import torch


class SearchProjection:
    """Logits of search steps, ``linear(hidden)``, from a cached transposed weight on CPU."""

    def __init__(self):
        self.forget()

    def forget(self):
        """Drop the copy (the weights are about to change)."""
        self._weight = None  # the parameter the copy was taken from, its storage and version
        self._key = None
        self._transposed = None

    def __call__(self, linear, hidden):
        """``linear(hidden)`` for a no-grad search step, computed as described above."""
        if not self._applies(linear, hidden):
            return linear(hidden)
        weight = linear.weight
        key = (weight.data_ptr(), weight._version)
        if weight is not self._weight or key != self._key:
            self._transposed = weight.detach().t().contiguous()
            self._weight, self._key = weight, key
        return hidden @ self._transposed

    @staticmethod
    def _applies(linear, hidden):
        """Whether the cached path computes what ``linear`` would (see the module's notes)."""
        return (
            type(linear) is torch.nn.Linear
            and linear.bias is None
            and not linear.training
            and hidden.device.type == "cpu"
            and linear.weight.dtype == hidden.dtype
            and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu")
        )
