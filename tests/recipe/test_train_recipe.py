"""train.py end to end on espeak-ng speech with a tiny random Whisper: schedule, checkpoint
selection, test outputs, resuming, and one-line errors."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from conftest import read_jsonl, require_espeak

EPOCHS, LR, WARMUP = 2, 0.002, 4
TRAIN_UTTERANCES, BATCH, ACCUMULATION = 12, 2, 2
# float16 cache entries, and the steps trained on them, move a valid loss by ~1e-6 (measured).
WINDOW_CACHE_TOLERANCE = 1e-3


def run_train(*args):
    """Run the recipe as a user would; returns the completed process."""
    return subprocess.run(
        [sys.executable, "train.py", *map(str, args)], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory, random_whisper_dir):
    """One 2-epoch run on 6 train sentences x 2 voices; returns its arguments and folder."""
    require_espeak()
    root = tmp_path_factory.mktemp("recipe")
    args = [
        "hparams/whisper_small.yaml",
        f"--whisper_hub={random_whisper_dir}",
        f"--data_folder={root / 'data'}",
        f"--output_folder={root / 'exp'}",
        "--dataset=accent_corpus",
        "--prep_options={n_train_sentences: 6, n_valid_sentences: 2, n_test_sentences: 2, "
        "voices: [en-us, en-gb-scotland]}",
        f"--number_of_epochs={EPOCHS}",
        f"--batch_size={BATCH}",
        f"--grad_accumulation_factor={ACCUMULATION}",
        f"--lr={LR}",
        f"--warmup_steps={WARMUP}",
        "--decode_max_tokens=8",
        "--test_beam_size=2",
        "--num_workers=0",
        "--freeze_encoder=False",
        "--encoder_cache=false",
        "--ckpt_interval_minutes=0",
        "--ckpt_interval_steps=2",  # intra-epoch checkpoints, which must not survive
        "--tensorboard=True",
    ]
    done = run_train(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    return args, root / "exp"


def noam(step):
    """SpeechBrain's Noam schedule, normalised to peak at ``LR`` after the warmup."""
    return LR * math.sqrt(WARMUP) * min(step**-0.5, step * WARMUP**-1.5)


def test_noam_steps_once_per_optimizer_step(run):
    _, exp = run
    epochs = read_jsonl(exp / "epochs.jsonl")
    steps_per_epoch = TRAIN_UTTERANCES // BATCH // ACCUMULATION
    assert [e["optimizer_steps"] for e in epochs] == [steps_per_epoch * (i + 1) for i in range(2)]
    for record in epochs:
        assert record["lr"] == pytest.approx(noam(record["optimizer_steps"]), rel=1e-9)


def test_exactly_one_checkpoint_left_and_it_is_the_min_wer_epoch(run):
    _, exp = run
    checkpoints = sorted((exp / "save").glob("CKPT+*"))
    assert len(checkpoints) == 1
    meta = (checkpoints[0] / "CKPT.yaml").read_text()
    epochs = read_jsonl(exp / "epochs.jsonl")
    best = min(epochs, key=lambda e: (e["WER"], e["epoch"]))
    assert f"epoch: {best['epoch']}" in meta
    assert f"WER: {best['WER']}" in meta
    for key in ("loss:", "CER:"):
        assert key in meta


def test_test_summary_matches_its_alignments(run):
    _, exp = run
    summary = json.loads((exp / "summary_test.json").read_text())
    epochs = read_jsonl(exp / "epochs.jsonl")
    assert summary["epoch"] == min(epochs, key=lambda e: (e["WER"], e["epoch"]))["epoch"]
    assert summary["n_utterances"] == 4
    utterances = read_jsonl(exp / "utterances_test.jsonl")
    errors = sum(u["word_errors"] for u in utterances)
    words = sum(u["words"] for u in utterances)
    assert summary["wer"] == pytest.approx(100 * errors / words)
    headline = (exp / "wer_test.txt").read_text().splitlines()[0]
    assert headline.startswith(f"%WER {summary['wer']:.2f} [ {errors} / {words},")
    assert set(summary["per_group"]["dialect"]) == {"en-us", "en-gb-scotland"}


def test_rerunning_the_same_command_resumes_instead_of_retraining(run):
    args, exp = run
    before = sorted(p.name for p in (exp / "save").glob("CKPT+*"))
    done = run_train(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(read_jsonl(exp / "epochs.jsonl")) == EPOCHS  # no epoch trained again
    assert sorted(p.name for p in (exp / "save").glob("CKPT+*")) == before


def test_augmentation_and_bf16_train_with_the_cache_serving_evaluation(run, tmp_path):
    args, exp = run
    replaced = ("--freeze_encoder", "--encoder_cache", "--output_folder", "--number_of_epochs")
    cached_args = [a for a in args if not a.startswith(replaced)]
    done = run_train(
        *cached_args,
        f"--output_folder={tmp_path / 'aug'}",
        "--number_of_epochs=1",
        "--augment=True",
        "--precision=bf16",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    log = (tmp_path / "aug" / "log.txt").read_text()
    assert "encoder cache off for training: waveform augmentation" in log
    # Valid and test sets read cached encoder outputs: 4 + 4 utterances were encoded once.
    assert len(list((tmp_path / "aug" / "encoder_cache").rglob("*.npy"))) == 8
    assert json.loads((tmp_path / "aug" / "summary_test.json").read_text())["epoch"] == 1


def test_multilingual_checkpoint_trains_with_language_and_task_prompt(
    run, tmp_path, random_multilingual_dir
):
    args, _ = run
    replaced = ("--whisper_hub", "--output_folder", "--number_of_epochs")
    base_args = [a for a in args if not a.startswith(replaced)]
    out = tmp_path / "multi"
    common = [*base_args, f"--whisper_hub={random_multilingual_dir}", "--number_of_epochs=1"]
    # The accent corpus names each row's language (english): no --language is needed, and
    # every row is prompted, grouped and normalised as English.
    done = run_train(*common, f"--output_folder={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_jsonl(out / "epochs.jsonl")[0]["optimizer_steps"] == 3
    summary = json.loads((out / "summary_test.json").read_text())
    assert list(summary["per_group"]["language"]) == ["english"]
    assert summary["normalizer"] == {"english": "english"}


def test_dynamic_batches_stay_within_their_duration_bound_and_reshuffle(run, random_whisper_dir):
    from recipe_runs import prepared

    from whisper_finetuning.training.config import load_hparams

    args, exp = run
    bound = 7.0
    overrides = {
        "whisper_hub": str(random_whisper_dir),
        "data_folder": next(a.split("=", 1)[1] for a in args if a.startswith("--data_folder")),
        "output_folder": str(exp),
        "skip_prep": True,
        "dynamic_batching": True,
        "dynamic_batch_sampler": {
            "max_batch_length": bound,
            "num_buckets": 2,
            "shuffle": True,
            "batch_ordering": "random",
        },
    }
    hparams, _ = load_hparams("hparams/whisper_small.yaml", overrides)
    datasets, loader_kwargs = prepared(hparams)
    sampler = loader_kwargs["batch_sampler"]
    durations = {
        i: float(datasets["train"].data[u]["duration"])
        for i, u in enumerate(datasets["train"].data_ids)
    }
    orders = []
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert all(sum(durations[i] for i in batch) <= bound for batch in batches)
        assert sorted(i for batch in batches for i in batch) == sorted(durations)
        assert any(len(batch) > 1 for batch in batches)
        orders.append(batches)
    assert orders[0] != orders[1]


def test_zero_shot_results_are_reused_only_for_the_same_model_and_utterances(tmp_path):
    from whisper_finetuning.training.runs import _decoded_already

    (tmp_path / "summary_test.json").write_text(json.dumps({"model": "m1", "n_utterances": 3}))
    assert _decoded_already(tmp_path, "test", {"whisper_hub": "m1"}, 3)
    assert not _decoded_already(tmp_path, "test", {"whisper_hub": "m2"}, 3)
    assert not _decoded_already(tmp_path, "test", {"whisper_hub": "m1"}, 2)
    assert not _decoded_already(tmp_path, "other", {"whisper_hub": "m1"}, 3)
    # Rows with no reference word and non-speech rows were decoded too.
    summary = {"model": "m1", "n_utterances": 3, "n_unscorable": 1, "nonspeech": {"n": 2}}
    (tmp_path / "summary_test.json").write_text(json.dumps(summary))
    assert _decoded_already(tmp_path, "test", {"whisper_hub": "m1"}, 6)
    assert not _decoded_already(tmp_path, "test", {"whisper_hub": "m1"}, 3)


def read_manifest(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_info_points_the_analysis_tools_at_the_data(run):
    args, exp = run
    info = json.loads((exp / "run.json").read_text())
    assert info["valid_csv"] == str(exp / "manifests" / "valid.csv")
    assert info["test_csv"] == [str(exp / "manifests" / "test.csv")]
    assert info["data_folder"] == next(a.split("=", 1)[1] for a in args if "data_folder" in a)
    assert (info["batch_size"], info["grad_accumulation_factor"]) == (BATCH, ACCUMULATION)
    assert (info["sorting"], info["augment"], info["dynamic_batching"]) == ("random", False, False)


def test_every_optimizer_step_is_logged_with_its_raw_loss_rate_tokens_and_audio(
    run, random_whisper_dir
):
    from whisper_finetuning.model.asr import WhisperASR

    _, exp = run
    steps = read_jsonl(exp / "log" / "steps.jsonl")
    per_epoch = TRAIN_UTTERANCES // BATCH // ACCUMULATION
    assert [s["step"] for s in steps] == list(range(1, per_epoch * EPOCHS + 1))
    assert [s["epoch_step"] for s in steps] == list(range(1, per_epoch + 1)) * EPOCHS
    assert [s["epoch"] for s in steps] == [1] * per_epoch + [2] * per_epoch
    assert [s["position"] for s in steps[:per_epoch]] == [
        pytest.approx((i + 1) / per_epoch) for i in range(per_epoch)
    ]
    for record in steps:
        assert record["lr"] == pytest.approx(noam(record["step"]), rel=1e-9)
        assert record["utterances"] == BATCH * ACCUMULATION
        assert record["loss"] > 0 and record["augmented"] is False
    # Each epoch's steps cover every training utterance's tokens (+ end of text) and audio.
    whisper = WhisperASR(source=str(random_whisper_dir))
    rows = read_manifest(exp / "manifests" / "train.csv")
    tokens = sum(len(whisper.encode_text(r["wrd"])) + 1 for r in rows)
    seconds = sum(float(r["duration"]) for r in rows)
    for epoch in (1, 2):
        epoch_steps = [s for s in steps if s["epoch"] == epoch]
        assert sum(s["tokens"] for s in epoch_steps) == tokens
        assert sum(s["audio_seconds"] for s in epoch_steps) == pytest.approx(seconds)
    # The logged epoch mean is the mean of the raw batch losses, not a running display value.
    train_loss = read_jsonl(exp / "epochs.jsonl")[0]["train_loss"]
    assert train_loss == pytest.approx(sum(s["loss"] for s in steps[:per_epoch]) / per_epoch)


def test_every_training_utterance_is_logged_once_per_epoch(run):
    _, exp = run
    records = read_jsonl(exp / "log" / "train_utterances.jsonl")
    rows = {r["ID"]: r["wrd"] for r in read_manifest(exp / "manifests" / "train.csv")}
    for epoch in (1, 2):
        visits = [r for r in records if r["epoch"] == epoch]
        assert sorted(r["id"] for r in visits) == sorted(rows)
        assert all(r["seen"] == epoch for r in visits)
        assert all(r["ref"] == rows[r["id"]] and isinstance(r["hyp"], str) for r in visits)
        assert all(r["loss"] > 0 and 0 <= r["token_accuracy"] <= 1 for r in visits)


def test_valid_epochs_log_calibration_and_per_utterance_losses(run):
    _, exp = run
    for epoch in read_jsonl(exp / "epochs.jsonl"):
        utterances = read_jsonl(exp / "valid" / f"utterances_epoch{epoch['epoch']}.jsonl")
        assert epoch["n_valid"] == len(utterances) == 4
        tokens = sum(u["tokens"] for u in utterances)
        assert epoch["nll"] == pytest.approx(
            sum(u["loss"] * u["tokens"] for u in utterances) / tokens
        )
        assert 0 <= epoch["token_accuracy"] <= 1 and 0 <= epoch["ece"] <= 1
        assert 0 < epoch["entropy"] <= math.log(51864)


def test_tensorboard_holds_the_logged_step_and_epoch_scalars(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, exp = run
    events = EventAccumulator(str(exp / "log" / "tensorboard"))
    events.Reload()
    steps = read_jsonl(exp / "log" / "steps.jsonl")
    logged = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert logged == [(s["step"], pytest.approx(s["loss"], rel=1e-6)) for s in steps]
    epochs = read_jsonl(exp / "epochs.jsonl")
    wers = [(e.step, e.value) for e in events.Scalars("epoch/WER")]
    assert wers == [(e["epoch"], pytest.approx(e["WER"], rel=1e-6)) for e in epochs]


def test_the_run_ends_with_its_diagnosis(run):
    _, exp = run
    diagnosis = json.loads((exp / "diagnostics" / "diagnostics.json").read_text())
    epochs = read_jsonl(exp / "epochs.jsonl")
    assert diagnosis["best_wer_epoch"] == min(epochs, key=lambda e: (e["WER"], e["epoch"]))["epoch"]
    assert (
        diagnosis["best_loss_epoch"] == min(epochs, key=lambda e: (e["loss"], e["epoch"]))["epoch"]
    )
    assert diagnosis["verdict"] and (exp / "diagnostics" / "report.md").exists()


def test_review_checkpoints_keep_min_wer_min_loss_and_last_for_export(run, tmp_path, capsys):
    import yaml

    from whisper_finetuning import export_hf

    args, _ = run
    replaced = ("--output_folder", "--number_of_epochs")
    out = tmp_path / "review"
    kept_args = [a for a in args if not a.startswith(replaced)]
    done = run_train(
        *kept_args, f"--output_folder={out}", "--number_of_epochs=3", "--review_checkpoints=True"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    epochs = read_jsonl(out / "epochs.jsonl")
    min_wer = min(epochs, key=lambda e: (e["WER"], e["epoch"]))["epoch"]
    min_loss = min(epochs, key=lambda e: (e["loss"], e["epoch"]))["epoch"]
    kept = {
        yaml.safe_load((ckpt / "CKPT.yaml").read_text())["epoch"]
        for ckpt in (out / "save").glob("CKPT+*")
    }
    assert kept == {min_wer, min_loss, 3}
    assert json.loads((out / "summary_test.json").read_text())["epoch"] == min_wer
    assert export_hf.main([str(out), str(tmp_path / "last"), "--epoch", "3"]) == 0
    selected = json.loads((tmp_path / "last" / "selected_checkpoint.json").read_text())
    assert selected["epoch"] == 3
    assert export_hf.main([str(out), str(tmp_path / "none"), "--epoch", "7"]) == 1
    assert f"no checkpoint of epoch 7 in {out / 'save'} (kept: {sorted(kept)})" in (
        capsys.readouterr().err
    )


def test_clips_needing_different_windows_train_alike_from_the_cache_and_the_audio(run, tmp_path):
    """A 1 s window step gives these 1.5-4 s clips windows of 2, 3 or 4 s, mixed in batches."""
    args, _ = run
    replaced = ("--freeze_encoder", "--encoder_cache", "--output_folder", "--number_of_epochs")
    base = [a for a in args if not a.startswith(replaced)]
    losses = {}
    for cache in ("true", "false"):
        done = run_train(
            *base,
            f"--output_folder={tmp_path / cache}",
            "--number_of_epochs=1",
            "--encoder_window_seconds=1",
            f"--encoder_cache={cache}",
        )
        assert done.returncode == 0, done.stderr[-3000:]
        utterances = read_jsonl(tmp_path / cache / "valid" / "utterances_epoch1.jsonl")
        losses[cache] = {u["id"]: u["loss"] for u in utterances}
    frames = {
        np.load(path, mmap_mode="r").shape[0]
        for path in (tmp_path / "true" / "encoder_cache").rglob("*.npy")
    }
    assert len(frames) > 1
    assert losses["true"].keys() == losses["false"].keys()
    for utt_id, loss in losses["false"].items():
        assert losses["true"][utt_id] == pytest.approx(loss, abs=WINDOW_CACHE_TOLERANCE)


def test_a_batch_mixing_windows_decodes_each_row_as_it_would_alone(run):
    """Per-window encoding, decoding and search, put back in order, equal batches of one."""
    import speechbrain as sb
    import torch
    import yaml
    from recipe_runs import make_brain, prepared
    from speechbrain.dataio.batch import PaddedBatch

    from whisper_finetuning.training.config import load_hparams

    args, exp = run
    overrides = {a[2:].split("=", 1)[0]: yaml.safe_load(a.split("=", 1)[1]) for a in args[1:]}
    overrides["encoder_window_seconds"] = 1
    hparams, _ = load_hparams(args[0], overrides)
    whisper = hparams["whisper"]
    datasets, _ = prepared(hparams)
    items = [dict(item) for name in ("valid", "test") for item in datasets[name]]
    batch = PaddedBatch(items)
    wav_lens = torch.round(batch.sig[1] * batch.sig[0].shape[1]).long().tolist()
    assert len(whisper.window_groups(wav_lens)) > 1
    brain = make_brain({**hparams, "output_folder": str(exp)}, checkpointer=None)
    brain.modules.eval()
    for stage in (sb.Stage.VALID, sb.Stage.TEST):
        with torch.no_grad():
            log_probs, (hyps, looped) = brain.compute_forward(batch, stage)
            for row, item in enumerate(items):
                alone, (alone_hyps, alone_looped) = brain.compute_forward(
                    PaddedBatch([item]), stage
                )
                length = alone.shape[1]
                torch.testing.assert_close(log_probs[row, :length], alone[0], atol=1e-4, rtol=0)
                assert (hyps[row], looped[row]) == (alone_hyps[0], alone_looped[0])
