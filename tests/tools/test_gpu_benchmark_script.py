"""The device section's one script (whisper_finetuning/profiling/gpu_benchmark.sh): valid bash, and
its path without a CUDA GPU (the tiny test shape on CPU) runs the three systems and writes the
merged JSON."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "whisper_finetuning/profiling/gpu_benchmark.sh"


def test_the_script_is_valid_bash():
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_without_a_gpu_it_runs_the_test_shape_on_cpu_and_writes_one_json(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the script would run the real shapes")
    done = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
        cwd="/",  # it finds the repository from its own path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_benchmark.json").read_text())
    assert report["timed_out"] == [] and report["device"] == "cpu"
    shape = report["test"]
    assert {"recipe", "baseline", "speechbrain"} <= set(shape)
    assert shape["train_throughput_ratio_speechbrain"] == pytest.approx(
        shape["recipe"]["train_utterances_per_second"]
        / shape["speechbrain"]["train_utterances_per_second"]
    )
    text = (tmp_path / "gpu_benchmark.txt").read_text()
    assert "no CUDA GPU" in text and "speechbrain" in text
