"""LoRA/DoRA adapters and gradient checkpointing on a tiny random Whisper."""

import pytest
import torch

from whisper_finetuning.model.asr import WhisperASR

DECODER_ATTENTION = [
    r"decoder\.layers\.\d+\.(self_attn|encoder_attn)\.(q_proj|k_proj|v_proj|out_proj)$"
]


def lora_asr(folder, **options):
    """A random Whisper with LoRA (rank 4) on every decoder attention projection."""
    torch.manual_seed(0)
    options = {"adapter": "lora", "lora_rank": 4, "lora_alpha": 8, **options}
    return WhisperASR(
        str(folder), adapter_targets=options.pop("targets", DECODER_ATTENTION), **options
    )


def training_loss(whisper, seed=1):
    """Teacher-forced NLL of random tokens on random features through the recipe's encoder
    split and decoder."""
    generator = torch.Generator().manual_seed(seed)
    feats = torch.randn(2, 80, 3000, generator=generator)
    tokens = torch.randint(0, 50000, (2, 9), generator=generator)
    with torch.no_grad():
        frozen = whisper.encode_frozen(feats)
    logits = whisper.forward_decoder(tokens[:, :-1], whisper.encode_trainable(frozen))
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())


def test_lora_gradients_flow_only_into_adapter_weights(random_whisper_dir):
    whisper = lora_asr(random_whisper_dir).train()
    trainable = [n for n, p in whisper.model.named_parameters() if p.requires_grad]
    # 2 decoder layers x 8 attention projections x (A, B)
    assert len(trainable) == 32 and all(".lora_" in n for n in trainable)
    for name, param in whisper.model.named_parameters():
        if "lora_B" in name:  # B starts at zero: the adapted model starts as the base model
            torch.nn.init.normal_(param, std=0.02)
    training_loss(whisper).backward()
    for name, param in whisper.model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name


def test_lora_layer_equals_its_definition_and_starts_as_the_base_model(random_whisper_dir):
    plain = WhisperASR(str(random_whisper_dir)).eval()
    whisper = lora_asr(random_whisper_dir).eval()
    torch.manual_seed(2)
    feats = torch.randn(1, 80, 3000)
    tokens = torch.randint(0, 50000, (1, 6))
    with torch.no_grad():
        base_logits = plain.forward_decoder(tokens, plain.encode(feats))
        # equal up to the plain model's absorbed cross-attention, which sums in another order
        torch.testing.assert_close(
            whisper.forward_decoder(tokens, whisper.encode(feats)), base_logits, atol=1e-6, rtol=0
        )
        layer = whisper.model.model.decoder.layers[1].self_attn.q_proj
        torch.nn.init.normal_(layer.lora_B["default"].weight)
        x = torch.randn(3, 64)
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        expected = layer.base_layer(x) + (8 / 4) * x @ a.T @ b.T
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_lora_checkpoint_holds_only_adapters_and_restores_the_outputs(random_whisper_dir, tmp_path):
    trained = lora_asr(random_whisper_dir, adapter="dora").eval()
    with torch.no_grad():
        for param in trained.model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
    trained._save(tmp_path / "whisper.ckpt")
    saved = torch.load(tmp_path / "whisper.ckpt", weights_only=True)
    # DoRA: A, B and the magnitude vector per adapted projection
    assert len(saved) == 48 and all(".lora_" in name for name in saved)
    fresh = lora_asr(random_whisper_dir, adapter="dora").eval()
    fresh._load(tmp_path / "whisper.ckpt", end_of_epoch=True)
    feats, tokens = torch.randn(1, 80, 3000), torch.tensor([[50257, 50362, 440, 50256]])
    with torch.no_grad():
        torch.testing.assert_close(
            fresh.forward_decoder(tokens, fresh.encode(feats)),
            trained.forward_decoder(tokens, trained.encode(feats)),
            atol=0,
            rtol=0,
        )
    plain = WhisperASR(str(random_whisper_dir))
    with pytest.raises(ValueError, match="does not fit this model"):
        plain._load(tmp_path / "whisper.ckpt", end_of_epoch=True)


def test_encoder_adapters_move_the_cache_boundary_below_them(random_whisper_dir):
    from whisper_finetuning.data.encoder_cache import cache_blocker

    decoder_only = lora_asr(random_whisper_dir)
    assert decoder_only.encoder_frozen
    top = lora_asr(random_whisper_dir, targets=[r"encoder\.layers\.1\.fc\d$"]).eval()
    # stem and layer 0 frozen: their output is what the cache holds
    assert top.frozen_encoder_depth == 2 and cache_blocker(top, augment=False) is None
    torch.nn.init.normal_(top.model.model.encoder.layers[1].fc1.lora_B["default"].weight)
    feats = torch.randn(1, 80, 3000)
    with torch.no_grad():
        torch.testing.assert_close(
            top.encode_trainable(top.encode_frozen(feats)),
            top.model.model.encoder(feats).last_hidden_state,
            atol=1e-5,
            rtol=0,
        )


def test_adapters_refuse_other_training_options_and_unmatched_targets(random_whisper_dir):
    with pytest.raises(ValueError, match="only adapter weights train"):
        lora_asr(random_whisper_dir, trainable_patterns=["encoder_attn"])
    with pytest.raises(ValueError, match="match no linear layer"):
        lora_asr(random_whisper_dir, targets=["no_such_layer"])
    with pytest.raises(ValueError, match="adapter must be one of"):
        lora_asr(random_whisper_dir, adapter="ia3")


def test_gradient_checkpointing_gives_the_same_gradients(random_whisper_dir):
    """Tolerance: 1e-6 absolute (measured: bitwise equal on CPU fp32)."""
    gradients = []
    for checkpointing in (False, True):
        whisper = WhisperASR(
            str(random_whisper_dir),
            gradient_checkpointing=checkpointing,
            trainable_encoder_layers=1,
        ).train()
        calls = []
        whisper.model.model.decoder.layers[0].fc1.register_forward_hook(
            lambda *_, calls=calls: calls.append(1)
        )
        training_loss(whisper).backward()
        # recomputed in the backward pass: run twice with checkpointing, once without
        assert len(calls) == 1 + checkpointing
        gradients.append(
            {n: p.grad for n, p in whisper.model.named_parameters() if p.requires_grad}
        )
    without, with_checkpointing = gradients
    assert without.keys() == with_checkpointing.keys() and len(without) > 20
    assert any("encoder.layers.1" in name for name in without)
    for name, grad in without.items():
        torch.testing.assert_close(with_checkpointing[name], grad, atol=1e-6, rtol=0)
