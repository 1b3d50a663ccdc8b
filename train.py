#!/usr/bin/env python3
"""Fine-tune Whisper with SpeechBrain and keep the checkpoint with the lowest valid WER.

Training minimises a label-smoothed NLL over the transcript tokens; validation decodes
greedily and scores WER (or CER, BLEU, chrF: ``selection_metric``), which chooses the one
checkpoint kept; the test sets are decoded with beam search by that checkpoint. Loss and WER
can disagree: the checkpoint is chosen by WER. Each row is prompted in its own language.

Example:
    python train.py hparams/whisper_small.yaml --data_folder=/path/to/data

Any hyperparameter can be overridden on the command line (``--lr=1e-4``).
"""

import json
import logging
import os
import sys

import speechbrain as sb
import torch
from speechbrain.utils.checkpoints import ckpt_recency
from speechbrain.utils.distributed import if_main_process, run_on_main

from whisper_finetuning.analysis.diagnosis.run import run_after_training as diagnose_run
from whisper_finetuning.data import (
    audio,
    batching,
    encoder_cache,
    examples,
    manifests,
)
from whisper_finetuning.data import (
    checks as data_checks,
)
from whisper_finetuning.data import prepare as data_prep
from whisper_finetuning.decoding import longform
from whisper_finetuning.evaluation import scoring
from whisper_finetuning.evaluation.selection import (
    SELECTION_METRICS,
    best_earliest,
    min_loss_earliest,
)
from whisper_finetuning.training import (
    allocator,
    averaging,
    distributed,
    mwer,
    optimizers,
    provenance,
    resilience,
    run_lock,
    runs,
    sanity,
    stopping,
)
from whisper_finetuning.training import log as training_log
from whisper_finetuning.training.config import HparamsError, load_hparams

logger = logging.getLogger(__name__)

LOSS_EMA_DECAY = 0.98


class WhisperFineTuning(resilience.ResilientBrain, sb.Brain):
    """Fine-tunes Whisper on manifests; selects checkpoints by valid WER (selection_metric)."""

    resume_attributes = (
        "loss_ema",
        "epoch_loss_sum",
        "epoch_batches",
        "epoch_mwer_sums",
        "mwer_initialised",
    )
    gathered_accumulators = ("valid_token_stats",)

    def __init__(self, *args, **kwargs):
        """SpeechBrain's Brain, plus the text normaliser and the summaries' group columns."""
        super().__init__(*args, **kwargs)
        whisper = self.hparams.whisper
        self.normalize = scoring.Normalizers(
            self.hparams.normalizer, whisper.tokenizer, english_only=not whisper.is_multilingual
        )
        self.group_columns = group_columns(self.hparams.group_columns)
        self.output_folder = self.hparams.output_folder
        self.train_sampler = self.hparams.train_loader_kwargs.get("batch_sampler")
        self.init_checkpoint = None
        if self.hparams.mwer_init is not None:
            self.init_checkpoint = mwer.init_checkpoint(self.hparams.mwer_init, self.checkpointer)

    def compute_forward(self, batch, stage):
        """Augment (training), run Whisper, and search transcripts outside training (and, with
        objective mwer, N-best lists scored with gradients in training)."""
        batch = batch.to(self.device)
        tokens_bos, tokens_bos_lens = batch.tokens_bos
        cached = hasattr(batch, "frozen_out")
        audio, audio_lens = batch.frozen_out if cached else batch.sig
        if stage == sb.Stage.TRAIN and self.hparams.augment and not cached:
            audio, audio_lens = self.hparams.wav_augment(audio, audio_lens)
            tokens_bos = self.hparams.wav_augment.replicate_labels(tokens_bos)
            tokens_bos_lens = self.hparams.wav_augment.replicate_labels(tokens_bos_lens)
        hidden, states = self.modules.whisper(  # projected in compute_objectives' loss
            audio,
            audio_lens,
            tokens_bos,
            tokens_bos_lens,
            cached=cached,
            project=False,
            utterance_ids=batch.id if stage == sb.Stage.TRAIN else None,
        )
        searched = None  # (token lists, loop-stop flags) in batch order; mwer.NBest in training
        if stage == sb.Stage.TRAIN and self.hparams.objective != "mwer":
            return hidden, searched
        # Searches start from each row's own prompt (its language).
        prompts = examples.row_prompts(tokens_bos, batch.prompt_len)
        if stage == sb.Stage.TRAIN:
            searched = mwer.n_best(self.hparams.whisper, states, self.hparams.mwer_search, prompts)
        elif stage == sb.Stage.VALID:
            searched = self.hparams.valid_search(self.hparams.whisper, states, prompts)
        elif stage == sb.Stage.TEST:
            searched = self.hparams.test_search(self.hparams.whisper, states, prompts)
        return hidden, searched

    def compute_objectives(self, predictions, batch, stage):
        """Label-smoothed NLL over transcript tokens (with objective mwer, plus the expected word
        errors of the N-best lists); WER/CER of the searched transcripts."""
        hidden, searched = predictions
        tokens_eos, tokens_eos_lens = batch.tokens_eos
        prompt_lens = torch.as_tensor(batch.prompt_len, device=self.device)
        if stage == sb.Stage.TRAIN and self.hparams.augment and hasattr(batch, "sig"):
            tokens_eos = self.hparams.wav_augment.replicate_labels(tokens_eos)
            tokens_eos_lens = self.hparams.wav_augment.replicate_labels(tokens_eos_lens)
            prompt_lens = self.hparams.wav_augment.replicate_labels(prompt_lens)
        # Each row's last prompt position predicts its first transcript token.
        hidden = examples.align_to_targets(hidden, prompt_lens, tokens_eos.shape[1])
        n = len(batch.id)  # token statistics: augmented copies follow the originals
        loss, token_stats = self.hparams.nll_loss(
            self.hparams.whisper.model.proj_out,
            hidden,
            tokens_eos,
            tokens_eos_lens,
            statistics_rows=0 if stage == sb.Stage.TEST else n,
            entropy=stage == sb.Stage.VALID,
        )
        self.mwer_logged = None
        if stage == sb.Stage.TRAIN and self.hparams.objective == "mwer":
            copies = len(searched.tokens) // len(batch.id)  # augmented copies follow
            loss, self.mwer_logged = mwer.objective(
                self.hparams.whisper,
                searched,
                list(batch.wrd) * copies,
                self.normalize,
                loss,
                self.hparams.mwer_ce_weight,
                list(batch.language) * copies,
            )
        groups = {c: getattr(batch, c) for c in self.group_columns if hasattr(batch, c)}
        if stage == sb.Stage.TRAIN:
            self.training_log.add_utterances(
                self.epoch,
                self.step / self.batches_per_epoch,
                batch.id,
                token_stats,
                [self.hparams.whisper.decode_text(t) for t in token_stats["argmax"]],
                batch.target_text,
                groups,
            )
        if stage == sb.Stage.VALID:
            self.valid_token_stats.append(token_stats)
        if stage != sb.Stage.TRAIN:
            hyps, looped = searched
            texts = [self.hparams.whisper.decode_text(h) for h in hyps]
            extra = {"loop_stopped": looped}
            if token_stats is not None:  # each valid utterance's own loss, for paired analyses
                pairs = zip(token_stats["nll"], token_stats["tokens"], strict=True)
                extra["loss"] = [nll / max(tokens, 1) for nll, tokens in pairs]
                extra["tokens"] = token_stats["tokens"]
            self.scorer.append(batch.id, texts, batch.wrd, groups, batch.duration, extra)
        return loss

    def on_fit_batch_start(self, batch, should_step):
        """Set the Noam rate before each optimizer step (not per accumulated batch)."""
        super().on_fit_batch_start(batch, should_step)
        if should_step:
            self.hparams.lr_annealing(self.optimizer)

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
        self.training_log.add_batch(loss.detach(), tokens, seconds, len(batch.id), self.mwer_logged)
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

    @property
    def kept_checkpoints(self):
        """Importance keys of the checkpoints kept: the best by ``selection_metric``; for
        review also min loss and last."""
        selected = best_earliest(self.hparams.selection_metric)
        if self.hparams.review_checkpoints:
            return [selected, min_loss_earliest, ckpt_recency]
        return [selected]

    def on_evaluate_start(self, max_key=None, min_key=None):
        """Load the best checkpoint by ``min_key`` (a selection metric; ties: the earlier
        epoch); ``min_key=None`` keeps the weights."""
        if min_key is not None:
            self.checkpointer.recover_if_possible(importance_key=best_earliest(min_key))

    def on_stage_start(self, stage, epoch=None):
        """Note the epoch; start a fresh scorer (and token statistics) for valid and test."""
        super().on_stage_start(stage, epoch)
        self.epoch = epoch
        if stage == sb.Stage.TRAIN and self.hparams.training_examples is not None:
            self.hparams.training_examples.set_epoch(epoch)  # before the loader's workers start
        if stage != sb.Stage.TRAIN:
            self.scorer = scoring.Scorer(self.normalize, self.group_columns)
            self.valid_token_stats = training_log.ValidTokenStats()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Log the epoch; keep the best checkpoint by selection_metric; write test summaries."""
        super().on_stage_end(stage, stage_loss, epoch)
        if stage == sb.Stage.TRAIN:
            self.train_stats = {
                key: distributed.global_ratio(total, self.epoch_batches)
                for key, total in {"loss": self.epoch_loss_sum, **self.epoch_mwer_sums}.items()
            }
            self.epoch_loss_sum, self.epoch_batches, self.epoch_mwer_sums = 0.0, 0, {}
            return
        stage_loss = self.gather_stage(stage_loss)  # under DDP: all processes' utterances
        if stage == sb.Stage.VALID:
            folder, name = os.path.join(self.output_folder, "valid"), f"epoch{epoch}"
            summary = run_on_main(self.scorer.write, args=[folder, name, epoch])
        else:
            name = self.test_name
            summary = run_on_main(
                self.scorer.write,
                args=[self.test_folder, name, self.selected_epoch(), str(self.hparams.whisper_hub)],
            )
        stats = {"loss": stage_loss, **{key: summary[key.lower()] for key in SELECTION_METRICS}}
        if stage == sb.Stage.VALID:
            stats_meta = {
                "epoch": epoch,
                "lr": self.optimizer.param_groups[0]["lr"],
                "optimizer_steps": self.optimizer_step,
            }
            self.hparams.train_logger.log_stats(
                stats_meta=stats_meta, train_stats=self.train_stats, valid_stats=stats
            )
            self.training_log.add_epoch(
                {
                    **stats_meta,
                    **{f"train_{key}": value for key, value in self.train_stats.items()},
                    **stats,
                    **self.valid_token_stats.summary(),
                    "n_valid": summary["n_utterances"],
                }
            )
            logger.info("valid epoch %d: %s", epoch, scoring.format_headline(summary))
            self.warn_if_valid_set_too_small(summary)
            # The latest state stays too, for resuming, until training is over.
            self.checkpointer.save_and_keep_only(
                meta={**stats, "epoch": epoch},
                importance_keys=self.kept_checkpoints,
                num_to_keep=max(1, self.hparams.average_checkpoints),  # the N best to average
            )
        else:
            self.hparams.train_logger.log_stats(
                stats_meta={"test set": name, "epoch": summary["epoch"]}, test_stats=stats
            )
            logger.info("%s: %s", name, scoring.format_headline(summary))

    def warn_if_valid_set_too_small(self, summary):
        """Warn when the valid WER interval is wider than the spread across epochs."""
        if not sb.utils.distributed.if_main_process():
            return  # epochs.jsonl is the main process's to write and read
        with open(os.path.join(self.output_folder, "epochs.jsonl")) as f:
            epoch_wers = [json.loads(line)["WER"] for line in f]
        warning = scoring.small_valid_warning(epoch_wers, summary)
        if warning:
            logger.warning(warning)

    def selected_epoch(self):
        """The epoch of the checkpoint the test stage uses (None when zero-shot)."""
        if self.checkpointer is None or self.test_folder != self.output_folder:
            return None
        best = self.checkpointer.find_checkpoint(
            importance_key=best_earliest(self.hparams.selection_metric)
        )
        return None if best is None else best.meta["epoch"]


def dataio_prepare(hparams, whisper):
    """Manifests -> checked datasets with audio (or cached encoder output) and token pipelines."""
    named = manifests.named_manifests(
        hparams["train_csv"], hparams["valid_csv"], hparams["test_csv"]
    )
    datasets = {
        name: manifests.check_rows(
            manifests.resolve_languages(
                manifests.load_manifest(csv, hparams["data_folder"]), name, whisper
            ),
            name,
            whisper,
            hparams["on_bad_row"],
        )
        for name, csv in named.items()
    }
    if hparams["sanity_utterances"]:  # train and valid: the same few utterances
        datasets = {
            "train": datasets["train"].filtered_sorted(select_n=hparams["sanity_utterances"])
        }

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        """Mono 16 kHz waveform."""
        return audio.read_audio(wav)

    @sb.utils.data_pipeline.takes("wrd", "language")
    @sb.utils.data_pipeline.provides("target_text", "tokens_bos", "tokens_eos", "prompt_len")
    def text_pipeline(wrd, language):
        """Transcript, the row's prompt (in its language) + transcript tokens (decoder input),
        transcript + EOT (targets), prompt length."""
        yield wrd
        prompt = whisper.prompt(language)
        tokens = whisper.encode_text(wrd)
        yield torch.LongTensor(prompt + tokens)
        yield torch.LongTensor(tokens + [whisper.eot])
        yield len(prompt)

    train = datasets["train"]
    builder = examples.TrainingExamples(
        {utt_id: train.data[utt_id] for utt_id in train.data_ids},  # usable rows, in order
        whisper,
        hparams["seed"],
        hparams["timestamp_probability"],
        hparams["longform_probability"],
        hparams["condition_on_prev_probability"],
    )
    hparams["training_examples"] = builder if builder.active else None

    @sb.utils.data_pipeline.takes("id")
    @sb.utils.data_pipeline.provides(
        "plan", "target_text", "tokens_bos", "tokens_eos", "prompt_len"
    )
    def example_pipeline(utt_id):
        """This epoch's example of the row (``TrainingExamples``): its plan, text and tokens."""
        plan = builder.plan(utt_id)
        yield plan
        yield builder.text(plan)
        tokens_bos, tokens_eos, prompt_len = builder.tokens(plan)
        yield torch.LongTensor(tokens_bos)
        yield torch.LongTensor(tokens_eos)
        yield prompt_len

    # Long-form examples join utterances' audio: their encoder output cannot come from the
    # per-utterance cache.
    cache_train = encoder_cache.use_cache(
        hparams["encoder_cache"], whisper, hparams["augment"]
    ) and not (builder.active and builder.longform_probability > 0)
    cache_eval = encoder_cache.use_cache(hparams["encoder_cache"], whisper, augment=False)
    if cache_train or cache_eval:
        cache = encoder_cache.EncoderCache(hparams["encoder_cache_folder"], whisper)
    for name, dataset in datasets.items():
        examples_here = name == "train" and builder.active
        dataset.add_dynamic_item(example_pipeline if examples_here else text_pipeline)
        audio_key = "sig"
        if cache_train if name == "train" else cache_eval:
            entries = run_on_main(cache.prepare, args=[dataset])  # built once, read by all
            dataset.add_dynamic_item(
                lambda utt_id, entries=entries: encoder_cache.load_entry(entries[utt_id]),
                takes="id",
                provides="frozen_out",
            )
            audio_key = "frozen_out"
        elif examples_here:
            dataset.add_dynamic_item(builder.audio, takes="plan", provides="sig")
        else:
            dataset.add_dynamic_item(audio_pipeline)
        columns = manifests.columns(dataset)
        group_keys = [c for c in group_columns(hparams["group_columns"]) if c in columns]
        dataset.set_output_keys(
            ["id", audio_key, "duration", "wrd", "target_text", "tokens_bos", "tokens_eos"]
            + ["prompt_len", *group_keys]
        )
    if hparams["sanity_utterances"]:  # sanity mode batches its own repeated subset
        return datasets
    if hparams["sorting"] != "random":
        datasets["train"] = datasets["train"].filtered_sorted(
            sort_key="duration", reverse=hparams["sorting"] == "descending"
        )
        hparams["train_loader_kwargs"]["shuffle"] = False
    if hparams["dynamic_batching"]:
        # Batches of a bounded total duration or decoder tokens, reshuffled every epoch.
        hparams["train_loader_kwargs"] = {
            "batch_sampler": batching.dynamic_batch_sampler(
                datasets["train"],
                hparams["dynamic_batch_length"],
                whisper,
                hparams["dynamic_batch_sampler"],
            ),
            "num_workers": hparams["num_workers"],
        }
    return datasets


def main(argv):
    """Prepare data, fine-tune, then evaluate every test set with the selected checkpoint."""
    hparams_file, run_opts, overrides = sb.parse_arguments(distributed.accept_launch_flag(argv))
    try:  # the yaml builds the model: a wrong checkpoint or language fails here
        hparams, base_file, merged_overrides = load_hparams(hparams_file, overrides, run_opts)
    except (HparamsError, ValueError, OSError) as error:
        sys.exit(f"error: {str(error).strip().splitlines()[0]}")
    precision = run_opts.precision if "precision" in run_opts.overridden_args else None
    if (precision or hparams["precision"]) == "fp16" and not torch.cuda.is_available():
        sys.exit("error: precision fp16 needs a CUDA GPU; use --precision=bf16 or fp32 on CPU")
    if hparams["adamw_8bit"]:
        hparams["optimizer"] = optimizers.adamw_8bit(hparams)
    try:  # before anything is written into the folder
        with run_lock.holding(hparams["output_folder"]):
            fine_tune(hparams, run_opts, base_file, merged_overrides)
    except run_lock.FolderLocked as error:
        sys.exit(f"error: {error}")


def fine_tune(hparams, run_opts, base_file, merged_overrides):
    """Prepare data, fine-tune, then evaluate every test set with the selected checkpoint."""
    stopping.install()
    distributed.init_group(run_opts)
    trains = provenance.check_rerun(hparams)  # a checkpoint's data and settings stay its own
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=str(base_file) if trains else None,
        overrides=merged_overrides,
    )
    resilience.install_one_line_errors()
    if not hparams["skip_prep"]:
        try:
            run_on_main(
                data_prep.prepare,
                args=[hparams["dataset"], hparams["data_folder"], hparams["manifest_folder"]],
                kwargs=hparams["prep_options"],
            )
        except (OSError, ValueError, RuntimeError) as error:
            sys.exit(f"error: data preparation failed: {error}")
    whisper = hparams["whisper"]
    try:  # a language Whisper or this checkpoint lacks stops the run before anything is written
        manifests.check_languages(
            manifests.named_manifests(
                hparams["train_csv"], hparams["valid_csv"], hparams["test_csv"]
            ),
            hparams["data_folder"],
            whisper,
        )
    except (manifests.DataError, ValueError) as error:
        sys.exit(f"error: {error}")
    data_checks.check_before_training(hparams, whisper)
    try:
        datasets = dataio_prepare(hparams, whisper)
    except (manifests.DataError, ValueError) as error:
        sys.exit(f"error: {error}")
    if hparams["sanity_utterances"]:
        if distributed.is_distributed():
            sys.exit("error: sanity mode runs on one process: start it without torchrun")
        sys.exit(sanity.run(WhisperFineTuning, hparams, datasets["train"], run_opts))

    try:
        asr_brain = make_brain(hparams, run_opts)
    except ValueError as error:  # mwer_init names no checkpoint
        sys.exit(f"error: {error}")
    provenance.start_from(hparams)  # init_from: an earlier run's checkpoint, in a new folder
    if trains and if_main_process():
        training_log.write_run_info(hparams, asr_brain.grad_accumulation_factor)
    test_sets = {name: d for name, d in datasets.items() if name not in ("train", "valid")}
    zero_shot_folder = os.path.join(hparams["output_folder"], "zero_shot")
    if hparams["zero_shot_eval"]:
        runs.decode_test_sets(asr_brain, test_sets, hparams, zero_shot_folder)
        run_on_main(runs.decode_longform_sets, args=[asr_brain, hparams, zero_shot_folder, True])

    stopping.defer(True)  # a stop request waits for the next optimizer step
    asr_brain.fit(
        hparams["epoch_counter"],
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs=hparams["train_loader_kwargs"],
        valid_loader_kwargs=hparams["valid_loader_kwargs"],
    )
    stopping.defer(False)
    if hparams["average_checkpoints"] > 1:
        averaging.average_best_epochs(asr_brain, datasets["valid"], hparams["valid_loader_kwargs"])
    # Training is over: mark it so, then keep only the selected end-of-epoch checkpoint
    # (with review_checkpoints, the min-loss and last ones too).
    if if_main_process():
        runs.mark_fit_done(hparams["save_folder"], hparams["number_of_epochs"])
    asr_brain.checkpointer.delete_checkpoints(
        num_to_keep=1, importance_keys=asr_brain.kept_checkpoints
    )

    metric = hparams["selection_metric"]
    runs.decode_test_sets(asr_brain, test_sets, hparams, hparams["output_folder"], min_key=metric)
    asr_brain.on_evaluate_start(min_key=metric)  # the long-form sets too: the kept checkpoint
    run_on_main(runs.decode_longform_sets, args=[asr_brain, hparams, hparams["output_folder"]])
    if hparams["zero_shot_eval"]:
        run_on_main(
            scoring.write_comparison,
            args=[hparams["output_folder"], next(iter(test_sets)), hparams["comparison_group"]],
        )
        if hparams["longform_test_csv"]:
            run_on_main(
                longform.write_comparison,
                args=[hparams["output_folder"], runs.longform_names(hparams)],
            )
    if hparams["diagnose_after_training"]:
        run_on_main(diagnose_run, args=[hparams["output_folder"]])


def group_columns(columns):
    """The columns summaries report per value: ``group_columns``, and always the language."""
    columns = list(columns)
    return columns if "language" in columns else [*columns, "language"]


def make_brain(hparams, run_opts, **overrides):
    """The recipe's Brain; ``overrides`` replace its arguments (e.g. ``checkpointer=None``)."""
    if hparams["keep_freed_memory"]:
        allocator.keep_freed_memory()
    arguments = {
        "modules": hparams["modules"],
        "opt_class": hparams["optimizer"],
        "hparams": hparams,
        "run_opts": run_opts,
        "checkpointer": hparams["checkpointer"],
    }
    return WhisperFineTuning(**{**arguments, **overrides})


if __name__ == "__main__":
    main(sys.argv[1:])
