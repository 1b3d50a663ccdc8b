"""label_source as a group and pseudo_label_weight: each row's loss weight, the weighted loss
equal to a hand-computed sum on both loss paths, weights of 1 equal to the plain loss."""

import pytest
import torch

from whisper_finetuning.common.label_sources import loss_weights
from whisper_finetuning.model import fast_loss
from whisper_finetuning.training.brain import group_columns


def test_label_source_is_always_a_group():
    assert group_columns(["dialect"]) == ["dialect", "language", "label_source"]
    assert group_columns(["label_source", "language"]) == ["label_source", "language"]


def test_loss_weights():
    assert loss_weights(["pseudo", "human", "", "pseudo"], 0.25) == [0.25, 1.0, 1.0, 0.25]
    assert loss_weights(["pseudo", "human"], 1.0) is None  # the plain loss
    assert loss_weights(None, 0.5) is None  # a manifest without label_source


def _batch():
    generator = torch.Generator().manual_seed(7)
    hidden = torch.randn(3, 5, 8, generator=generator)
    projection = torch.nn.Linear(8, 11, bias=False)
    torch.nn.init.normal_(projection.weight, generator=generator)
    targets = torch.randint(11, (3, 5), generator=generator)
    return hidden, projection, targets, torch.tensor([5, 2, 4]) / 5


@pytest.mark.parametrize("chunk_size", [0, 3])
def test_weighted_loss_equals_the_hand_computed_sum(chunk_size):
    hidden, projection, targets, lengths = _batch()
    weights = torch.tensor([1.0, 0.5, 0.0])
    smoothing = 0.1
    with torch.no_grad():
        log_probs = projection(hidden).log_softmax(-1)
        expected = 0.0
        for row, n in enumerate([5, 2, 4]):
            for t in range(n):
                term = -(1 - smoothing) * log_probs[row, t, targets[row, t]]
                term -= smoothing * log_probs[row, t].mean()
                expected += weights[row].item() * term.item()
        expected /= 5 + 2 + 4
    loss, _ = fast_loss.nll_loss(
        projection, hidden, targets, lengths, smoothing, chunk_size, row_weights=weights
    )
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_weighted_gradients_equal_the_reference_and_ones_equal_the_plain_loss():
    hidden, projection, targets, lengths = _batch()
    results = {}
    for chunk_size, weights in ((0, [1.0, 0.5, 0.0]), (3, [1.0, 0.5, 0.0]), (3, None), (3, 1)):
        projection.zero_grad()
        states = hidden.clone().requires_grad_()
        row_weights = None if weights is None else torch.tensor(weights).float().expand(3)
        loss, _ = fast_loss.nll_loss(
            projection, states, targets, lengths, 0.1, chunk_size, row_weights=row_weights
        )
        loss.backward()
        results[chunk_size, str(weights)] = (loss, states.grad, projection.weight.grad.clone())
    reference, chunked = results[0, "[1.0, 0.5, 0.0]"], results[3, "[1.0, 0.5, 0.0]"]
    for actual, expected in zip(chunked, reference, strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    assert not chunked[1][2].any()  # a row of weight 0 gets no gradient
    plain, ones = results[3, "None"], results[3, "1"]
    for actual, expected in zip(ones, plain, strict=True):
        assert torch.equal(actual, expected)
