#!/usr/bin/env python3
"""Fine-tune Whisper with SpeechBrain and keep the checkpoint with the lowest valid WER.

Training minimises a label-smoothed NLL over the transcript tokens; validation decodes
greedily and scores WER, which chooses the one checkpoint kept; the test sets are decoded with
beam search by that checkpoint. Loss and WER can disagree: the checkpoint is chosen by WER.

Example:
    python train.py hparams/whisper_small.yaml --data_folder=/path/to/data

Any hyperparameter can be overridden on the command line (``--lr=1e-4``).
"""

import json
import logging
import os
import sys
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.dataio.sampler import DynamicBatchSampler
from speechbrain.utils.distributed import run_on_main

from local import data_prep, dataio, distributed, encoder_cache, evaluation, resilience
from local.config import HparamsError, load_hparams
from local.decoding import beam_search, greedy_search

logger = logging.getLogger(__name__)

LOSS_EMA_DECAY = 0.98
SORTINGS = ("random", "ascending", "descending")


class WhisperFineTuning(resilience.ResilientBrain, sb.Brain):
    """Fine-tunes Whisper on manifests; selects checkpoints by valid WER."""

    resume_attributes = ("loss_ema", "epoch_loss_sum", "epoch_batches")

    def compute_forward(self, batch, stage):
        """Augment, encode, teacher-force the decoder, and search transcripts outside training."""
        batch = batch.to(self.device)
        whisper = self.modules.whisper
        tokens_bos, tokens_bos_lens = batch.tokens_bos
        if hasattr(batch, "frozen_out"):
            frozen_out, _ = batch.frozen_out
        else:
            wavs, wav_lens = batch.sig
            if stage == sb.Stage.TRAIN and self.hparams.augment:
                wavs, wav_lens = self.hparams.wav_augment(wavs, wav_lens)
                tokens_bos = self.hparams.wav_augment.replicate_labels(tokens_bos)
                tokens_bos_lens = self.hparams.wav_augment.replicate_labels(tokens_bos_lens)
            with torch.no_grad():
                frozen_out = whisper.encode_frozen(whisper.features(wavs, wav_lens))
        encoder_out = whisper.encode_trainable(frozen_out)

        # Positions past each sequence's end hold Whisper's pad token, not SpeechBrain's 0.
        positions = torch.arange(tokens_bos.shape[1], device=self.device)
        lengths = torch.round(tokens_bos_lens * tokens_bos.shape[1])
        tokens_bos = tokens_bos.masked_fill(positions[None] >= lengths[:, None], whisper.pad)

        logits = whisper.forward_decoder(tokens_bos, encoder_out)
        log_probs = torch.nn.functional.log_softmax(logits.float(), dim=-1)

        hyps = None
        if stage == sb.Stage.VALID:
            hyps = greedy_search(whisper, encoder_out, self.hparams.decode_max_tokens)
        elif stage == sb.Stage.TEST:
            hyps = beam_search(
                whisper,
                encoder_out,
                self.hparams.test_beam_size,
                self.hparams.decode_max_tokens,
                self.hparams.length_penalty,
            )
        return log_probs, hyps

    def compute_objectives(self, predictions, batch, stage):
        """Label-smoothed NLL over transcript tokens; WER/CER of the searched transcripts."""
        log_probs, hyps = predictions
        tokens_eos, tokens_eos_lens = batch.tokens_eos
        if stage == sb.Stage.TRAIN and self.hparams.augment and hasattr(batch, "sig"):
            tokens_eos = self.hparams.wav_augment.replicate_labels(tokens_eos)
            tokens_eos_lens = self.hparams.wav_augment.replicate_labels(tokens_eos_lens)
        # The last prompt position predicts the first transcript token.
        first = len(self.modules.whisper.prefix_tokens) - 1
        loss = self.hparams.nll_loss(log_probs[:, first:], tokens_eos, length=tokens_eos_lens)
        if hyps is not None:
            groups = {c: getattr(batch, c) for c in self.group_columns if hasattr(batch, c)}
            texts = [self.modules.whisper.decode_text(h) for h in hyps]
            self.scorer.append(batch.id, texts, batch.wrd, groups)
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

    def on_fit_start(self):
        """Recover the latest checkpoint; a finished run is not trained again."""
        self.loss_ema = None
        self.epoch_loss_sum, self.epoch_batches = 0.0, 0
        super().on_fit_start()
        counter = self.hparams.epoch_counter
        if os.path.exists(self.fit_done_file):
            with open(self.fit_done_file) as f:
                done_epochs = json.load(f)["epochs"]
            if done_epochs >= counter.limit:
                counter.current = counter.limit
            else:
                logger.warning(
                    "training had finished after %d epochs; continuing from the kept min-WER "
                    "checkpoint (epoch %d)",
                    done_epochs,
                    counter.current,
                )

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
            self.checkpointer.recover_if_possible(importance_key=evaluation.min_wer_earliest)

    def on_stage_start(self, stage, epoch=None):
        """Start a fresh scorer for validation and test."""
        if stage != sb.Stage.TRAIN:
            self.scorer = evaluation.Scorer(self.normalize, self.group_columns)

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
            folder, name = os.path.join(self.hparams.output_folder, "valid"), f"epoch{epoch}"
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
            evaluation.append_jsonl(
                os.path.join(self.hparams.output_folder, "epochs.jsonl"),
                {**stats_meta, "train_loss": self.train_stats["loss"], **stats},
            )
            # The latest state stays too, for resuming, until training is over.
            self.checkpointer.save_and_keep_only(
                meta={**stats, "epoch": epoch},
                importance_keys=[evaluation.min_wer_earliest],
                num_to_keep=1,
            )
        else:
            self.hparams.train_logger.log_stats(
                stats_meta={"test set": name, "epoch": summary["epoch"]}, test_stats=stats
            )
            lo, hi = summary["wer_ci95"]
            logger.info("%s: WER %.2f%% (95%% CI %.2f-%.2f)", name, summary["wer"], lo, hi)

    def selected_epoch(self):
        """The epoch of the checkpoint the test stage uses (None when zero-shot)."""
        if self.checkpointer is None or self.test_folder != self.hparams.output_folder:
            return None
        best = self.checkpointer.find_checkpoint(importance_key=evaluation.min_wer_earliest)
        return None if best is None else best.meta["epoch"]


def dataio_prepare(hparams, whisper):
    """Manifests -> checked datasets with audio (or cached encoder output) and token pipelines."""
    datasets = {"train": hparams["train_csv"], "valid": hparams["valid_csv"]}
    for csv in hparams["test_csv"]:  # outputs are named after each test manifest's stem
        if Path(csv).stem in datasets:
            raise ValueError(f"test manifest {csv}: its name '{Path(csv).stem}' is taken")
        datasets[Path(csv).stem] = csv
    datasets = {
        name: dataio.check_rows(
            dataio.load_manifest(csv, hparams["data_folder"]), name, whisper, hparams["on_bad_row"]
        )
        for name, csv in datasets.items()
    }

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        """Mono 16 kHz waveform."""
        return dataio.read_audio(wav)

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
        group_keys = [c for c in hparams["group_columns"] if c in dataio.columns(dataset)]
        dataset.set_output_keys(["id", audio_key, "wrd", "tokens_bos", "tokens_eos", *group_keys])
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
    try:
        datasets = dataio_prepare(hparams, whisper)
    except (dataio.DataError, ValueError) as error:
        sys.exit(f"error: {error}")

    asr_brain = WhisperFineTuning(
        modules=hparams["modules"],
        opt_class=hparams["optimizer"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    asr_brain.normalize = evaluation.text_normalizer(
        hparams["normalizer"], whisper.tokenizer, whisper.is_english
    )
    asr_brain.group_columns = hparams["group_columns"]
    asr_brain.train_sampler = hparams["train_loader_kwargs"].get("batch_sampler")
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
    # Training is over: mark it so, then keep only the min-WER end-of-epoch checkpoint.
    if sb.utils.distributed.if_main_process():
        evaluation.write_json(asr_brain.fit_done_file, {"epochs": hparams["number_of_epochs"]})
    asr_brain.checkpointer.delete_checkpoints(
        num_to_keep=1, importance_keys=[evaluation.min_wer_earliest]
    )

    evaluate(asr_brain, test_sets, hparams, hparams["output_folder"], min_key="WER")
    if hparams["zero_shot_eval"]:
        run_on_main(
            evaluation.write_comparison, args=[hparams["output_folder"], next(iter(test_sets))]
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
