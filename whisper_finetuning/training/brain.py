"""The bookkeeping half of the recipe's Brain: logs, selection, summaries and resuming.

``train.py`` subclasses ``FineTuningBrain`` with the recipe itself (``compute_forward``,
``compute_objectives``, ``on_stage_start``, ``on_stage_end``); this class keeps what every
run needs around them: each step's and utterance's log, a loss display that never resets, the
kept checkpoints, the scored summaries, and MWER's starting weights.
"""

import json
import logging
import os

import speechbrain as sb
import torch
from speechbrain.utils.checkpoints import ckpt_recency
from speechbrain.utils.distributed import if_main_process, run_on_main

from whisper_finetuning.common.label_sources import LABEL_SOURCE
from whisper_finetuning.decoding import longform
from whisper_finetuning.evaluation import scoring
from whisper_finetuning.evaluation.selection import best_earliest, min_loss_earliest
from whisper_finetuning.training import distributed, l2sp, mwer, resilience, sharding
from whisper_finetuning.training import log as training_log

logger = logging.getLogger(__name__)

LOSS_EMA_DECAY = 0.98


def group_columns(columns):
    """The columns summaries report per value: ``group_columns``, and always the language and
    (where the manifest has it) the label source."""
    columns = list(columns)
    return columns + [c for c in ("language", LABEL_SOURCE) if c not in columns]


class FineTuningBrain(sharding.ShardingBrain, resilience.ResilientBrain, sb.Brain):
    """SpeechBrain's Brain with the run's logs, checkpoint selection and summaries."""

    resume_attributes = (
        "loss_ema",
        "epoch_loss_sum",
        "epoch_batches",
        "epoch_mwer_sums",
        "mwer_initialised",
    )
    gathered_accumulators = ("valid_token_stats",)

    def __init__(
        self,
        *args,
        normalize,
        training_examples=None,
        distiller=None,
        longform_rows=None,
        test_search=None,
        **kwargs,
    ):
        """SpeechBrain's Brain, plus the scores' text normaliser (``scoring.Normalizers``), the
        summaries' group columns, the training examples (``data.examples``; None: plain rows),
        the teacher (``distillation.Distiller``; None: no distillation), the test sets' search
        (None: the yaml's ``test_search``; ``speculative.assisted_search`` gives one drafted by
        an assistant), the test sets' rows over 30 s (``{test set: {ID: row}}``,
        ``manifests.split_longform``), MWER's search and first weights, and the L2-SP
        penalty's pretrained copies (``l2sp_weight``)."""
        super().__init__(*args, **kwargs)
        self.test_search = self.hparams.test_search if test_search is None else test_search
        self.longform_rows = longform_rows or {}
        self.l2sp = l2sp.from_hparams(self.hparams, self.modules)  # before any recovery
        self.distiller = distiller
        if distiller is not None:
            distiller.teacher.to(self.device)
        self.normalize = normalize
        self.group_columns = group_columns(self.hparams.group_columns)
        self.output_folder = self.hparams.output_folder
        self.training_examples = training_examples
        self.mwer_search = mwer.beam_search(self.hparams)
        self.init_checkpoint = None
        if self.hparams.mwer_init is not None:
            self.init_checkpoint = mwer.init_checkpoint(self.hparams.mwer_init, self.checkpointer)

    def with_l2sp(self, loss):
        """A training batch's loss plus the L2-SP penalty (``training.l2sp``), if any."""
        return loss if self.l2sp is None else loss + self.l2sp.penalty().to(loss.device)

    # ---------------------------------------------------------------- logs --
    def log_training_utterances(self, batch, token_stats, groups):
        """Each training utterance's loss, tokens and argmax transcript (``log/``)."""
        decode = self.hparams.whisper.decode_text
        self.training_log.add_utterances(
            self.epoch,
            self.step / self.batches_per_epoch,
            batch.id,
            token_stats,
            [decode(t) for t in token_stats["argmax"]],
            batch.target_text,
            groups,
        )

    def score(self, batch, searched, token_stats, groups):
        """Add the searched transcripts (and each valid utterance's own loss) to the scorer."""
        hyps, looped = searched
        texts = [self.hparams.whisper.decode_text(h) for h in hyps]
        extra = {"loop_stopped": looped}
        if token_stats is not None:  # each valid utterance's own loss, for paired analyses
            pairs = zip(token_stats["nll"], token_stats["tokens"], strict=True)
            extra["loss"] = [nll / max(tokens, 1) for nll, tokens in pairs]
            extra["tokens"] = token_stats["tokens"]
        self.scorer.append(batch.id, texts, batch.wrd, groups, batch.duration, extra)

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """Count the loss into the epoch's mean and the moving average; log each optimizer
        step's raw loss, rate, tokens and audio (before a checkpoint may be taken)."""
        loss = loss.detach()
        if torch.isfinite(loss):
            self.epoch_loss_sum += float(loss)
            self.epoch_batches += 1
            for key, value in (self.mwer_logged or {}).items():
                self.epoch_mwer_sums[key] = self.epoch_mwer_sums.get(key, 0.0) + value
            ema = float(loss) if self.loss_ema is None else self.loss_ema
            self.loss_ema = LOSS_EMA_DECAY * ema + (1 - LOSS_EMA_DECAY) * float(loss)
        tokens = int(torch.round(batch.tokens_eos[1] * batch.tokens_eos[0].shape[1]).sum())
        seconds = sum(float(d) for d in batch.duration)
        self.training_log.add_batch(loss, tokens, seconds, len(batch.id), self.mwer_logged)
        if should_step:
            self.training_log.end_step(
                epoch=self.epoch,
                step=self.optimizer_step,
                epoch_step=-(-self.step // self.grad_accumulation_factor),
                position=self.step / self.batches_per_epoch,
                lr=self.optimizer.param_groups[0]["lr"],
                augmented=bool(self.hparams.augment and hasattr(batch, "sig")),
            )
        super().on_fit_batch_end(batch, outputs, loss, should_step)

    def update_average(self, loss, avg_loss):
        """Training shows a moving average that, unlike a per-epoch mean, never resets."""
        if not self.modules.training or self.loss_ema is None:
            return super().update_average(loss, avg_loss)
        return self.loss_ema

    def make_dataloader(self, dataset, stage, **loader_kwargs):
        """SpeechBrain's loader; the training one's length gives each step's epoch position."""
        loader = super().make_dataloader(dataset, stage, **loader_kwargs)
        if stage == sb.Stage.TRAIN:
            self.batches_per_epoch = len(loader)
        return loader

    def on_fit_start(self):
        """Start the training log, then recover (see ``ResilientBrain.on_fit_start``)."""
        self.loss_ema = None
        self.epoch_loss_sum, self.epoch_batches, self.epoch_mwer_sums = 0.0, 0, {}
        self.mwer_initialised = False
        self.training_log = training_log.TrainingLog(
            os.path.join(self.output_folder, "log"),
            enabled=if_main_process(),
            tensorboard=self.hparams.tensorboard,
        )
        super().on_fit_start()
        # mwer_init's weights replace the pretrained (or recovered CE) ones once; a checkpoint
        # saved after that carries the flag, so resuming from it keeps its own weights.
        if self.init_checkpoint is not None and not self.mwer_initialised:
            logger.info("mwer_init: starting from %s", self.init_checkpoint)
            self.hparams.whisper.load_trained(self.init_checkpoint)
            self.mwer_initialised = True

    # ------------------------------------------------------------- stages --
    def on_stage_start(self, stage, epoch=None):
        """Note the epoch; draw this epoch's training examples; a fresh scorer (and token
        statistics) for valid and test."""
        super().on_stage_start(stage, epoch)
        self.epoch = epoch
        self.mwer_logged = None
        if stage == sb.Stage.TRAIN and self.training_examples is not None:
            self.training_examples.set_epoch(epoch)  # before the loader's workers start
        if stage != sb.Stage.TRAIN:
            self.scorer = scoring.Scorer(self.normalize, self.group_columns)
            self.valid_token_stats = training_log.ValidTokenStats()

    def end_training_epoch(self):
        """The epoch's mean training loss (and MWER terms) over all processes; reset."""
        totals = {"loss": self.epoch_loss_sum, **self.epoch_mwer_sums}
        self.train_stats = {
            key: distributed.global_ratio(total, self.epoch_batches)
            for key, total in totals.items()
        }
        self.epoch_loss_sum, self.epoch_batches, self.epoch_mwer_sums = 0.0, 0, {}

    def write_summary(self, stage, epoch):
        """Score the stage's transcripts into ``valid/epochN`` or the test set's summary."""
        if stage == sb.Stage.VALID:
            folder = os.path.join(self.output_folder, "valid")
            return run_on_main(self.scorer.write, args=[folder, f"epoch{epoch}", epoch])
        model = str(self.hparams.whisper_hub)
        return run_on_main(self.write_test_summary, args=[self.selected_epoch(), model])

    def write_test_summary(self, epoch, model):
        """Decode the test set's rows over 30 s long-form into its scorer (the kept weights:
        after ``on_evaluate_start``), then write its summary, with ``n_longform``."""
        rows = self.longform_rows.get(self.test_name, {})
        if rows:
            settings = longform.settings(vars(self.hparams))
            longform.score_rows(
                self.scorer, self.hparams.whisper, rows, self.group_columns, **settings
            )
        extra = {"n_longform": len(rows)}
        return self.scorer.write(self.test_folder, self.test_name, epoch, model, extra=extra)

    def log_valid_epoch(self, stats_meta, stats, summary):
        """Write the epoch's line of ``log/`` and warn when the valid set is too small."""
        self.training_log.add_epoch(
            {
                **stats_meta,
                **{f"train_{key}": value for key, value in self.train_stats.items()},
                **stats,
                **self.valid_token_stats.summary(),
                "n_valid": summary["n_utterances"],
            }
        )
        logger.info("valid epoch %d: %s", stats_meta["epoch"], scoring.format_headline(summary))
        if if_main_process():  # epochs.jsonl is the main process's to write and read
            with open(os.path.join(self.output_folder, "epochs.jsonl")) as f:
                epoch_wers = [json.loads(line)["WER"] for line in f]
            warning = scoring.small_valid_warning(epoch_wers, summary)
            if warning:
                logger.warning(warning)

    # -------------------------------------------------------- checkpoints --
    @property
    def kept_checkpoints(self):
        """Importance keys of the checkpoints kept: the best by ``selection_metric``; for
        review also min loss and last."""
        selected = best_earliest(self.hparams.selection_metric)
        if self.hparams.review_checkpoints:
            return [selected, min_loss_earliest, ckpt_recency]
        return [selected]

    def keep_checkpoints(self, meta):
        """Save this epoch's checkpoint; keep the selected ones (and the latest, to resume)."""
        self.checkpointer.save_and_keep_only(
            meta=meta,
            importance_keys=self.kept_checkpoints,
            num_to_keep=max(1, self.hparams.average_checkpoints),  # the N best to average
        )

    def on_evaluate_start(self, max_key=None, min_key=None):
        """Load the best checkpoint by ``min_key`` (a selection metric; ties: the earlier
        epoch); ``min_key=None`` keeps the weights."""
        if min_key is not None:
            self.checkpointer.recover_if_possible(importance_key=best_earliest(min_key))

    def selected_epoch(self):
        """The epoch of the checkpoint the test stage uses (None when zero-shot)."""
        if self.checkpointer is None or self.test_folder != self.output_folder:
            return None
        best = self.checkpointer.find_checkpoint(
            importance_key=best_earliest(self.hparams.selection_metric)
        )
        return None if best is None else best.meta["epoch"]
