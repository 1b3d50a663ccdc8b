"""Checkpoint averaging of trainable weights."""

import pytest
import torch

from whisper_finetuning.training.averaging import average_parameters


def test_averaging_identical_checkpoints_returns_them_exactly():
    torch.manual_seed(0)
    saved = {"a.weight": torch.randn(5, 3), "b.bias": torch.randn(7)}
    averaged = average_parameters([saved, {k: v.clone() for k, v in saved.items()}, saved])
    assert averaged.keys() == saved.keys()
    for name, value in saved.items():
        assert averaged[name].dtype == value.dtype
        torch.testing.assert_close(averaged[name], value, atol=0, rtol=0)


def test_averaging_is_the_elementwise_mean():
    first = {"w": torch.tensor([1.0, 2.0, 4.0])}
    second = {"w": torch.tensor([3.0, 2.0, -4.0])}
    assert average_parameters([first, second])["w"].tolist() == [2.0, 2.0, 0.0]


def test_averaging_refuses_checkpoints_of_different_models():
    tiny = {"w": torch.zeros(384, 384)}
    base = {"w": torch.zeros(512, 512)}
    with pytest.raises(ValueError, match=r"different models: w has shapes \(384, 384\)"):
        average_parameters([tiny, base])
    with pytest.raises(ValueError, match="different models: only some hold lora"):
        average_parameters([tiny, {**tiny, "lora_A": torch.zeros(2)}])
