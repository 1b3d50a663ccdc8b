"""What a run's checkpoint was trained on, so that a rerun in its folder cannot change it.

``run.json`` records the content hash of every manifest (``manifest_sha256``) and the settings
a continued checkpoint depends on (``settings``: ``hparam_rules.rerun_settings``). A rerun in
a folder that holds a checkpoint (kept by a finished run, or left by a killed one) with other
manifests or settings stops with one line; to train on them, use a new output folder, where
``init_from`` (that folder) starts training from its min-WER checkpoint (``start_from``). A run
that does not train (its folder's training finished with as many epochs) only decodes: it may
name other test manifests than the run's, and leaves the files that describe the training
(``run.json``, ``hyperparams.yaml``, the data report) as they are.
"""

import hashlib
import json
import logging
import os
from pathlib import Path

from whisper_finetuning.common.errors import RecipeError
from whisper_finetuning.data.manifests import WINDOWED_SPLITS, named_manifests, training_sources
from whisper_finetuning.evaluation.selection import best_earliest
from whisper_finetuning.export.huggingface import describe
from whisper_finetuning.training.checkpointing import VerifiedCheckpointer
from whisper_finetuning.training.hparam_rules import SAVE_FOLDER, rerun_settings
from whisper_finetuning.training.runs import fit_done_path

logger = logging.getLogger(__name__)

RUN_INFO = "run.json"
HASH_CHUNK = 1 << 20


def file_sha256(path):
    """The SHA-256 of a file's bytes, or None if it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(HASH_CHUNK):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def manifest_hashes(hparams):
    """``{split name: SHA-256 of its manifest}`` for train, valid, every test manifest, the
    replay and non-speech sets and the keep test set."""
    named = named_manifests(
        hparams["train_csv"], hparams["valid_csv"], hparams["test_csv"],
        training_sources(hparams), hparams.get("keep_test_csv"),
    )  # fmt: skip
    return {name: file_sha256(path) for name, path in named.items()}


def will_train(hparams):
    """False when this folder's training finished with at least ``number_of_epochs`` epochs."""
    done = Path(fit_done_path(hparams["save_folder"]))
    if not done.exists():
        return True
    return json.loads(done.read_text())["epochs"] < hparams["number_of_epochs"]


def holds_checkpoint(hparams):
    """Whether training in this folder got as far as a checkpoint."""
    save = hparams["save_folder"]
    return os.path.exists(fit_done_path(save)) or any(Path(save).glob("CKPT+*"))


def check_rerun(hparams):
    """Raise a ``RecipeError`` if this folder's checkpoint was trained on other manifests or
    settings than ``hparams`` name (a run that does not train: other training manifests);
    returns whether this run trains."""
    info_path = Path(hparams["output_folder"]) / RUN_INFO
    if not holds_checkpoint(hparams) or not info_path.exists():
        return True
    trains = will_train(hparams)
    recorded = json.loads(info_path.read_text())
    folder = hparams["output_folder"]
    advice = f"use a new --output_folder (with --init_from={folder} to start from its checkpoint)"
    hashes, recorded_hashes = manifest_hashes(hparams), recorded.get("manifest_sha256")
    for name in dict.fromkeys([*(recorded_hashes or {}), *hashes]):
        if not trains and name not in WINDOWED_SPLITS:
            continue  # a test set: the checkpoint only decodes it
        if recorded_hashes is not None and recorded_hashes.get(name) != hashes.get(name):
            how = "another" if name in recorded_hashes and name in hashes else "no"
            raise RecipeError(
                f"{folder} holds a checkpoint of a run with {how} {name} manifest "
                f"(run.json records each manifest's content); {advice}"
            )
    settings = rerun_settings(hparams)
    for key, value in recorded.get("settings", {}).items():
        if settings.get(key) != value:
            raise RecipeError(
                f"{folder} holds a checkpoint of a run with {key}: {json.dumps(value)}, "
                f"not {json.dumps(settings.get(key))} (run.json); {advice}"
            )
    return trains


INIT_FROM_ADVICE = (
    "move {checkpoint} out of {folder} to start from the run's next best checkpoint, or "
    "start without --init_from"
)


def start_from(hparams):
    """With ``init_from``, load that run's best checkpoint by this run's ``selection_metric``
    into the model, unless this folder holds a checkpoint of its own (resumed instead);
    returns the one loaded or None."""
    source = hparams["init_from"]
    if source is None or holds_checkpoint(hparams):
        return None
    checkpointer = VerifiedCheckpointer(
        Path(source) / SAVE_FOLDER, {"whisper": hparams["whisper"]}, advice=INIT_FROM_ADVICE
    )
    checkpoint = checkpointer.find_checkpoint(
        importance_key=best_earliest(hparams["selection_metric"]),
        ckpt_predicate=lambda ckpt: "WER" in ckpt.meta,
    )
    checkpointer.load_checkpoint(checkpoint)
    logger.info("starting from %s of %s", describe(checkpoint), source)
    return checkpoint


def record(hparams):
    """The provenance fields of ``run.json``."""
    return {"manifest_sha256": manifest_hashes(hparams), "settings": rerun_settings(hparams)}
