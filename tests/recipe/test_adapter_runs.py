"""A LoRA run of the recipe with checkpoint averaging: only adapters in its checkpoint, the
two best epochs averaged and kept only if better, exact resume after a kill. Tiny random
Whisper, espeak-ng speech."""

import json

import pytest
import torch
import yaml
from conftest import read_jsonl
from recipe_runs import killed, make_corpus, recipe_args, run_forked
from test_faults import assert_same_final_state, checkpoints

from whisper_finetuning.training.checkpointing import CRASH_ENV

# Dropout in the adapters draws random numbers: a resumed run must restore them exactly.
LORA = [
    "--adapter=lora",
    "--lora_rank=4",
    "--lora_alpha=8",
    "--lora_dropout=0.1",
    "--average_checkpoints=2",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("encoder_cache")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, random_whisper_dir, corpus, cache):
    """An uninterrupted LoRA run of 2 epochs."""
    exp = tmp_path_factory.mktemp("lora") / "exp"
    code, stderr = run_forked(recipe_args(random_whisper_dir, corpus, exp, cache) + LORA)
    assert code == 0, stderr[-3000:]
    return exp


@pytest.mark.slow
def test_lora_run_keeps_only_adapters_and_the_better_of_average_and_best_epoch(lora_run):
    (kept,) = checkpoints(lora_run)
    weights = torch.load(kept / "whisper.ckpt", weights_only=True)
    # 2 decoder layers x 8 attention projections x (A, B), nothing else
    assert len(weights) == 32 and all(".lora_" in name for name in weights)
    assert any(
        name.endswith("lora_B.default.weight") and w.abs().sum() > 0 for name, w in weights.items()
    )
    epochs = read_jsonl(lora_run / "epochs.jsonl")
    best = min(epochs, key=lambda e: (e["WER"], e["epoch"]))
    record = json.loads((lora_run / "averaging.json").read_text())
    averaged = json.loads((lora_run / "valid/summary_averaged.json").read_text())
    assert record["best_epoch"] == best["epoch"] and record["best_epoch_wer"] == best["WER"]
    assert sorted(record["averaged_epochs"]) == [1, 2]
    assert record["averaged_wer"] == averaged["wer"]
    assert averaged["n_utterances"] == 5
    meta = yaml.safe_load((kept / "CKPT.yaml").read_text())
    if averaged["wer"] < best["WER"]:
        assert record["kept"] == "averaged" and meta["WER"] == averaged["wer"]
        assert meta["averaged_epochs"] == record["averaged_epochs"]
    else:
        assert record["kept"] == f"epoch {best['epoch']}" and meta["epoch"] == best["epoch"]
        assert "averaged_epochs" not in meta and meta["WER"] == best["WER"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "crash_at",
    [
        "train_batch:6",  # epoch 2, batch 2: adapter dropout's random state is restored
        "valid_batch:7",  # scoring the average: epochs 1 and 2 took 3 valid batches each
    ],
)
def test_lora_run_killed_and_rerun_ends_as_the_uninterrupted_one(
    crash_at, lora_run, random_whisper_dir, corpus, cache, tmp_path
):
    args = recipe_args(random_whisper_dir, corpus, tmp_path / "exp", cache) + LORA
    code, stderr = run_forked(args, env={CRASH_ENV: crash_at})
    assert killed(code), (code, stderr[-3000:])
    code, stderr = run_forked(args)
    assert code == 0, stderr[-3000:]
    assert_same_final_state(tmp_path / "exp", lora_run)
    assert (tmp_path / "exp/averaging.json").read_text() == (
        lora_run / "averaging.json"
    ).read_text()
