"""The benchmark script end to end on a few utterances: it runs, and its JSON keeps its keys."""

import json
import subprocess
import sys

import pytest
from conftest import require_espeak

CONTRACT_KEYS = {
    "train_throughput_ratio",
    "valid_decode_ratio",
    "peak_rss_ratio",
    "wer_recipe",
    "wer_baseline",
}


@pytest.mark.slow
def test_benchmark_runs_both_systems_and_writes_its_ratios(tiny_en_dir, tmp_path):
    require_espeak()
    report_file = tmp_path / "benchmark.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.benchmark",
            f"--data_folder={tmp_path / 'corpus'}",
            f"--model_folder={tiny_en_dir.parent}",
            "--epochs=1",
            "--train_utterances=8",
            "--valid_utterances=4",
            "--batch_size=4",
            "--encoder_window_seconds=10",
            f"--json={report_file}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(report_file.read_text())
    assert CONTRACT_KEYS <= set(report)
    recipe, baseline = report["recipe"], report["baseline"]
    for figure, ratio in (
        ("train_audio_seconds_per_second", "train_throughput_ratio"),
        ("valid_utterances_per_second", "valid_decode_ratio"),
        ("peak_rss_mb", "peak_rss_ratio"),
    ):
        assert recipe[figure] > 0 and baseline[figure] > 0
        assert report[ratio] == pytest.approx(recipe[figure] / baseline[figure])
    assert (report["wer_recipe"], report["wer_baseline"]) == (recipe["wer"], baseline["wer"])
    for system in (recipe, baseline):
        lo, hi = system["wer_ci95"]
        assert 0 <= lo <= system["wer"] <= hi <= 100
    # Two updates at lr 1e-5 leave tiny.en as it was: both systems hear the 4 utterances well.
    assert report["wer_recipe"] < 25 and report["wer_baseline"] < 25
    assert baseline["loop_stopped"] == 0 and recipe["loop_stopped"] in range(5)
    assert "valid decode utterances/s" in done.stdout
