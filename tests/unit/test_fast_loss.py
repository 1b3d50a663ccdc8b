"""The chunked projection + label-smoothed NLL equals the reference (full-batch float32
log-softmax, SpeechBrain's nll_loss, token_statistics): loss and token statistics within
1e-5 relative (float32 sums in another order), gradients within 1e-5 relative of their largest
entry, argmax and counts exactly."""

import pytest
import torch

from whisper_finetuning.data import examples
from whisper_finetuning.model import fast_loss
from whisper_finetuning.model.asr import WhisperASR

RTOL = 1e-5


def _assert_close(actual, expected):
    """Equal within RTOL of the expected tensor's largest magnitude."""
    expected = torch.as_tensor(expected, dtype=torch.float32)
    actual = torch.as_tensor(actual, dtype=torch.float32)
    scale = max(expected.abs().max().item(), 1e-12) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=0, atol=RTOL * scale)


def _assert_same_statistics(actual, expected):
    for key in ("tokens", "correct", "argmax"):
        assert actual[key] == expected[key], key
    for key in ("nll", "confidence"):
        _assert_close(actual[key], expected[key])
    assert torch.equal(actual["is_correct"], expected["is_correct"])
    if expected["entropy"] is None:
        assert actual["entropy"] is None
    else:
        _assert_close(actual["entropy"], expected["entropy"])


def _random_batch(seed, batch=4, time=9, width=16, vocab=53):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, time, width, generator=generator)
    projection = torch.nn.Linear(width, vocab, bias=False)
    torch.nn.init.normal_(projection.weight, generator=generator)
    targets = torch.randint(vocab, (batch, time), generator=generator)
    lengths = torch.tensor([time, 1, time - 3, 5][:batch]) / time
    return hidden, projection, targets, lengths


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 1000])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("entropy", [False, True])
def test_chunked_loss_gradients_and_statistics_equal_the_reference(
    chunk_size, label_smoothing, entropy
):
    hidden, projection, targets, lengths = _random_batch(seed=chunk_size)
    results = {}
    for size in (0, chunk_size):
        projection.zero_grad()
        states = hidden.clone().requires_grad_()
        loss, stats = fast_loss.nll_loss(
            projection, states, targets, lengths, label_smoothing, size, 3, entropy
        )
        (2.5 * loss).backward()  # a scaled loss scales the gradients
        results[size] = (loss.detach(), stats, states.grad, projection.weight.grad.clone())
    (ref_loss, ref_stats, ref_hidden, ref_weight) = results[0]
    (loss, stats, grad_hidden, grad_weight) = results[chunk_size]
    _assert_close(loss, ref_loss)
    _assert_close(grad_hidden, ref_hidden)
    _assert_close(grad_weight, ref_weight)
    assert not grad_hidden[1, 1:].any()  # padding positions get no gradient
    _assert_same_statistics(stats, ref_stats)
    assert stats["tokens"] == [9, 1, 6]


@pytest.mark.parametrize("chunk_size", [1, 4, 1000])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("row_weights", [None, (1.0, 0.0, 0.5, 2.0)])
def test_the_loss_with_a_teacher_equals_the_nll_plus_the_weighted_kl(
    chunk_size, label_smoothing, row_weights
):
    """The reference adds ``weight`` times the mean KL over the target positions (teacher
    states at padding positions count for nothing); the chunked path, which adds the KL's
    gradient to the NLL's before its products, equals it in loss and gradients."""
    hidden, projection, targets, lengths = _random_batch(seed=11)
    teacher_hidden, teacher_projection, _, _ = _random_batch(seed=12)
    distill = fast_loss.Distillation(teacher_hidden, teacher_projection, 0.7, 2.0)
    weights = None if row_weights is None else torch.tensor(row_weights)
    mask = torch.arange(targets.shape[1])[None] < torch.round(lengths * targets.shape[1])[:, None]
    with torch.no_grad():
        plain, _ = fast_loss.nll_loss(
            projection, hidden, targets, lengths, label_smoothing, 0, row_weights=weights
        )
        teacher = teacher_projection(teacher_hidden)
        kl = fast_loss.distillation_kl(projection(hidden)[mask], teacher[mask], 2.0).mean()
    results = {}
    for size in (0, chunk_size):
        projection.zero_grad()
        states = hidden.clone().requires_grad_()
        loss, _ = fast_loss.nll_loss(
            projection, states, targets, lengths, label_smoothing, size, 3,
            row_weights=weights, distillation=distill,
        )  # fmt: skip
        (2.5 * loss).backward()
        results[size] = (loss.detach(), states.grad, projection.weight.grad.clone())
    (ref_loss, ref_hidden, ref_weight), (loss, grad_hidden, grad_weight) = results.values()
    _assert_close(ref_loss, plain + 0.7 * kl)
    _assert_close(loss, ref_loss)
    _assert_close(grad_hidden, ref_hidden)
    _assert_close(grad_weight, ref_weight)
    assert not grad_hidden[1, 1:].any()
    padded = teacher_hidden.masked_fill(~mask[..., None], 50.0)
    other = fast_loss.Distillation(padded, teacher_projection, 0.7, 2.0)
    with torch.no_grad():
        again, _ = fast_loss.nll_loss(
            projection, hidden, targets, lengths, label_smoothing, chunk_size,
            row_weights=weights, distillation=other,
        )  # fmt: skip
    assert torch.equal(again, loss)


def test_chunked_loss_without_gradients_and_without_statistics():
    hidden, projection, targets, lengths = _random_batch(seed=3)
    projection.requires_grad_(False)
    with torch.no_grad():
        loss, stats = fast_loss.nll_loss(projection, hidden, targets, lengths, 0.1, 5)
        ref_loss, _ = fast_loss.nll_loss(projection, hidden, targets, lengths, 0.1, 0)
    assert stats is None
    _assert_close(loss, ref_loss)


def test_chunked_loss_through_whisper_equals_the_reference(random_whisper_dir):
    """The recipe's path: WhisperASR's hidden states aligned per row's prompt length, the
    chunked loss; every trainable parameter's gradient equals the reference's."""
    whisper = WhisperASR(str(random_whisper_dir), trainable_patterns=["decoder"])
    generator = torch.Generator().manual_seed(0)
    audio = torch.randn(3, 16000, generator=generator) * 0.1
    audio_lens = torch.tensor([1.0, 0.6, 0.8])
    tokens = torch.randint(1000, (3, 8), generator=generator)
    tokens[:, :2] = torch.tensor(whisper.prefix_tokens)
    token_lens = torch.tensor([1.0, 0.75, 0.5])
    targets = torch.randint(1000, (3, 7), generator=generator)
    target_lens = torch.tensor([1.0, 5 / 7, 3 / 7])
    prompt_lens = torch.tensor([2, 2, 3])
    results = {}
    for size in (0, 4):
        whisper.zero_grad()
        hidden, _ = whisper(audio, audio_lens, tokens, token_lens, project=False)
        hidden = examples.align_to_targets(hidden, prompt_lens, targets.shape[1])
        loss, stats = fast_loss.nll_loss(
            whisper.model.proj_out, hidden, targets, target_lens, 0.1, size, 2
        )
        loss.backward()
        grads = {n: p.grad.clone() for n, p in whisper.named_parameters() if p.requires_grad}
        results[size] = (loss.detach(), stats, grads)
    _assert_close(results[4][0], results[0][0])
    _assert_same_statistics(results[4][1], results[0][1])
    assert results[0][2].keys() == results[4][2].keys()
    # the projection is tied to the token embedding: its gradient holds both parts
    assert whisper.model.proj_out.weight is whisper.model.model.decoder.embed_tokens.weight
    assert "model.model.decoder.embed_tokens.weight" in results[0][2]
    for name, grad in results[0][2].items():
        _assert_close(results[4][2][name], grad)


def test_projected_forward_equals_the_hidden_states_projected(random_whisper_dir):
    whisper = WhisperASR(str(random_whisper_dir))
    audio = torch.randn(2, 8000) * 0.1
    tokens = torch.tensor([whisper.prefix_tokens + [100, 200]] * 2)
    lens = torch.ones(2)
    with torch.no_grad():
        log_probs, _ = whisper(audio, lens, tokens, lens)
        hidden, _ = whisper(audio, lens, tokens, lens, project=False)
        expected = torch.log_softmax(whisper.model.proj_out(hidden).float(), dim=-1)
    torch.testing.assert_close(log_probs, expected, rtol=0, atol=0)


@pytest.mark.parametrize("autocast", [False, True])
def test_the_logits_in_vocabulary_blocks_equal_one_product(autocast):
    """A vocabulary of 2.5 blocks (the last one short); under bf16 autocast the blocks keep
    the product's dtype."""
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(37, 64, generator=generator)
    weight = torch.randn(fast_loss.CPU_VOCAB_BLOCK * 5 // 2, 64, generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        blocked, plain = fast_loss.logits(rows, weight), torch.matmul(rows, weight.t())
    assert blocked.dtype == plain.dtype == (torch.bfloat16 if autocast else torch.float32)
    assert blocked.shape == plain.shape
    _assert_close(blocked, plain)
