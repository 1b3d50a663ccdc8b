"""A manifest mixing human and pseudo labels: label_source is a group of the training log and
the summaries, and pseudo_label_weight scales the pseudo rows' share of the training loss."""

import pytest
import speechbrain as sb
import torch
from conftest import read_jsonl, sine, write_manifest
from recipe_runs import make_brain, manifest_hparams, prepared
from speechbrain.dataio.batch import PaddedBatch

from whisper_finetuning.training.log import TrainingLog

COLUMNS = ("ID", "duration", "wav", "spk_id", "label_source", "wrd")
TEXTS = ("a cat sat on the mat", "the dog ran", "birds sing at dawn", "rain again today")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pseudo")
    rows = [
        {
            "ID": f"u{i}",
            "duration": 1.0 + i / 4,
            "wav": sine(folder / f"u{i}.wav", 1.0 + i / 4),
            "spk_id": f"s{i}",
            "label_source": "pseudo" if i % 2 else "human",
            "wrd": text,
        }
        for i, text in enumerate(TEXTS)
    ]
    return {
        s: write_manifest(folder / f"{s}.csv", rows, COLUMNS) for s in ("train", "valid", "test")
    }


def _brain(whisper_dir, corpus, output, weight):
    hparams = manifest_hparams(
        whisper_dir, corpus, output, label_smoothing=0.0, decode_max_tokens=4,
        pseudo_label_weight=weight,
    )  # fmt: skip
    datasets, _ = prepared(hparams)
    brain = make_brain({**hparams, "output_folder": str(output)}, checkpointer=None)
    brain.training_log = TrainingLog(str(output / "log"), enabled=True, tensorboard=False)
    brain.epoch, brain.step, brain.batches_per_epoch = 1, 1, 1
    return brain, PaddedBatch([dict(item) for item in datasets["train"]])


def test_pseudo_rows_loss_is_scaled_and_label_source_is_a_group(
    random_whisper_dir, corpus, tmp_path
):
    brain, batch = _brain(random_whisper_dir, corpus, tmp_path, weight=0.25)
    with torch.no_grad():
        loss = brain.compute_objectives(
            brain.compute_forward(batch, sb.Stage.TRAIN), batch, sb.Stage.TRAIN
        )
    logged = read_jsonl(tmp_path / "log" / "train_utterances.jsonl")
    assert {u["id"]: u["label_source"] for u in logged} == {
        "u0": "human",
        "u1": "pseudo",
        "u2": "human",
        "u3": "pseudo",
    }
    # the logged losses are each row's unweighted mean NLL: weight them by hand
    weights = {"human": 1.0, "pseudo": 0.25}
    weighted = sum(weights[u["label_source"]] * u["loss"] * u["tokens"] for u in logged)
    assert loss.item() == pytest.approx(weighted / sum(u["tokens"] for u in logged), rel=1e-5)

    brain.on_stage_start(sb.Stage.VALID, 1)
    with torch.no_grad():
        brain.compute_objectives(
            brain.compute_forward(batch, sb.Stage.VALID), batch, sb.Stage.VALID
        )
    per_source = brain.scorer.summary()["per_group"]["label_source"]
    assert {value: group["n"] for value, group in per_source.items()} == {"human": 2, "pseudo": 2}
