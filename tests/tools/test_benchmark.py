"""The benchmark script end to end on a few utterances: it runs, and its JSON keeps its keys."""

import json
import subprocess
import sys

import pytest
from conftest import require_espeak, sine, write_manifest

CONTRACT_KEYS = {
    "train_throughput_ratio",
    "valid_decode_ratio",
    "peak_rss_ratio",
    "wer_recipe",
    "wer_baseline",
}


@pytest.mark.slow
def test_benchmark_runs_the_recipe_and_both_baselines_and_writes_its_ratios(tiny_en_dir, tmp_path):
    require_espeak()
    report_file = tmp_path / "benchmark.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "whisper_finetuning.benchmark",
            f"--data_folder={tmp_path / 'corpus'}",
            f"--model_folder={tiny_en_dir.parent}",
            "--epochs=1",
            "--train_utterances=8",
            "--valid_utterances=4",
            "--batch_size=4",
            "--encoder_window_seconds=10",
            "--systems",
            "recipe_warm_cache",
            "baseline",
            "speechbrain",
            f"--json={report_file}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(report_file.read_text())
    assert CONTRACT_KEYS <= set(report)
    recipe, baseline, speechbrain = (report[s] for s in ("recipe", "baseline", "speechbrain"))
    for figures, suffix in ((baseline, ""), (speechbrain, "_speechbrain")):
        for figure, ratio in (
            ("train_audio_seconds_per_second", "train_throughput_ratio"),
            ("valid_utterances_per_second", "valid_decode_ratio"),
            ("peak_rss_mb", "peak_rss_ratio"),
        ):
            assert recipe[figure] > 0 and figures[figure] > 0
            assert report[ratio + suffix] == pytest.approx(recipe[figure] / figures[figure])
    for name in ("recipe", "baseline", "speechbrain"):
        assert report["wer_" + name] == report[name]["wer"]
        lo, hi = report[name]["wer_ci95"]
        assert 0 <= lo <= report[name]["wer"] <= hi <= 100
    # Two updates at lr 1e-5 leave tiny.en as it was: all three hear the 4 utterances well.
    assert max(recipe["wer"], baseline["wer"], speechbrain["wer"]) < 25
    assert baseline["loop_stopped"] == 0 and recipe["loop_stopped"] in range(5)
    assert "valid decode utterances/s" in done.stdout
    # FLOP counts: the baseline runs the 30 s encoder on every step, the cold recipe encodes
    # each utterance once (10 s window), the warm one not at all; utilisation against the probe
    warm = report["recipe_warm_cache"]
    for figures, suffix in ((baseline, ""), (speechbrain, "_speechbrain")):
        for figure, ratio in (
            ("train_audio_seconds_per_second", "train_throughput_ratio_warm_cache"),
            ("valid_utterances_per_second", "valid_decode_ratio_warm_cache"),
        ):
            assert report[ratio + suffix] == pytest.approx(warm[figure] / figures[figure])
    assert "valid decoding from the cache" in done.stdout
    assert baseline["train_flops"] > recipe["train_flops"] > warm["train_flops"] > 0
    # SpeechBrain's recipe encodes 30 s and projects every position, as Seq2SeqTrainer does
    assert speechbrain["train_flops"] == baseline["train_flops"]
    assert report["matmul_peak_flops"] > 0
    for system in (recipe, warm, baseline, speechbrain):
        assert system["train_flops_per_second"] == pytest.approx(
            system["train_flops"] / system["train_seconds"]
        )
        assert system["flop_utilisation"] == pytest.approx(
            system["train_flops_per_second"] / report["matmul_peak_flops"]
        )
    assert "GFLOP/s" in done.stdout
    # what had to be fixed to run SpeechBrain's recipe, and what was kept as shipped
    assert {"fp16 on CPU", "Noam scheduler"} <= set(report["speechbrain_fixes"])
    assert "30 s padding" in report["speechbrain_kept"]
    assert "vs SpeechBrain" in done.stdout and "vs Seq2SeqTrainer" in done.stdout


def test_training_flops_follow_each_systems_encoder_runs_windows_and_projection(
    tiny_en_dir, tmp_path
):
    """Two train clips (3 s, 12 s), one valid clip, 2 epochs, the recipe at a 10 s step."""
    from types import SimpleNamespace

    from transformers import WhisperConfig

    from whisper_finetuning.benchmark import training_flops
    from whisper_finetuning.profiling import flops

    header = "ID,duration,wav,wrd\n"
    (tmp_path / "train.csv").write_text(header + "a,3.0,a.wav,hello world\nb,12.0,b.wav,hello\n")
    (tmp_path / "valid.csv").write_text(header + "c,4.0,c.wav,hello\n")
    args = SimpleNamespace(epochs=2, encoder_window_seconds=10)
    config = WhisperConfig.from_pretrained(tiny_en_dir)

    def count(system):
        return training_flops(args, tmp_path, str(tiny_en_dir), system)

    step = flops.decoder_training_step
    # decoder inputs: <|startoftranscript|><|notimestamps|> + 2 or 1 text tokens
    baseline_epoch = 2 * flops.encoder_forward(config, 30) + step(config, 4, 1500, 4)
    baseline_epoch += step(config, 3, 1500, 3)
    assert count("baseline") == 2 * baseline_epoch
    # 10 s and 20 s windows; under 64 positions the cross-attention is absorbed
    warm_epoch = step(config, 4, 500, 3, "absorbed") + step(config, 3, 1000, 2, "absorbed")
    assert count("recipe_warm_cache") == 2 * warm_epoch
    encoded = sum(flops.encoder_forward(config, seconds) for seconds in (10, 20))
    assert count("recipe") == 2 * warm_epoch + encoded  # the valid clip's pass is decoding's


def test_the_valid_sets_encoder_pass_is_timed_apart_from_training(random_whisper_dir, tmp_path):
    """``encode_valid_set`` leaves the cache holding every valid utterance, so the recipe's
    data preparation inside the training timer computes none of them."""
    from whisper_finetuning.benchmark import encode_valid_set
    from whisper_finetuning.data import manifests
    from whisper_finetuning.data.encoder_cache import EncoderCache
    from whisper_finetuning.model.asr import WhisperASR

    for name in ("a", "b"):
        sine(tmp_path / f"{name}.wav", seconds=1.5)
    write_manifest(
        tmp_path / "valid.csv",
        [
            {"ID": name, "duration": "1.5", "wav": f"$data_root/{name}.wav", "wrd": "hi"}
            for name in ("a", "b")
        ],
        columns=("ID", "duration", "wav", "wrd"),
    )
    hparams = {
        "valid_csv": str(tmp_path / "valid.csv"),
        "data_folder": str(tmp_path),
        "encoder_cache_folder": str(tmp_path / "cache"),
    }
    whisper = WhisperASR(str(random_whisper_dir), window_seconds=10).eval()
    assert encode_valid_set(hparams, whisper) > 0
    cache = EncoderCache(hparams["encoder_cache_folder"], whisper)
    cache._compute = lambda *args: pytest.fail(f"the recipe would encode {args[0]} again")
    entries = cache.prepare(manifests.load_manifest(hparams["valid_csv"], tmp_path))
    assert sorted(entries) == ["a", "b"] and all(path.exists() for path in entries.values())


def test_the_recipes_decoding_time_includes_the_valid_sets_encoder_pass(
    random_whisper_dir, tmp_path, monkeypatch
):
    """``run_recipe`` charges ``encode_valid_set``'s seconds to decoding, not to training."""
    from whisper_finetuning import benchmark

    rows = []
    for name in ("a", "b", "c"):
        sine(tmp_path / f"{name}.wav", seconds=1.5)
        rows.append({"ID": name, "duration": "1.5", "wav": f"$data_root/{name}.wav", "wrd": "hi"})
    columns = ("ID", "duration", "wav", "wrd")
    write_manifest(tmp_path / "train.csv", rows[:2], columns=columns)
    write_manifest(tmp_path / "valid.csv", rows[2:], columns=columns)
    encoder_seconds = 1000.0  # longer than the whole run takes: only it can reach the figure
    monkeypatch.setattr(benchmark, "encode_valid_set", lambda hparams, whisper: encoder_seconds)
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # run_recipe sets SpeechBrain's own
    args = benchmark.parse_args(
        ["--epochs=1", "--batch_size=2", f"--data_folder={tmp_path}", "--encoder_window_seconds=10"]
    )
    train_seconds, valid_seconds, summary = benchmark.run_recipe(
        args, tmp_path, str(random_whisper_dir)
    )
    assert summary["n_utterances"] == 1
    assert train_seconds < encoder_seconds < valid_seconds < encoder_seconds + train_seconds + 60


def test_repeats_run_every_system_on_a_fresh_folder_and_report_medians(
    tmp_path, monkeypatch, capsys
):
    """Three repeats with faked system runs: each repeat prepares its own work folder, every
    second one runs the baselines first, and the report's figures and ratios are the medians
    of the repeats' (each repeat's ratios its own systems' side by side)."""
    from types import SimpleNamespace

    from whisper_finetuning import benchmark
    from whisper_finetuning.profiling import flops

    # (recipe, baseline) training audio-s/s per repeat: ratios 4, 5 and 8, median 5
    throughput = {"recipe": [40.0, 60.0, 64.0], "baseline": [10.0, 12.0, 8.0]}
    peaks = iter([100.0, 300.0, 200.0])
    runs = []

    def fake_run(command, **kwargs):
        system = command[-2].removeprefix("--system=")
        work = command[-1].removeprefix("--work_folder=")
        runs.append((system, work))
        repeat = sum(1 for s, _ in runs if s == system) - 1
        figures = {
            "train_audio_seconds_per_second": throughput[system][repeat],
            "train_seconds": 10.0,
            "train_flops": 1000.0 * (repeat + 1),
            "train_flops_per_second": 100.0 * (repeat + 1),
            "valid_utterances_per_second": 2.0,
            "peak_rss_mb": 500.0 if system == "recipe" else 1000.0,
            "wer": 20.0 + repeat,
            "wer_ci95": [15.0 + repeat, 25.0 + repeat],
            "loop_stopped": 0,
        }
        return SimpleNamespace(returncode=0, stdout=benchmark.RESULT_PREFIX + json.dumps(figures))

    monkeypatch.setattr(benchmark.subprocess, "run", fake_run)
    monkeypatch.setattr(flops, "matmul_peak", lambda: next(peaks))
    monkeypatch.setattr(benchmark, "prepare_subsets", lambda args, work: str(tmp_path))
    report_file = tmp_path / "report.json"
    argv = ["--systems", "baseline", "--repeats=3", f"--json={report_file}"]
    assert benchmark.main(argv) == 0

    order = ["recipe", "baseline", "baseline", "recipe", "recipe", "baseline"]
    assert [system for system, _ in runs] == order
    folders = [work for _, work in runs]
    assert folders[0] == folders[1] and folders[2] == folders[3] and folders[4] == folders[5]
    assert len({folders[0], folders[2], folders[4]}) == 3
    report = json.loads(report_file.read_text())
    assert [r["train_throughput_ratio"] for r in report["repeats"]] == [4.0, 5.0, 8.0]
    assert report["train_throughput_ratio"] == 5.0  # the median ratio, not 60 / 10
    assert report["recipe"]["train_audio_seconds_per_second"] == 60.0
    assert report["baseline"]["train_audio_seconds_per_second"] == 10.0
    assert report["matmul_peak_flops"] == 200.0
    # utilisation per repeat against that repeat's probe: 100/100, 200/300, 300/200
    utilisations = [r["recipe"]["flop_utilisation"] for r in report["repeats"]]
    assert utilisations == pytest.approx([1.0, 2 / 3, 1.5])
    assert report["recipe"]["flop_utilisation"] == pytest.approx(1.0)
    assert report["recipe"]["wer_ci95"] == [16.0, 26.0] and report["wer_recipe"] == 21.0
    assert report["peak_rss_ratio"] == 0.5
    out = capsys.readouterr().out
    assert "over 3 repeats" in out and "5.000  (4.000-8.000)" in out


def test_repeats_below_one_are_an_error():
    from whisper_finetuning import benchmark

    with pytest.raises(SystemExit, match="error: --repeats must be at least 1, not 0"):
        benchmark.main(["--repeats=0"])
