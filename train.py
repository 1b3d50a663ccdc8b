#!/usr/bin/env python3
"""Fine-tune Whisper with SpeechBrain and keep the checkpoint with the lowest valid WER.

Training minimises a label-smoothed NLL over the transcript tokens; validation decodes
greedily and scores WER, which chooses the one checkpoint kept; the test sets are decoded with
beam search by that checkpoint. Loss and WER can disagree: the checkpoint is chosen by WER.

Example:
    python train.py hparams/whisper_small.yaml --data_folder=/path/to/data

Any hyperparameter can be overridden on the command line (``--lr=1e-4``).
"""

import functools
import json
import logging
import os
import sys

import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.dataio.sampler import DynamicBatchSampler
from speechbrain.utils.checkpoints import ckpt_recency
from speechbrain.utils.distributed import run_on_main

from analysis.diagnosis.run import run as diagnose
from local import data_prep
from whisper_finetuning import audio, data_checks, encoder_cache, files, manifests, scoring
from whisper_finetuning.config import HparamsError, load_hparams
from whisper_finetuning.decoding import beam_search, greedy_search
from whisper_finetuning.training import distributed, resilience
from whisper_finetuning.training import log as training_log

logger = logging.getLogger(__name__)

LOSS_EMA_DECAY = 0.98
SORTINGS = ("random", "ascending", "descending")


class WhisperFineTuning(resilience.ResilientBrain, sb.Brain):
    """Fine-tunes Whisper on manifests; selects checkpoints by valid WER."""

    resume_attributes = ("loss_ema", "epoch_loss_sum", "epoch_batches")
    gathered_accumulators = ("valid_token_stats",)

    def compute_forward(self, batch, stage):
        """Augment, encode, teacher-force the decoder, and search transcripts outside training."""
        batch = batch.to(self.device)
        whisper = self.modules.whisper
        tokens_bos, tokens_bos_lens = batch.tokens_bos
        if hasattr(batch, "frozen_out"):
            groups = whisper.split_by_length(*batch.frozen_out)
        else:
            wavs, wav_lens = batch.sig
            if stage == sb.Stage.TRAIN and self.hparams.augment:
                wavs, wav_lens = self.hparams.wav_augment(wavs, wav_lens)
                tokens_bos = self.hparams.wav_augment.replicate_labels(tokens_bos)
                tokens_bos_lens = self.hparams.wav_augment.replicate_labels(tokens_bos_lens)
            with torch.no_grad():
                groups = whisper.encode_frozen_by_window(wavs, wav_lens)

        # Positions past each sequence's end hold Whisper's pad token, not SpeechBrain's 0.
        positions = torch.arange(tokens_bos.shape[1], device=self.device)
        lengths = torch.round(tokens_bos_lens * tokens_bos.shape[1])
        tokens_bos = tokens_bos.masked_fill(positions[None] >= lengths[:, None], whisper.pad)

        # Rows are encoded, decoded and searched per encoder window, then put back in order.
        order, logits, found = [], [], {}
        for rows, frozen_out in groups:
            encoder_out = whisper.encode_trainable(frozen_out)
            logits.append(whisper.forward_decoder(tokens_bos[rows], encoder_out))
            order += rows
            if stage != sb.Stage.TRAIN:
                hyps, looped = self.search(encoder_out, stage)
                found.update(zip(rows, zip(hyps, looped, strict=True), strict=True))
        if len(logits) > 1:
            logits = [torch.cat(logits)[torch.argsort(torch.tensor(order, device=self.device))]]
        log_probs = torch.nn.functional.log_softmax(logits[0].float(), dim=-1)
        searched = None  # (token lists, loop-stop flags) in batch order
        if found:
            searched = tuple(
                map(list, zip(*(found[row] for row in range(len(order))), strict=True))
            )
        return log_probs, searched

    def search(self, encoder_out, stage):
        """Greedy search on valid, beam search on test: token lists and loop-stop flags."""
        whisper = self.modules.whisper
        if stage == sb.Stage.VALID:
            return greedy_search(
                whisper, encoder_out, self.hparams.decode_max_tokens, self.hparams.loop_stop
            )
        return beam_search(
            whisper,
            encoder_out,
            self.hparams.test_beam_size,
            self.hparams.decode_max_tokens,
            self.hparams.length_penalty,
            self.hparams.loop_stop,
        )

    def compute_objectives(self, predictions, batch, stage):
        """Label-smoothed NLL over transcript tokens; WER/CER of the searched transcripts."""
        log_probs, searched = predictions
        tokens_eos, tokens_eos_lens = batch.tokens_eos
        if stage == sb.Stage.TRAIN and self.hparams.augment and hasattr(batch, "sig"):
            tokens_eos = self.hparams.wav_augment.replicate_labels(tokens_eos)
            tokens_eos_lens = self.hparams.wav_augment.replicate_labels(tokens_eos_lens)
        # The last prompt position predicts the first transcript token.
        first = len(self.modules.whisper.prefix_tokens) - 1
        loss = self.hparams.nll_loss(log_probs[:, first:], tokens_eos, length=tokens_eos_lens)
        token_stats = None
        if stage != sb.Stage.TEST:  # augmented copies follow the originals: first n rows
            n = len(batch.id)
            with torch.no_grad():
                token_stats = training_log.token_statistics(
                    log_probs[:n, first:],
                    tokens_eos[:n],
                    tokens_eos_lens[:n],
                    entropy=stage == sb.Stage.VALID,
                )
        if stage == sb.Stage.TRAIN:
            self.training_log.add_utterances(
                self.epoch,
                self.step / self.batches_per_epoch,
                batch.id,
                token_stats,
                [self.modules.whisper.decode_text(t) for t in token_stats["argmax"]],
                batch.wrd,
            )
        if stage == sb.Stage.VALID:
            self.valid_token_stats.append(token_stats)
        if searched is not None:
            hyps, looped = searched
            groups = {c: getattr(batch, c) for c in self.group_columns if hasattr(batch, c)}
            texts = [self.modules.whisper.decode_text(h) for h in hyps]
            extra = {"loop_stopped": looped}
            if token_stats is not None:  # each valid utterance's own loss, for paired analyses
                pairs = zip(token_stats["nll"], token_stats["tokens"], strict=True)
                extra["loss"] = [nll / max(tokens, 1) for nll, tokens in pairs]
                extra["tokens"] = token_stats["tokens"]
            self.scorer.append(batch.id, texts, batch.wrd, groups, batch.duration, extra)
        return loss

    def update_average(self, loss, avg_loss):
        """Training shows a moving average that, unlike a per-epoch mean, never resets."""
        if not self.modules.training or not torch.isfinite(loss):
            return super().update_average(loss, avg_loss)
        loss = float(loss)
        self.epoch_loss_sum += loss
        self.epoch_batches += 1
        if self.loss_ema is None:
            self.loss_ema = loss
        self.loss_ema = LOSS_EMA_DECAY * self.loss_ema + (1 - LOSS_EMA_DECAY) * loss
        return self.loss_ema

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """Log the raw loss, rate, tokens and audio of each optimizer step."""
        tokens = int(torch.round(batch.tokens_eos[1] * batch.tokens_eos[0].shape[1]).sum())
        seconds = sum(float(d) for d in batch.duration)
        self.training_log.add_batch(loss.detach(), tokens, seconds, len(batch.id))
        if should_step:
            self.training_log.end_step(
                epoch=self.epoch,
                step=self.optimizer_step,
                epoch_step=-(-self.step // self.grad_accumulation_factor),
                position=self.step / self.batches_per_epoch,
                lr=self.optimizer.param_groups[0]["lr"],
                augmented=bool(self.hparams.augment and hasattr(batch, "sig")),
            )

    def make_dataloader(self, dataset, stage, **loader_kwargs):
        """SpeechBrain's loader; the training one's length gives each step's epoch position."""
        loader = super().make_dataloader(dataset, stage, **loader_kwargs)
        if stage == sb.Stage.TRAIN:
            self.batches_per_epoch = len(loader)
        return loader

    def on_fit_start(self):
        """Recover the latest checkpoint; a finished run is not trained again."""
        self.loss_ema = None
        self.epoch_loss_sum, self.epoch_batches = 0.0, 0
        self.training_log = training_log.TrainingLog(
            os.path.join(self.output_folder, "log"),
            enabled=sb.utils.distributed.if_main_process(),
            tensorboard=self.hparams.tensorboard,
        )
        super().on_fit_start()
        counter = self.hparams.epoch_counter
        if self.checkpointer is not None and os.path.exists(self.fit_done_file):
            with open(self.fit_done_file) as f:
                done_epochs = json.load(f)["epochs"]
            if done_epochs >= counter.limit:
                counter.current = counter.limit
            else:
                logger.warning(
                    "training had finished after %d epochs; continuing from the kept "
                    "checkpoint of epoch %d",
                    done_epochs,
                    counter.current,
                )

    @property
    def kept_checkpoints(self):
        """Importance keys of the checkpoints kept: min WER; for review also min loss and last."""
        if self.hparams.review_checkpoints:
            return [scoring.min_wer_earliest, scoring.min_loss_earliest, ckpt_recency]
        return [scoring.min_wer_earliest]

    @property
    def fit_done_file(self):
        """Marks a finished fit: only the min-WER checkpoint is left, not the last state."""
        return os.path.join(self.hparams.save_folder, "fit_done.json")

    def on_fit_batch_start(self, batch, should_step):
        """Set the Noam rate before each optimizer step (not per accumulated batch)."""
        if should_step:
            self.hparams.lr_annealing(self.optimizer)

    def on_evaluate_start(self, max_key=None, min_key=None):
        """Load the min-WER checkpoint (ties: the earlier epoch); ``min_key=None`` keeps weights."""
        if min_key == "WER":
            self.checkpointer.recover_if_possible(importance_key=scoring.min_wer_earliest)

    def on_stage_start(self, stage, epoch=None):
        """Note the epoch; start a fresh scorer (and token statistics) for valid and test."""
        self.epoch = epoch
        if stage != sb.Stage.TRAIN:
            self.scorer = scoring.Scorer(self.normalize, self.group_columns)
            self.valid_token_stats = training_log.ValidTokenStats()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Log the epoch; keep the min-WER checkpoint; write test summaries."""
        if stage == sb.Stage.TRAIN:
            self.train_stats = {
                "loss": distributed.global_ratio(self.epoch_loss_sum, self.epoch_batches)
            }
            self.epoch_loss_sum, self.epoch_batches = 0.0, 0
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
        stats = {"loss": stage_loss, "WER": summary["wer"], "CER": summary["cer"]}
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
                    "train_loss": self.train_stats["loss"],
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
                num_to_keep=1,
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
        best = self.checkpointer.find_checkpoint(importance_key=scoring.min_wer_earliest)
        return None if best is None else best.meta["epoch"]


def dataio_prepare(hparams, whisper):
    """Manifests -> checked datasets with audio (or cached encoder output) and token pipelines."""
    named = manifests.named_manifests(
        hparams["train_csv"], hparams["valid_csv"], hparams["test_csv"]
    )
    datasets = {
        name: manifests.check_rows(
            manifests.load_manifest(csv, hparams["data_folder"]),
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

    @sb.utils.data_pipeline.takes("wrd")
    @sb.utils.data_pipeline.provides("wrd", "tokens_bos", "tokens_eos")
    def text_pipeline(wrd):
        """Transcript, prompt + transcript tokens (decoder input), transcript + EOT (targets)."""
        yield wrd
        tokens = whisper.encode_text(wrd)
        yield torch.LongTensor(whisper.prefix_tokens + tokens)
        yield torch.LongTensor(tokens + [whisper.eot])

    cache_train = encoder_cache.use_cache(hparams["encoder_cache"], whisper, hparams["augment"])
    cache_eval = encoder_cache.use_cache(hparams["encoder_cache"], whisper, augment=False)
    if cache_train or cache_eval:
        cache = encoder_cache.EncoderCache(hparams["encoder_cache_folder"], whisper)
    for name, dataset in datasets.items():
        dataset.add_dynamic_item(text_pipeline)
        audio_key = "sig"
        if cache_train if name == "train" else cache_eval:
            entries = run_on_main(cache.prepare, args=[dataset])  # built once, read by all
            dataset.add_dynamic_item(
                lambda utt_id, entries=entries: encoder_cache.load_entry(entries[utt_id]),
                takes="id",
                provides="frozen_out",
            )
            audio_key = "frozen_out"
        else:
            dataset.add_dynamic_item(audio_pipeline)
        group_keys = [c for c in hparams["group_columns"] if c in manifests.columns(dataset)]
        dataset.set_output_keys(
            ["id", audio_key, "duration", "wrd", "tokens_bos", "tokens_eos", *group_keys]
        )
    if hparams["sanity_utterances"]:  # sanity mode batches its own repeated subset
        datasets["valid"] = datasets["train"]
        return datasets
    if hparams["sorting"] not in SORTINGS:
        raise ValueError(f"sorting must be one of {SORTINGS}, not '{hparams['sorting']}'")
    if hparams["sorting"] != "random":
        datasets["train"] = datasets["train"].filtered_sorted(
            sort_key="duration", reverse=hparams["sorting"] == "descending"
        )
        hparams["train_loader_kwargs"]["shuffle"] = False
    if hparams["dynamic_batching"]:
        # Batches of a bounded total duration, reshuffled every epoch (set_epoch).
        hparams["train_loader_kwargs"] = {
            "batch_sampler": DynamicBatchSampler(
                datasets["train"],
                length_func=lambda row: float(row["duration"]),
                **hparams["dynamic_batch_sampler"],
            ),
            "num_workers": hparams["num_workers"],
        }
    return datasets


def main(argv):
    """Prepare data, fine-tune, then evaluate every test set with the min-WER checkpoint."""
    hparams_file, run_opts, overrides = sb.parse_arguments(distributed.accept_launch_flag(argv))
    try:  # the yaml builds the model: a wrong checkpoint or language fails here
        hparams, base_file, merged_overrides = load_hparams(hparams_file, overrides)
    except (HparamsError, ValueError, OSError) as error:
        sys.exit(f"error: {str(error).strip().splitlines()[0]}")
    precision = run_opts.precision if "precision" in run_opts.overridden_args else None
    if (precision or hparams["precision"]) == "fp16" and not torch.cuda.is_available():
        sys.exit("error: precision fp16 needs a CUDA GPU; use --precision=bf16 or fp32 on CPU")
    distributed.init_group(run_opts)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=str(base_file),
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
    data_checks.check_before_training(hparams, whisper)
    try:
        datasets = dataio_prepare(hparams, whisper)
    except (manifests.DataError, ValueError) as error:
        sys.exit(f"error: {error}")
    if hparams["sanity_utterances"]:
        if distributed.is_distributed():
            sys.exit("error: sanity mode runs on one process: start it without torchrun")
        sys.exit(sanity_check(hparams, datasets, run_opts))

    asr_brain = make_brain(WhisperFineTuning, hparams, run_opts, hparams["output_folder"])
    if sb.utils.distributed.if_main_process():
        training_log.write_run_info(hparams, asr_brain.grad_accumulation_factor)
    test_sets = {name: d for name, d in datasets.items() if name not in ("train", "valid")}

    if hparams["zero_shot_eval"]:
        evaluate(asr_brain, test_sets, hparams, os.path.join(hparams["output_folder"], "zero_shot"))

    asr_brain.fit(
        asr_brain.hparams.epoch_counter,
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs=hparams["train_loader_kwargs"],
        valid_loader_kwargs=hparams["valid_loader_kwargs"],
    )
    # Training is over: mark it so, then keep only the min-WER end-of-epoch checkpoint
    # (with review_checkpoints, the min-loss and last ones too).
    if sb.utils.distributed.if_main_process():
        files.write_json(asr_brain.fit_done_file, {"epochs": hparams["number_of_epochs"]})
    asr_brain.checkpointer.delete_checkpoints(
        num_to_keep=1, importance_keys=asr_brain.kept_checkpoints
    )

    evaluate(asr_brain, test_sets, hparams, hparams["output_folder"], min_key="WER")
    if hparams["zero_shot_eval"]:
        run_on_main(
            scoring.write_comparison, args=[hparams["output_folder"], next(iter(test_sets))]
        )
    if hparams["diagnose_after_training"]:
        run_on_main(diagnose_run, args=[hparams["output_folder"]])


def diagnose_run(output_folder):
    """Explain the run's loss/WER curves (python -m tools.diagnose); a failure here only warns."""
    try:
        found = diagnose(output_folder)
    except Exception as error:  # the trained model and its results are already written
        logger.warning("diagnostics failed, training results are unaffected: %r", error)
        return
    for sentence in found["verdict"]:
        logger.info("diagnosis: %s", sentence)


def make_brain(brain_class, hparams, run_opts, output_folder, **overrides):
    """A Brain of ``brain_class`` writing into ``output_folder``; ``overrides`` replace
    Brain arguments (e.g. ``checkpointer=None``)."""
    arguments = {
        "modules": hparams["modules"],
        "opt_class": hparams["optimizer"],
        "hparams": hparams,
        "run_opts": run_opts,
        "checkpointer": hparams["checkpointer"],
        **overrides,
    }
    brain = brain_class(**arguments)
    whisper = hparams["whisper"]
    brain.normalize = scoring.text_normalizer(
        hparams["normalizer"], whisper.tokenizer, whisper.is_english
    )
    brain.group_columns = hparams["group_columns"]
    brain.train_sampler = hparams["train_loader_kwargs"].get("batch_sampler")
    brain.output_folder = output_folder
    return brain


class SanityCheck(WhisperFineTuning):
    """Overfits a few utterances at a constant rate, without label smoothing, until it
    reproduces them, or gives up."""

    def on_fit_batch_start(self, batch, should_step):
        """A constant rate: no warmup to wait for."""

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Score the utterances just trained on; stop once WER is 0 and the loss near 0."""
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


def sanity_check(hparams, datasets, run_opts):
    """Overfit ``sanity_utterances`` training utterances; a message if that fails, else None."""
    folder = os.path.join(hparams["output_folder"], "sanity")
    optimizer = functools.partial(hparams["optimizer"], lr=hparams["sanity_lr"])
    brain = make_brain(
        SanityCheck, hparams, run_opts, folder, opt_class=optimizer, checkpointer=None
    )
    brain.grad_accumulation_factor = 1  # few, small batches: step on every one
    # Label smoothing keeps the loss off zero by design: the check trains without it.
    brain.hparams.nll_loss = functools.partial(hparams["nll_loss"], label_smoothing=0.0)
    brain.train_sampler = None
    brain.epoch_counter = sb.utils.epoch_loop.EpochCounter(hparams["sanity_max_epochs"])
    # An epoch passes over the utterances several times: decoding them is the costly part.
    repeated = torch.utils.data.ConcatDataset(
        [datasets["train"]] * hparams["sanity_passes_per_epoch"]
    )
    train_loader_kwargs = {
        **hparams["train_loader_kwargs"],
        "shuffle": True,
        "collate_fn": PaddedBatch,
    }
    brain.fit(
        brain.epoch_counter,
        repeated,
        datasets["valid"],
        train_loader_kwargs=train_loader_kwargs,
        valid_loader_kwargs=hparams["valid_loader_kwargs"],
    )
    result = brain.result
    if brain.reproduced():
        logger.info(
            "sanity check passed: %d utterances reproduced after %d epochs (NLL %.4f)",
            len(datasets["train"]),
            result["epoch"],
            result["nll"],
        )
        return None
    return (
        f"error: sanity check FAILED: after {result['epoch']} epochs on "
        f"{len(datasets['train'])} utterances, WER {result['wer']:.2f}% and NLL "
        f"{result['nll']:.3f} (bound {hparams['sanity_max_nll']}): the model cannot learn "
        "its own training data; check labels, tokens and masks (see "
        f"{folder}/valid/utterances_last.jsonl)"
    )


def evaluate(asr_brain, test_sets, hparams, folder, min_key=None):
    """Decode every test set into ``folder``; ``min_key=None`` keeps the current weights."""
    asr_brain.test_folder = folder
    for name, dataset in test_sets.items():
        if min_key is None and _decoded_already(folder, name, hparams, dataset):
            continue  # zero-shot results do not change: computed once
        asr_brain.test_name = name
        asr_brain.evaluate(
            dataset, min_key=min_key, test_loader_kwargs=hparams["test_loader_kwargs"]
        )


def _decoded_already(folder, name, hparams, dataset):
    """True if ``folder`` holds this test set's results from the same model and utterances."""
    path = os.path.join(folder, f"summary_{name}.json")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        summary = json.load(f)
    same_model = summary.get("model") == str(hparams["whisper_hub"])
    return same_model and summary["n_utterances"] == len(dataset)


if __name__ == "__main__":
    main(sys.argv[1:])
