"""Cross-attention keys/values kept per utterance: only when nothing feeding them trains, and the
decoder's outputs and gradients equal the uncached model's (float32 stored: equal to 1e-6)."""

import pytest
import torch
from conftest import transformers_cross_attention

from whisper_finetuning.model import cross_attention_cache
from whisper_finetuning.model.asr import WhisperASR

QO_SELF = [r"encoder_attn\.(q_proj|out_proj)", r"decoder\.layers\.\d+\.self_attn\."]


@pytest.mark.parametrize(
    ("options", "frozen"),
    [
        ({}, False),  # the whole decoder trains
        ({"trainable_patterns": ["encoder_attn"]}, False),  # the demo
        ({"trainable_patterns": QO_SELF}, True),
        ({"trainable_patterns": QO_SELF + ["encoder.layers.1"]}, False),
        ({"adapter": "lora", "adapter_targets": [r"encoder_attn\.(k_proj|v_proj)$"]}, False),
        ({"adapter": "lora", "adapter_targets": [r"encoder_attn\.(q_proj|out_proj)$"]}, True),
    ],
)
def test_the_cache_exists_only_when_keys_and_values_are_frozen(random_whisper_dir, options, frozen):
    whisper = WhisperASR(str(random_whisper_dir), cross_attention_cache_mb=64, **options)
    assert cross_attention_cache.keys_values_frozen(whisper.model) is frozen
    assert (whisper.cross_attention_cache is not None) is frozen


def _step(whisper, frozen, lens, tokens, ids):
    whisper.zero_grad()
    hidden, _ = whisper(frozen, lens, tokens, torch.ones(len(ids)), True, False, ids)
    (hidden**2).mean().backward()
    grads = {n: p.grad.clone() for n, p in whisper.named_parameters() if p.requires_grad}
    return hidden.detach(), grads


@pytest.mark.parametrize("budget_mb", [64, 1])
def test_kept_keys_and_values_give_the_uncached_outputs_and_gradients(
    random_whisper_dir, budget_mb
):
    """Clips of 3 s and 12 s with a 10 s window step: two windows, 500 and 1000 frames."""
    plain = transformers_cross_attention(
        WhisperASR(str(random_whisper_dir), trainable_patterns=QO_SELF, window_seconds=10)
    )
    kept = WhisperASR(
        str(random_whisper_dir),
        trainable_patterns=QO_SELF,
        window_seconds=10,
        cross_attention_cache_mb=budget_mb,
    )
    generator = torch.Generator().manual_seed(0)
    audio = torch.randn(3, 12 * 16000, generator=generator) * 0.1
    audio_lens = torch.tensor([0.25, 1.0, 0.25])
    with torch.no_grad():
        groups = plain.encode_frozen_by_window(audio, audio_lens)
    frozen = torch.zeros(3, 1000, 64)
    for rows, out in groups:
        frozen[rows, : out.shape[1]] = out
    lens = torch.tensor([0.5, 1.0, 0.5])
    tokens = torch.randint(1000, (3, 6), generator=generator)
    ids = ["a", "b", "c"]
    expected = _step(plain, frozen, lens, tokens, ids)
    for _ in range(2):  # the first call computes and keeps, the second reads
        hidden, grads = _step(kept, frozen, lens, tokens, ids)
        torch.testing.assert_close(hidden, expected[0], rtol=0, atol=1e-6)
        assert grads.keys() == expected[1].keys()
        for name, grad in expected[1].items():
            torch.testing.assert_close(grads[name], grad, rtol=0, atol=1e-6)
    cache = kept.cross_attention_cache
    config = kept.model.config
    sizes = {"a": 500, "b": 1000, "c": 500}
    per_utterance = {
        u: cross_attention_cache.bytes_per_utterance(config, f) for u, f in sizes.items()
    }
    if budget_mb == 64:
        assert set(cache.entries) == set(ids)
        assert cache.used == sum(per_utterance.values())
    else:  # 1 MB holds the two short clips (2 x 0.5 MB), not the long one
        assert set(cache.entries) == {"a", "c"}
        assert cache.used == per_utterance["a"] + per_utterance["c"] <= 2**20
    # a row's kept keys are its own: the second layer's keys of "c" from its window's frames
    keys_c = cache.entries["c"][1][0]
    attention = kept.model.model.decoder.layers[1].encoder_attn
    with torch.no_grad():
        own = attention.k_proj(frozen[2:3, :500]).view(1, 500, 2, 32).transpose(1, 2)[0]
    torch.testing.assert_close(keys_c, own, rtol=0, atol=1e-6)


def test_the_second_step_reads_the_kept_keys_and_values_without_projecting_the_frames(
    random_whisper_dir, monkeypatch
):
    """Every way the decoder can reach the encoder frames is counted: a call of a layer's
    cross-attention k_proj/v_proj (transformers' path, and the cache filling itself) and a
    call of the absorbed path (which reads the frames through the weights, not the modules).
    The uncached model (transformers' attention, the reference) projects the frames in every
    step; the cached one in the first step only, and its outputs stay the reference's."""
    from whisper_finetuning.model import absorbed_attention

    touched = []
    absorbed = absorbed_attention.absorbed_cross_attention

    def counted_absorbed(attention, hidden_states, frames):
        touched.append("absorbed")
        return absorbed(attention, hidden_states, frames)

    monkeypatch.setattr(absorbed_attention, "absorbed_cross_attention", counted_absorbed)

    def count_projections(whisper):
        for layer in whisper.model.model.decoder.layers:
            for name in ("k_proj", "v_proj"):
                getattr(layer.encoder_attn, name).register_forward_hook(
                    lambda module, args, out, name=name: touched.append(name)
                )
        return whisper

    plain = count_projections(
        transformers_cross_attention(
            WhisperASR(str(random_whisper_dir), trainable_patterns=QO_SELF)
        )
    )
    kept = count_projections(
        WhisperASR(str(random_whisper_dir), trainable_patterns=QO_SELF, cross_attention_cache_mb=64)
    )
    generator = torch.Generator().manual_seed(1)
    frozen = torch.randn(2, 1500, 64, generator=generator)
    lens, ids = torch.ones(2), ["u1", "u2"]
    tokens = torch.randint(1000, (2, 5), generator=generator)
    layers = len(kept.model.model.decoder.layers)
    for step in range(2):
        touched.clear()
        expected, _ = _step(plain, frozen, lens, tokens, ids)
        assert touched, "the uncached model must reach the frames (else nothing is counted)"
        touched.clear()
        hidden, _ = _step(kept, frozen, lens, tokens, ids)
        if step == 0:  # projected once per layer, all rows at once, and kept
            assert sorted(touched) == ["k_proj"] * layers + ["v_proj"] * layers
        else:
            assert touched == []
        torch.testing.assert_close(hidden, expected, rtol=0, atol=1e-6)
    assert set(kept.cross_attention_cache.entries) == set(ids)
