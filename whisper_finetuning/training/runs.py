"""A run's bookkeeping around ``fit``: the marker of a finished fit, and test sets decoded by
a checkpoint or, once per model, zero-shot."""

import json
import logging
import os

from whisper_finetuning.files import write_json

logger = logging.getLogger(__name__)

FIT_DONE = "fit_done.json"


def fit_done_path(save_folder):
    """Marks a finished fit: only the kept checkpoints are left, not the last state."""
    return os.path.join(save_folder, FIT_DONE)


def mark_fit_done(save_folder, epochs):
    """Say that ``epochs`` epochs of training are over."""
    write_json(fit_done_path(save_folder), {"epochs": epochs})


def skip_finished_epochs(save_folder, counter):
    """A finished run is not trained again; one asked for more epochs continues from the kept
    checkpoint (call after recovering it)."""
    path = fit_done_path(save_folder)
    if not os.path.exists(path):
        return
    with open(path) as f:
        done_epochs = json.load(f)["epochs"]
    if done_epochs >= counter.limit:
        counter.current = counter.limit
    else:
        logger.warning(
            "training had finished after %d epochs; continuing from the kept checkpoint of "
            "epoch %d",
            done_epochs,
            counter.current,
        )


def decode_test_sets(brain, test_sets, hparams, folder, min_key=None):
    """Decode every test set into ``folder``; ``min_key=None`` keeps the current weights, whose
    (zero-shot) results are computed once per model and test set."""
    brain.test_folder = folder
    for name, dataset in test_sets.items():
        if min_key is None and _decoded_already(folder, name, hparams, dataset):
            continue
        brain.test_name = name
        brain.evaluate(dataset, min_key=min_key, test_loader_kwargs=hparams["test_loader_kwargs"])


def _decoded_already(folder, name, hparams, dataset):
    """True if ``folder`` holds this test set's results from the same model and utterances."""
    path = os.path.join(folder, f"summary_{name}.json")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        summary = json.load(f)
    same_model = summary.get("model") == str(hparams["whisper_hub"])
    return same_model and summary["n_utterances"] == len(dataset)
