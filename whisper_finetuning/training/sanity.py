"""Sanity mode (``--sanity_utterances=N``): can the model learn its own training data?

The recipe's Brain overfits N training utterances at a constant rate, without label
smoothing, scoring them after every epoch, until it reproduces them (WER 0, per-token NLL under
``sanity_max_nll``) or runs out of epochs. Failing this means labels, tokens or masks are wrong.
"""

import functools
import logging
import os

import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch

from whisper_finetuning.common.errors import RecipeError
from whisper_finetuning.training import distributed

logger = logging.getLogger(__name__)


class SanityCheck:
    """Mixin before the recipe's Brain: constant rate, an epoch's score decides the stop."""

    def on_fit_batch_start(self, batch, should_step):
        """A constant rate: no warmup to wait for."""

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Score the utterances just trained on; stop once they are reproduced."""
        if stage == sb.Stage.TRAIN:
            return super().on_stage_end(stage, stage_loss, epoch)
        summary = self.scorer.write(os.path.join(self.output_folder, "valid"), "last", epoch)
        self.result = {
            "epoch": epoch,
            "wer": summary["wer"],
            "nll": self.valid_token_stats.summary()["nll"],
        }
        self.training_log.add_epoch(self.result)
        logger.info(
            "sanity epoch %d: WER %.2f%%, NLL %.4f", epoch, self.result["wer"], self.result["nll"]
        )
        if self.reproduced():
            self.epoch_counter.current = self.epoch_counter.limit

    def reproduced(self):
        """Every word right and the per-token loss (no smoothing) under its bound."""
        return self.result["wer"] == 0 and self.result["nll"] <= self.hparams.sanity_max_nll


def select(datasets, n_utterances):
    """Sanity mode trains and validates on the first ``n_utterances`` training rows only;
    ``datasets`` as they are when it is off (0)."""
    if not n_utterances:
        return datasets
    return {"train": datasets["train"].filtered_sorted(select_n=n_utterances)}


def run(brain_class, hparams, train_set, run_opts, **brain_kwargs):
    """Overfit ``train_set`` with ``brain_class`` (built with ``brain_kwargs`` too); a
    ``RecipeError`` if that fails."""
    if distributed.is_distributed():
        raise RecipeError("sanity mode runs on one process: start it without torchrun")
    folder = os.path.join(hparams["output_folder"], "sanity")
    # Label smoothing keeps the loss off zero by design: the check trains without it.
    hparams = {
        **hparams,
        "output_folder": folder,
        "nll_loss": functools.partial(hparams["nll_loss"], label_smoothing=0.0),
    }
    brain = type("SanityCheck", (SanityCheck, brain_class), {})(
        modules=hparams["modules"],
        opt_class=functools.partial(hparams["optimizer"], lr=hparams["sanity_lr"]),
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=None,
        **brain_kwargs,
    )
    brain.grad_accumulation_factor = 1  # few, small batches: step on every one
    brain.epoch_counter = sb.utils.epoch_loop.EpochCounter(hparams["sanity_max_epochs"])
    # An epoch passes over the utterances several times: decoding them is the costly part.
    repeated = torch.utils.data.ConcatDataset([train_set] * hparams["sanity_passes_per_epoch"])
    brain.fit(
        brain.epoch_counter,
        repeated,
        train_set,
        train_loader_kwargs={
            **hparams["train_loader_kwargs"],
            "shuffle": True,
            "collate_fn": PaddedBatch,
        },
        valid_loader_kwargs=hparams["valid_loader_kwargs"],
    )
    result = brain.result
    if brain.reproduced():
        logger.info(
            "sanity check passed: %d utterances reproduced after %d epochs (NLL %.4f)",
            len(train_set),
            result["epoch"],
            result["nll"],
        )
        return
    raise RecipeError(
        f"sanity check FAILED: after {result['epoch']} epochs on "
        f"{len(train_set)} utterances, WER {result['wer']:.2f}% and NLL "
        f"{result['nll']:.3f} (bound {hparams['sanity_max_nll']}): the model cannot learn "
        "its own training data; check labels, tokens and masks (see "
        f"{folder}/valid/utterances_last.jsonl)"
    )
