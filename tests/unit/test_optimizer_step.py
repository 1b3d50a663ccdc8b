"""The optimizer step: the yaml's fused AdamW against PyTorch's per-tensor loop, and the
check that drops a step's gradients when one is not finite."""

import copy
import types

import pytest
import torch

from whisper_finetuning.training import resilience
from whisper_finetuning.training.config import load_hparams

# fused and per-tensor AdamW round differently; after 5 steps at lr 1e-3 they agree this well
ATOL = 1e-6


def test_the_recipes_fused_adamw_steps_as_the_per_tensor_loop(random_whisper_dir, tmp_path):
    overrides = {"whisper_hub": str(random_whisper_dir), "data_folder": str(tmp_path), "lr": 1e-3}
    hparams, _ = load_hparams("hparams/whisper_small.yaml", overrides)
    fused_model = hparams["whisper"].model.model.decoder
    loop_model = copy.deepcopy(fused_model)
    fused = hparams["optimizer"](fused_model.parameters())
    loop = torch.optim.AdamW(loop_model.parameters(), lr=1e-3, weight_decay=0.01)
    start = copy.deepcopy(fused_model)
    assert fused.defaults["fused"] and fused.defaults["weight_decay"] == 0.01
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        for a, b in zip(fused_model.parameters(), loop_model.parameters(), strict=True):
            a.grad = torch.randn(a.shape, generator=generator)
            b.grad = a.grad.clone()
        fused.step()
        loop.step()
    for a, b, a0 in zip(
        fused_model.parameters(), loop_model.parameters(), start.parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=ATOL)
        # five Adam steps move the weights by about lr on average, far beyond the tolerance
        assert (a - a0).abs().mean() > 100 * ATOL
    overrides["adamw_fused"] = False  # e.g. for an optimizer wrapper without the fused kernel
    hparams, _ = load_hparams("hparams/whisper_small.yaml", overrides)
    assert not hparams["optimizer"](fused_model.parameters()).defaults["fused"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_gradient_drops_every_gradient_of_the_step(bad):
    module = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    brain = types.SimpleNamespace(modules=module)
    for param in module.parameters():
        param.grad = torch.ones_like(param)
    resilience.ResilientBrain.check_gradients(brain)
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in module.parameters())
    module[1].bias.grad[0] = bad
    resilience.ResilientBrain.check_gradients(brain)
    assert all(p.grad is None for p in module.parameters())
