"""Checkpoint averaging: the mean of the trainable weights of a run's best epochs, scored on
the valid set like an epoch and kept only if it wins."""

import logging
import os

import speechbrain as sb
import torch
from speechbrain.utils.distributed import run_on_main

from whisper_finetuning.common.files import write_json
from whisper_finetuning.evaluation.selection import (
    SELECTION_DIRECTIONS,
    SELECTION_METRICS,
    best_earliest,
)

logger = logging.getLogger(__name__)


def average_parameters(saved):
    """Element-wise mean of parameter dicts (``{name: tensor}``) of one model, in float64.

    Dicts whose parameter names or shapes differ come from different models (or different
    trainable sets) and are refused.
    """
    first = saved[0]
    for other in saved[1:]:
        if other.keys() != first.keys():
            missing = sorted(first.keys() ^ other.keys())[0]
            raise ValueError(
                f"cannot average checkpoints of different models: only some hold {missing}"
            )
        for name, value in first.items():
            if other[name].shape != value.shape:
                raise ValueError(
                    f"cannot average checkpoints of different models: {name} has shapes "
                    f"{tuple(value.shape)} and {tuple(other[name].shape)}"
                )
    return {
        name: torch.stack([s[name].double() for s in saved]).mean(dim=0).to(value.dtype)
        for name, value in first.items()
    }


def average_best_epochs(brain, valid_set, loader_kwargs):
    """Average the trainable weights of the ``average_checkpoints`` best epochs by
    ``selection_metric`` (WER by default), score the average on the valid set, and save it as
    a checkpoint only if it scores better by that metric."""
    metric = brain.hparams.selection_metric
    record_path = os.path.join(brain.output_folder, "averaging.json")
    if os.path.exists(record_path):
        return  # averaged before this run was resumed
    best = brain.checkpointer.find_checkpoints(
        importance_key=best_earliest(metric),
        max_num_checkpoints=brain.hparams.average_checkpoints,
        ckpt_predicate=lambda ckpt: ckpt.meta.get(metric) is not None,
    )
    if len(best) < 2:
        logger.info("checkpoint averaging skipped: %d epoch checkpoint(s) kept", len(best))
        return
    epochs = [ckpt.meta["epoch"] for ckpt in best]
    saved = [
        torch.load(ckpt.paramfiles["whisper"], map_location="cpu", weights_only=True)
        for ckpt in best
    ]
    brain.hparams.whisper.load_trainable(average_parameters(saved), best[0].path)
    summary, loss = score_valid(brain, valid_set, loader_kwargs, "averaged")
    score = summary[metric.lower()]
    kept = score is not None and SELECTION_DIRECTIONS[metric] * (score - best[0].meta[metric]) > 0
    if kept:  # the latest averaged epoch stands for it in summaries
        brain.checkpointer.save_checkpoint(
            meta={
                "loss": loss,
                **{key: summary[key.lower()] for key in SELECTION_METRICS},
                "epoch": max(epochs),
                "averaged_epochs": epochs,
            }
        )
    record = {
        "averaged_epochs": epochs,
        "averaged_wer": summary["wer"],
        "averaged_ci95": summary["wer_ci95"],
        "best_epoch": epochs[0],
        "best_epoch_wer": best[0].meta["WER"],
        "kept": "averaged" if kept else f"epoch {epochs[0]}",
        "selection_metric": metric,
    }
    run_on_main(write_json, args=[record_path, record])
    logger.info(
        "average of epochs %s: valid %s %s vs %.2f for epoch %d: kept %s",
        epochs,
        metric,
        score,
        best[0].meta[metric],
        epochs[0],
        record["kept"],
    )


def score_valid(brain, valid_set, loader_kwargs, name):
    """Greedy-decode the valid set with the current weights as an epoch's validation does,
    into ``valid/*_NAME``: the summary and the mean loss."""
    loader = brain.make_dataloader(valid_set, sb.Stage.VALID, **loader_kwargs)
    brain.on_stage_start(sb.Stage.VALID)
    brain.modules.eval()
    loss = 0.0
    with torch.no_grad():
        for count, batch in enumerate(loader, 1):
            loss += (float(brain.evaluate_batch(batch, sb.Stage.VALID)) - loss) / count
    loss = brain.gather_stage(loss)
    folder = os.path.join(brain.output_folder, "valid")
    return run_on_main(brain.scorer.write, args=[folder, name]), loss
