"""The benchmark's device section on CPU with a tiny shape: both systems run, the ratios and
utilisations are the figures' own, and a step's FLOPs follow flops.py."""

import json
import subprocess
import sys

import pytest

from whisper_finetuning import synthetic_benchmark
from whisper_finetuning.profiling import flops


@pytest.fixture(scope="module")
def device_section(tmp_path_factory):
    """One run of the section on CPU, the tiny shape, with its two-process DDP scaling:
    (printed output, JSON report)."""
    report_file = tmp_path_factory.mktemp("synthetic") / "synthetic.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "whisper_finetuning.benchmark",
            "--device",
            "cpu",
            "--shapes",
            "test",
        ]
        + ["--batch_size", "2", "--steps", "2", "--ddp", "2", f"--json={report_file}"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, json.loads(report_file.read_text())


@pytest.mark.slow
def test_device_section_runs_on_cpu_and_reports_its_ratios(device_section):
    stdout, report = device_section
    assert (report["device"], report["precision"]) == ("cpu", "fp32")
    shape = report["test"]
    recipe, baseline, speechbrain = shape["recipe"], shape["baseline"], shape["speechbrain"]
    for other, suffix in ((baseline, ""), (speechbrain, "_speechbrain")):
        assert shape["train_throughput_ratio" + suffix] == pytest.approx(
            recipe["train_utterances_per_second"] / other["train_utterances_per_second"]
        )
        assert shape["peak_memory_ratio" + suffix] == pytest.approx(
            recipe["peak_memory_mb"] / other["peak_memory_mb"]
        )
    # SpeechBrain's recipe encodes 30 s and projects every position, as Seq2SeqTrainer does
    assert speechbrain["train_flops_per_second"] * speechbrain["step_seconds"] == pytest.approx(
        baseline["train_flops_per_second"] * baseline["step_seconds"]
    )
    for figures in (recipe, baseline, speechbrain):
        assert figures["train_utterances_per_second"] == pytest.approx(2 / figures["step_seconds"])
        assert figures["flop_utilisation"] == pytest.approx(
            figures["train_flops_per_second"] / report["matmul_peak_flops"]
        )
    assert recipe["cache_utterances_per_second"] > 0
    assert "train utterances/s" in stdout


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


@pytest.mark.slow
def test_ddp_scaling_runs_two_gloo_processes(device_section):
    stdout, report = device_section
    scaling = report["test"]["ddp"]
    assert scaling["processes"] == 2
    assert scaling["scaling_efficiency"] == pytest.approx(
        scaling["utterances_per_second"] / (2 * scaling["one_process_utterances_per_second"])
    )
    assert "scaling efficiency" in stdout


def test_ddp_is_refused_on_a_gpu(capsys):
    with pytest.raises(SystemExit):
        synthetic_benchmark.parse_args(["--device", "cuda", "--ddp", "2"])
    assert "--ddp measures gloo processes on CPU" in capsys.readouterr().err
