"""The benchmark's device section: a step's FLOPs follow flops.py, and bad options are one clear
error. The section itself runs on CPU in tests/tools/test_gpu_benchmark_script.py."""

import pytest

from whisper_finetuning import synthetic_benchmark
from whisper_finetuning.profiling import flops


def test_step_flops_count_the_baselines_encoder_and_full_projection():
    config = synthetic_benchmark.whisper_config("test")
    batches = synthetic_benchmark.synthetic_batches(config, 3, 5)
    lengths = [n for _, row_lengths in batches[3:] for n in row_lengths.tolist()]
    assert all(20 <= n <= 40 for n in lengths)
    recipe = sum(flops.decoder_training_step(config, n, 1500, n - 1) for n in lengths) / 2
    encoder = flops.encoder_forward(config, 30)
    baseline = sum(encoder + flops.decoder_training_step(config, n, 1500, n) for n in lengths) / 2
    assert synthetic_benchmark.step_flops(config, batches, "recipe") == recipe
    assert synthetic_benchmark.step_flops(config, batches, "baseline") == baseline


def test_unknown_shape_is_one_clear_error(capsys):
    with pytest.raises(SystemExit):
        synthetic_benchmark.parse_args(["--device", "cpu", "--shapes", "huge"])
    assert "unknown shape huge" in capsys.readouterr().err


def test_ddp_is_refused_on_a_gpu(capsys):
    with pytest.raises(SystemExit):
        synthetic_benchmark.parse_args(["--device", "cuda", "--ddp", "2"])
    assert "--ddp measures gloo processes on CPU" in capsys.readouterr().err
