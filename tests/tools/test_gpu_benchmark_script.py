"""The device section's one script (whisper_finetuning/profiling/gpu_benchmark.sh): valid bash, and
its path without a CUDA GPU (the tiny test shape on CPU) runs the three systems, the
two-process DDP scaling and the FSDP checks (2 gloo processes) and writes the merged JSON, whose
ratios and utilisations are the figures' own."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "whisper_finetuning/profiling/gpu_benchmark.sh"


def test_the_script_is_valid_bash():
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def run_script(out, options, **env):
    """The script writing into ``out`` from outside the repository (it finds the repository from
    its own path), with this Python and ``env``'s variables only."""
    done = subprocess.run(
        ["bash", str(SCRIPT), str(out), *options],
        capture_output=True,
        text=True,
        timeout=900,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}
        | {k: str(v) for k, v in env.items()},
        cwd="/",
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory, tiny_en_dir):
    """The script run once without a GPU, with the DDP scaling asked for and the FSDP checks
    reading tiny.en's tokenizer: (its output folder, the merged JSON)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the script would run the real shapes")
    out = tmp_path_factory.mktemp("gpu_benchmark")
    run_script(
        out, ["--steps", "2", "--ddp", "2"], SHAPE_SECONDS="800", TOKENIZER_SOURCE=tiny_en_dir
    )
    return out, json.loads((out / "gpu_benchmark.json").read_text())


@pytest.mark.slow
def test_without_a_gpu_it_runs_the_test_shape_on_cpu_and_writes_one_json(cpu_run):
    out, report = cpu_run
    assert report["timed_out"] == [] and report["device"] == "cpu"
    assert {"recipe", "baseline", "speechbrain"} <= set(report["test"])
    text = (out / "gpu_benchmark.txt").read_text()
    assert "no CUDA GPU" in text and "speechbrain" in text


@pytest.mark.slow
def test_the_device_section_reports_its_ratios(cpu_run):
    out, report = cpu_run
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
    assert "train utterances/s" in (out / "gpu_benchmark.txt").read_text()


@pytest.mark.slow
def test_ddp_scaling_runs_two_gloo_processes(cpu_run):
    out, report = cpu_run
    scaling = report["test"]["ddp"]
    assert scaling["processes"] == 2
    assert scaling["scaling_efficiency"] == pytest.approx(
        scaling["utterances_per_second"] / (2 * scaling["one_process_utterances_per_second"])
    )
    assert "scaling efficiency" in (out / "gpu_benchmark.txt").read_text()


@pytest.mark.slow
def test_the_fsdp_checks_run_and_their_report_is_merged(cpu_run):
    out, report = cpu_run
    fsdp = report["fsdp"]
    assert fsdp == json.loads((out / "fsdp" / "fsdp_check.json").read_text())
    assert (fsdp["processes"], fsdp["backend"], fsdp["passed"]) == (2, "gloo", True)
    assert fsdp["fp32"]["max_difference_vs_one_process"] < fsdp["tolerance"]
    assert fsdp["fp32"]["resumed_step_max_difference"] == 0.0 and "bf16" not in fsdp
    assert "fsdp 2 x gloo, fp32" in (out / "gpu_benchmark.txt").read_text()


def test_without_a_tokenizer_the_fsdp_checks_are_skipped_and_said_so(tmp_path):
    """Only the FSDP part runs (no shapes): the JSON's fsdp is null and the text says why."""
    run_script(tmp_path, [], SHAPES="", TOKENIZER_SOURCE=tmp_path / "nowhere")
    report = json.loads((tmp_path / "gpu_benchmark.json").read_text())
    assert report == {"timed_out": [], "fsdp": None}
    text = (tmp_path / "gpu_benchmark.txt").read_text()
    assert "FSDP checks skipped: no Whisper tokenizer at" in text
