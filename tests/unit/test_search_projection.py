"""The searches' output projection: what ``nn.Linear`` computes, never from stale weights."""

import peft
import pytest
import torch

from whisper_finetuning.decoding.search import greedy_search, new_cache
from whisper_finetuning.model.asr import WhisperASR
from whisper_finetuning.model.search_projection import SearchProjection


def projection_layer(vocab=500, width=24, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Linear(width, vocab, bias=False).eval()


@pytest.mark.parametrize("rows", [1, 2, 3, 8])
def test_equals_the_linear_layer_from_a_transposed_copy(rows):
    linear, projection = projection_layer(), SearchProjection()
    hidden = torch.randn(rows, 1, 24)
    with torch.no_grad():
        torch.testing.assert_close(projection(linear, hidden), linear(hidden))
    assert projection._transposed.shape == (24, 500)  # the copy served the step


def test_loaded_or_replaced_weights_take_a_fresh_copy():
    linear, projection = projection_layer(), SearchProjection()
    hidden = torch.randn(2, 1, 24)
    with torch.no_grad():
        projection(linear, hidden)
        linear.load_state_dict(projection_layer(seed=1).state_dict())
        torch.testing.assert_close(projection(linear, hidden), linear(hidden))
        linear.weight = torch.nn.Parameter(torch.randn(500, 24))
        torch.testing.assert_close(projection(linear, hidden), linear(hidden))
        linear.weight.data = torch.randn(500, 24)
        torch.testing.assert_close(projection(linear, hidden), linear(hidden))


def test_training_gradients_and_wrapped_layers_use_the_module_itself():
    linear, projection = projection_layer(), SearchProjection()
    hidden = torch.randn(2, 1, 24)
    assert torch.equal(projection(linear, hidden), linear(hidden))  # gradients on
    with torch.no_grad():
        assert torch.equal(projection(linear.train(), hidden), linear(hidden))
        wrapped = torch.nn.Sequential(projection_layer())
        config = peft.LoraConfig(r=2, target_modules=["0"], init_lora_weights=False)
        peft.inject_adapter_in_model(config, wrapped)
        lora = wrapped[0].eval()
        assert torch.equal(projection(lora, hidden), lora(hidden))
        assert not torch.allclose(lora(hidden), lora.base_layer(hidden))  # the adapter counts
    assert projection._transposed is None


def test_a_search_after_a_fused_optimizer_step_sees_the_new_weights(random_whisper_dir):
    whisper = WhisperASR(str(random_whisper_dir)).eval()
    encoder_out = torch.randn(2, 50, whisper.model.config.d_model)
    greedy_search(whisper, encoder_out, max_new_tokens=3)  # takes the copy
    weight = whisper.model.proj_out.weight
    version = weight._version

    whisper.train()
    optimizer = torch.optim.AdamW([weight], lr=0.1, fused=True)
    tokens = torch.tensor([whisper.prefix_tokens] * 2)
    whisper.forward_decoder(tokens, encoder_out).logsumexp(-1).mean().backward()
    optimizer.step()
    assert weight._version == version  # why training, not the counter, forgets the copy

    whisper.eval()
    with torch.no_grad():
        logits = whisper.forward_decoder(tokens, encoder_out, new_cache())
        hidden = whisper.decoder_hidden(tokens, encoder_out)
        torch.testing.assert_close(logits, whisper.model.proj_out(hidden))
