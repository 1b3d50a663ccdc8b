"""The shape-based FLOP counts equal torch's own FlopCounterMode on a tiny random Whisper with
eager attention (the counter does not see CPU SDPA kernels), within 1%, and the matmul probe
measures."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from whisper_finetuning.model.asr import WhisperASR
from whisper_finetuning.profiling import flops


def _eager(whisper):
    whisper.model.set_attn_implementation("eager")
    return whisper


def _counted(function):
    with FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops()


@pytest.mark.parametrize("window_seconds", [10, 30])
def test_encoder_count_equals_torch_flop_counter(random_whisper_dir, window_seconds):
    whisper = _eager(WhisperASR(str(random_whisper_dir), window_seconds=window_seconds))
    audio = torch.randn(1, 16000 * window_seconds) * 0.1
    feats = whisper.features(audio)
    with torch.no_grad():
        counted = _counted(lambda: whisper.encode(feats))
    expected = flops.encoder_forward(whisper.model.config, window_seconds)
    assert counted == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize(
    "keys_values, positions", [("train", 40), ("frozen", 40), ("absorbed", 12)]
)
def test_decoder_step_count_equals_torch_flop_counter(random_whisper_dir, keys_values, positions):
    """2 heads of 32: 12 positions take the absorbed cross-attention, 40 transformers' own."""
    patterns = [r"decoder\.(?!.*encoder_attn\.[kv]_)"] if keys_values == "frozen" else ["decoder"]
    whisper = _eager(WhisperASR(str(random_whisper_dir), trainable_patterns=patterns))
    frames = 500
    encoder_out = torch.randn(1, frames, 64)
    tokens = torch.randint(1000, (1, positions))

    def step():
        logits = whisper.forward_decoder(tokens, encoder_out)
        logits.float().log_softmax(-1).mean().backward()

    expected = flops.decoder_training_step(
        whisper.model.config, positions, frames, positions, keys_values
    )
    assert _counted(step) == pytest.approx(expected, rel=0.01)


def test_kept_keys_values_cost_nothing_and_unknown_modes_are_refused(random_whisper_dir):
    config = WhisperASR(str(random_whisper_dir)).model.config
    counts = [flops.decoder_training_step(config, 10, 1500, 9, kv) for kv in flops.KEYS_VALUES]
    key_value_pass = config.decoder_layers * 4 * 1500 * 64 * 64
    attention_backward_half = config.decoder_layers * 4 * 10 * 1500 * 64
    assert counts[0] - counts[1] == key_value_pass + attention_backward_half
    assert counts[1] - counts[2] == key_value_pass
    with pytest.raises(ValueError, match="keys_values"):
        flops.decoder_training_step(config, 10, 1500, 9, "cached")


def test_matmul_probe_reports_a_rate():
    assert flops.matmul_peak(size=128, seconds=0.05) > 0
