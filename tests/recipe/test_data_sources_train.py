"""train.py prepares and trains from a Hugging Face dataset, Lhotse cuts and tar shards exactly as
from the same audio files: bit-identical weights after one epoch; a missing split is one line."""

import json

import pytest
import torch
import yaml
from conftest import read_jsonl
from data_sources import build_sources, make_corpus
from recipe_runs import killed, one_line_error, run_forked

from whisper_finetuning.data.prepare import prepare
from whisper_finetuning.training.checkpointing import CRASH_ENV


def train_args(whisper_dir, dataset, data_folder, output, extra=()):
    """One epoch on the corpus, reading audio in every batch (no encoder cache)."""
    return [
        "hparams/whisper_small.yaml",
        f"--whisper_hub={whisper_dir}",
        f"--dataset={dataset}",
        f"--data_folder={data_folder}",
        f"--output_folder={output}",
        "--number_of_epochs=1",
        "--batch_size=2",
        "--test_batch_size=2",
        "--grad_accumulation_factor=1",
        "--lr=0.002",
        "--warmup_steps=2",
        "--decode_max_tokens=6",
        "--test_beam_size=2",
        "--num_workers=0",
        "--encoder_cache=false",
        "--noprogressbar",
        *extra,
    ]


def outcome(exp):
    """What a finished run leaves: its epoch record, kept weights, valid and test transcripts."""
    (kept,) = sorted((exp / "save").glob("CKPT+*"))
    meta = yaml.safe_load((kept / "CKPT.yaml").read_text())
    del meta["unixtime"]
    return {
        "meta": meta,
        "epochs": [
            {k: v for k, v in e.items() if k != "time"} for e in read_jsonl(exp / "epochs.jsonl")
        ],
        "weights": torch.load(kept / "whisper.ckpt", weights_only=True),
        "valid": (exp / "valid" / "utterances_epoch1.jsonl").read_text(),
        "test": json.loads((exp / "summary_test.json").read_text())["wer"],
        "steps": [s["loss"] for s in read_jsonl(exp / "log" / "steps.jsonl")],
    }


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_sources")
    audio = root / "audio"
    rows = make_corpus(audio)
    outputs = prepare("tsv_folder", audio, root / "csv_for_shards")
    built = build_sources(root, rows, audio, [outputs["train"], outputs["valid"], *outputs["test"]])
    return {"tsv_folder": ("tsv_folder", audio), **built}


@pytest.fixture(scope="module")
def csv_run(sources, random_whisper_dir, tmp_path_factory):
    exp = tmp_path_factory.mktemp("csv") / "exp"
    code, stderr = run_forked(train_args(random_whisper_dir, *sources["tsv_folder"], exp))
    assert code == 0, stderr[-3000:]
    return outcome(exp)


def assert_same_outcome(ours, theirs):
    """Bit-identical step losses, epoch record, kept checkpoint, transcripts and WER."""
    assert len(ours["steps"]) == 3 and ours["steps"] == theirs["steps"]
    assert ours["epochs"] == theirs["epochs"]
    assert ours["meta"] == theirs["meta"]
    assert ours["valid"] == theirs["valid"] and ours["test"] == theirs["test"]
    assert ours["weights"].keys() == theirs["weights"].keys()
    for name, value in ours["weights"].items():
        assert torch.equal(value, theirs["weights"][name]), name


@pytest.mark.parametrize("source", ["hf_saved", "lhotse", "shards"])
def test_one_epoch_from_each_source_is_bit_identical_to_the_csv_path(
    source, sources, csv_run, random_whisper_dir, tmp_path
):
    code, stderr = run_forked(train_args(random_whisper_dir, *sources[source], tmp_path / "exp"))
    assert code == 0, stderr[-3000:]
    assert_same_outcome(outcome(tmp_path / "exp"), csv_run)
    manifest = (tmp_path / "exp" / "manifests" / "train.csv").read_text()
    prefix = {"hf_saved": "hf://", "lhotse": "lhotse://", "shards": "$data_root/train-"}[source]
    assert manifest.splitlines()[1].split(",")[2].startswith(prefix)


def test_a_shards_run_killed_mid_epoch_resumes_to_the_csv_paths_result(
    sources, csv_run, random_whisper_dir, tmp_path
):
    """Killed at the third batch, after a checkpoint at the second: the rerun skips the two
    batches served and ends where an uninterrupted run on the audio files ends."""
    args = train_args(
        random_whisper_dir, *sources["shards"], tmp_path / "exp", ["--ckpt_interval_steps=2"]
    )
    code, stderr = run_forked(args, env={CRASH_ENV: "train_batch:3"})
    assert killed(code), (code, stderr[-3000:])
    assert len(read_jsonl(tmp_path / "exp" / "log" / "steps.jsonl")) == 2
    code, stderr = run_forked(args)
    assert code == 0, stderr[-3000:]
    assert_same_outcome(outcome(tmp_path / "exp"), csv_run)


def test_a_missing_hf_split_stops_train_py_with_one_line(sources, random_whisper_dir, tmp_path):
    dataset, folder = sources["hf_saved"]
    args = train_args(
        random_whisper_dir,
        dataset,
        folder,
        tmp_path / "exp",
        ["--prep_options={valid_splits: [dev]}"],
    )
    code, stderr = run_forked(args)
    assert code == 1
    assert one_line_error(stderr) == (
        f"error: data preparation failed: {folder} has no split 'dev' "
        "(splits: train, validation, test)"
    )
