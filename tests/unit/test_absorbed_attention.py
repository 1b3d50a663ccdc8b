"""The absorbed cross-attention equals transformers' WhisperAttention: outputs and the
gradients of every parameter and of the encoder frames, where it is taken; elsewhere
transformers' own path runs."""

import pytest
import torch
from conftest import transformers_cross_attention
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from whisper_finetuning.decoding.search import greedy_search
from whisper_finetuning.model import absorbed_attention
from whisper_finetuning.model.asr import WhisperASR

KEYS_VALUES = (r"decoder\.layers\.\d+\.encoder_attn\.(k_proj|v_proj)$",)


@pytest.fixture
def absorbed_calls(monkeypatch):
    """The query lengths of every call to the absorbed path, in order."""
    calls = []
    original = absorbed_attention.absorbed_cross_attention
    monkeypatch.setattr(
        absorbed_attention,
        "absorbed_cross_attention",
        lambda *args: calls.append(args[1].shape[1]) or original(*args),
    )
    return calls


def _step(whisper, tokens, frames, absorbed):
    """Decoder hidden states and the gradients of a loss on them (trainable parameters, and
    the frames), with the absorbed cross-attention or transformers' own."""
    if not absorbed:
        transformers_cross_attention(whisper)
    frames = frames.clone().requires_grad_(True)
    hidden = whisper.decoder_hidden(tokens, frames)
    hidden.square().mean().backward()
    grads = {n: p.grad for n, p in whisper.named_parameters() if p.grad is not None}
    return hidden.detach(), frames.grad, grads


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_outputs_and_gradients_equal_transformers_attention(random_whisper_dir, attention):
    torch.manual_seed(0)
    tokens, frames = torch.randint(1000, (3, 12)), torch.randn(3, 500, 64)
    results = []
    for absorbed in (True, False):
        whisper = WhisperASR(str(random_whisper_dir), trainable_patterns=["decoder"])
        whisper.model.set_attn_implementation(attention)
        results.append(_step(whisper, tokens, frames, absorbed))
    (hidden, frames_grad, grads), (ref_hidden, ref_frames_grad, ref_grads) = results
    assert torch.allclose(hidden, ref_hidden, atol=1e-5)
    assert torch.allclose(frames_grad, ref_frames_grad, atol=1e-7, rtol=1e-4)
    assert grads.keys() == ref_grads.keys() and len(grads) > 20
    for name, grad in grads.items():
        scale = ref_grads[name].abs().max()
        assert (grad - ref_grads[name]).abs().max() <= 1e-4 * scale, name


def test_taken_only_where_it_is_cheaper_and_exact(random_whisper_dir, absorbed_calls):
    frames = torch.randn(2, 100, 64)

    def decoded(whisper, length):
        absorbed_calls.clear()
        whisper.decoder_hidden(torch.randint(1000, (2, length)), frames).sum().backward()
        return list(absorbed_calls)

    trained = WhisperASR(str(random_whisper_dir), trainable_patterns=["decoder"])
    # 2 heads x tokens against d_model 64, per decoder layer (2)
    assert decoded(trained, 31) == [31, 31] and decoded(trained, 32) == []
    frozen = WhisperASR(str(random_whisper_dir), trainable_patterns=[r"encoder_attn\.q_proj"])
    assert decoded(frozen, 15) == [15, 15] and decoded(frozen, 16) == []
    with torch.no_grad():  # no weight gradient to skip: the full budget
        absorbed_calls.clear()
        frozen.decoder_hidden(torch.randint(1000, (2, 31)), frames)
        assert absorbed_calls == [31, 31]
    lora = WhisperASR(
        str(random_whisper_dir), adapter="lora", adapter_targets=KEYS_VALUES, lora_dropout=0.0
    )
    assert decoded(lora, 8) == []  # adapter-wrapped projections: transformers' path


def test_a_search_attends_to_the_frames_until_the_break_even(random_whisper_dir, absorbed_calls):
    """Width 64, 2 heads: absorbed while fewer than 64 positions are decoded, then the keys
    and values are projected and cached; the tokens are transformers' own."""
    whisper = WhisperASR(str(random_whisper_dir)).eval()
    attention = whisper.model.model.decoder.layers[0].encoder_attn
    assert attention.decoding_break_even() == 64
    one_token = torch.randn(1, 1, 64)
    for decoded, projected, absorbs in ((63, False, True), (64, False, False), (5, True, False)):
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        cache.self_attention_cache.update(
            torch.zeros(1, 2, decoded, 32), torch.zeros(1, 2, decoded, 32), 0
        )
        cache.is_updated[0] = projected
        assert attention._absorbs(one_token, cache) == absorbs
    torch.manual_seed(0)
    frames = torch.randn(3, 100, 64)
    hyps, _ = greedy_search(whisper, frames, max_new_tokens=80)
    reference, _ = greedy_search(transformers_cross_attention(whisper), frames, max_new_tokens=80)
    assert hyps == reference
    prompt = len(whisper.prefix_tokens)
    longest = max(len(h) for h in hyps)
    # per layer, one call a step while the positions so far (the step's own included) are < 64
    assert longest == 80 and len(absorbed_calls) == 2 * (64 - prompt)
