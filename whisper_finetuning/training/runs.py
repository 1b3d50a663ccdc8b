"""A run's bookkeeping around ``fit``: the marker of a finished fit, and test sets decoded by
a checkpoint or, once per model, zero-shot."""

import json
import logging
import os

from whisper_finetuning.common.files import write_json
from whisper_finetuning.decoding import longform

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


def decode_test_sets(brain, test_sets, hparams, folder, loader_kwargs, min_key=None):
    """Decode every test set into ``folder``; ``min_key=None`` keeps the current weights, whose
    (zero-shot) results are computed once per model and test set."""
    brain.test_folder = folder
    for name, dataset in test_sets.items():
        if min_key is None and _decoded_already(folder, name, hparams, dataset):
            continue
        brain.test_name = name
        brain.evaluate(dataset, min_key=min_key, test_loader_kwargs=loader_kwargs)


def decode_longform_sets(brain, hparams, folder, zero_shot=False):
    """Decode every long-form test set (``longform_test_csv``) with the current weights into
    ``folder``; zero-shot results are computed once per model and set."""
    for csv_path, name in zip(hparams["longform_test_csv"], longform_names(hparams), strict=True):
        if zero_shot and _decoded_already(folder, f"longform_{name}", hparams):
            continue
        summary = longform.evaluate(
            hparams["whisper"],
            csv_path,
            hparams["data_folder"],
            brain.normalize,
            folder,
            name,
            hparams["longform_condition_on_previous_text"],
            hparams["decode_max_tokens"],
            hparams["loop_stop"],
            model=str(hparams["whisper_hub"]),
            group_columns=brain.group_columns,  # the language too: its normaliser
            batch_size=hparams["test_batch_size"],
            rules=brain.test_search.rules,  # the test sets' (an assisted search's too)
        )
        if summary is not None:
            mae = summary["timestamps"]["boundary_mae"]  # None: no segment to compare
            logger.info(
                "long form %s: WER %.2f%%, segment boundary error %s",
                name,
                summary["wer"],
                "n/a" if mae is None else f"{mae:.3f} s",
            )


def longform_names(hparams):
    """The long-form test sets' names (their manifests' stems)."""
    return [os.path.splitext(os.path.basename(p))[0] for p in hparams["longform_test_csv"]]


def _decoded_already(folder, name, hparams, dataset=None):
    """True if ``folder`` holds this test set's results from the same model (and utterances)."""
    path = os.path.join(folder, f"summary_{name}.json")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        summary = json.load(f)
    same_model = summary.get("model") == str(hparams["whisper_hub"])
    return same_model and (dataset is None or summary["n_utterances"] == len(dataset))
