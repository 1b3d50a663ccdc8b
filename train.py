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

import sys

import speechbrain as sb
import torch
from speechbrain.utils.distributed import run_on_main

from whisper_finetuning.common.errors import RecipeError
from whisper_finetuning.common.label_sources import LABEL_SOURCE, loss_weights
from whisper_finetuning.data import audio, checks, examples, manifests, pipelines, prepare
from whisper_finetuning.decoding import speculative
from whisper_finetuning.evaluation import scoring
from whisper_finetuning.evaluation.selection import SELECTION_METRICS
from whisper_finetuning.training import (
    distillation,
    distributed,
    mwer,
    optimizers,
    resilience,
    sanity,
    stages,
    stopping,
)
from whisper_finetuning.training.brain import FineTuningBrain, group_columns
from whisper_finetuning.training.config import load_hparams


class WhisperFineTuning(FineTuningBrain):
    """Fine-tunes Whisper on manifests; selects checkpoints by valid WER (selection_metric)."""

    def compute_forward(self, batch, stage):
        """Augment (training), run Whisper, and search transcripts outside training (and, with
        objective mwer, N-best lists scored with gradients in training)."""
        batch = batch.to(self.device)
        tokens_bos, tokens_bos_lens = batch.tokens_bos
        cached = hasattr(batch, "frozen_out")
        wavs, wav_lens = batch.frozen_out if cached else batch.sig
        if stage == sb.Stage.TRAIN and self.hparams.augment and not cached:
            wavs, wav_lens = self.hparams.wav_augment(wavs, wav_lens)
            tokens_bos = self.hparams.wav_augment.replicate_labels(tokens_bos)
            tokens_bos_lens = self.hparams.wav_augment.replicate_labels(tokens_bos_lens)
        hidden, states = self.modules.whisper(  # projected in compute_objectives' loss
            wavs,
            wav_lens,
            tokens_bos,
            tokens_bos_lens,
            cached=cached,
            project=False,
            utterance_ids=batch.id if stage == sb.Stage.TRAIN else None,
        )
        if stage == sb.Stage.TRAIN and self.hparams.objective != "mwer":
            if self.distiller is None:
                return hidden, None
            audio = (None, None) if cached else (wavs, wav_lens)  # the teacher's, if needed
            return hidden, self.distiller.teacher_hidden(
                states, tokens_bos, tokens_bos_lens, *audio
            )
        # Searches start from each row's own prompt (its language).
        prompts = examples.row_prompts(tokens_bos, batch.prompt_len)
        if stage == sb.Stage.TRAIN:
            return hidden, mwer.n_best(self.hparams.whisper, states, self.mwer_search, prompts)
        search = self.hparams.valid_search if stage == sb.Stage.VALID else self.test_search
        return hidden, search(self.hparams.whisper, states, prompts)

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
        # Training scales pseudo-labelled rows' loss by pseudo_label_weight.
        sources = getattr(batch, LABEL_SOURCE, None) if stage == sb.Stage.TRAIN else None
        weights = loss_weights(sources, self.hparams.pseudo_label_weight)
        if weights is not None:
            weights = torch.tensor(weights, device=self.device)
            if self.hparams.augment and hasattr(batch, "sig"):
                weights = self.hparams.wav_augment.replicate_labels(weights)
        distill = None
        if stage == sb.Stage.TRAIN and self.distiller is not None:  # searched: teacher states
            distill = self.distiller.targets(searched, prompt_lens, tokens_eos.shape[1])
        loss, token_stats = self.hparams.nll_loss(
            self.hparams.whisper.model.proj_out,
            hidden,
            tokens_eos,
            tokens_eos_lens,
            statistics_rows=0 if stage == sb.Stage.TEST else len(batch.id),  # not the copies
            entropy=stage == sb.Stage.VALID,
            row_weights=weights,
            distillation=distill,
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
            self.log_training_utterances(batch, token_stats, groups)
            return self.with_l2sp(loss)  # + l2sp_weight x squared distance to pretrained
        if stage == sb.Stage.VALID:
            self.valid_token_stats.append(token_stats)
        self.score(batch, searched, token_stats, groups)
        return loss

    def on_fit_batch_start(self, batch, should_step):
        """Set the Noam rate before each optimizer step (not per accumulated batch)."""
        super().on_fit_batch_start(batch, should_step)
        if should_step:
            self.hparams.lr_annealing(self.optimizer)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Log the epoch; keep the best checkpoint by selection_metric; write test summaries."""
        super().on_stage_end(stage, stage_loss, epoch)
        if stage == sb.Stage.TRAIN:
            self.end_training_epoch()
            return
        stage_loss = self.gather_stage(stage_loss)  # under DDP: all processes' utterances
        summary = self.write_summary(stage, epoch)
        stats = {"loss": stage_loss, **{key: summary[key.lower()] for key in SELECTION_METRICS}}
        if stage == sb.Stage.VALID:
            lr = self.optimizer.param_groups[0]["lr"]
            meta = {"epoch": epoch, "lr": lr, "optimizer_steps": self.optimizer_step}
            self.hparams.train_logger.log_stats(
                stats_meta=meta, train_stats=self.train_stats, valid_stats=stats
            )
            self.log_valid_epoch(meta, stats, summary)
            self.keep_checkpoints(meta={**stats, "epoch": epoch})
        else:
            self.hparams.train_logger.log_stats(
                stats_meta={"test set": self.test_name, "epoch": summary["epoch"]},
                test_stats=stats,
            )


def dataio_prepare(hparams, datasets, whisper):
    """Audio (or cached encoder output) and token pipelines on the checked datasets; returns
    them, the training loader's arguments and the training examples (None: plain rows)."""

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

    nonspeech = 0.0 if hparams["sanity_utterances"] else hparams["nonspeech_probability"]
    builder = pipelines.training_examples(datasets, whisper, hparams, nonspeech)  # + replay slots
    for name, dataset in datasets.items():
        if name == "train" and builder is not None:
            dataset.add_dynamic_item(pipelines.example_pipeline(builder))
        else:
            dataset.add_dynamic_item(text_pipeline)
    audio_keys = pipelines.add_audio(datasets, hparams, whisper, builder, audio_pipeline)
    for name, dataset in datasets.items():
        columns = manifests.columns(dataset)
        groups = [
            c for c in group_columns(hparams["group_columns"]) if c in columns and c != "language"
        ]
        dataset.set_output_keys(
            ["id", audio_keys[name], "duration", "wrd", "target_text", "tokens_bos"]
            + ["tokens_eos", "prompt_len", "language", *groups]
        )
    datasets["train"], train_loader_kwargs = pipelines.train_batches(
        datasets["train"], hparams["train_loader_kwargs"], hparams, whisper
    )
    return datasets, train_loader_kwargs, builder


def fine_tune(hparams, hparams_file, overrides, run_opts):
    """Prepare the data, check it, fine-tune, then evaluate with the selected checkpoint."""
    with stages.experiment(hparams, run_opts) as trains:
        sb.create_experiment_directory(
            experiment_directory=hparams["output_folder"],
            hyperparams_to_save=hparams_file if trains else None,
            overrides=overrides,
        )
        resilience.install_one_line_errors()
        if not hparams["skip_prep"]:
            run_on_main(
                prepare.prepare_or_fail,
                args=[hparams["dataset"], hparams["data_folder"], hparams["manifest_folder"]],
                kwargs=hparams["prep_options"],
            )

        whisper = hparams["whisper"]
        normalize = scoring.Normalizers.of(hparams["normalizer"], whisper)
        named = manifests.named_manifests(  # + replay and non-speech rows, the keep test set
            hparams["train_csv"], hparams["valid_csv"], hparams["test_csv"],
            manifests.training_sources(hparams), hparams["keep_test_csv"],
        )  # fmt: skip
        datasets = checks.before_training(hparams, whisper, named, normalize, hparams["on_bad_row"])
        datasets = sanity.select(datasets, hparams["sanity_utterances"])
        datasets, longform_rows = manifests.split_longform(datasets)  # test rows over 30 s
        datasets, loader_kwargs, train_examples = dataio_prepare(hparams, datasets, whisper)
        if hparams["sanity_utterances"]:  # overfit a few utterances instead of fine-tuning
            sanity.run(WhisperFineTuning, hparams, datasets["train"], run_opts, normalize=normalize)
            return

        distiller = distillation.from_hparams(hparams)  # cuts the student first
        test_search = speculative.assisted_search(hparams, hparams["test_search"])  # or drafted
        asr_brain = WhisperFineTuning(
            modules=hparams["modules"],
            opt_class=optimizers.adamw_8bit(hparams)
            if hparams["adamw_8bit"]
            else hparams["optimizer"],
            hparams=hparams,
            run_opts=run_opts,
            checkpointer=hparams["checkpointer"],
            normalize=normalize,
            training_examples=train_examples,
            distiller=distiller,
            longform_rows=longform_rows,  # decoded long-form with their test sets
            test_search=test_search,
            sharding=hparams["sharding"],  # fsdp: the model sharded over torchrun's processes
        )
        test_sets = {n: d for n, d in datasets.items() if n not in ("train", "valid")}
        zero_shot, test_loader_kwargs = hparams["zero_shot_eval"], hparams["test_loader_kwargs"]
        stages.start(asr_brain, hparams, trains, test_sets, test_loader_kwargs, zero_shot)

        with stopping.deferred():  # a stop request waits for the next optimizer step
            asr_brain.fit(
                hparams["epoch_counter"],
                datasets["train"],
                datasets["valid"],
                train_loader_kwargs=loader_kwargs,
                valid_loader_kwargs=hparams["valid_loader_kwargs"],
            )

        stages.finish(
            asr_brain,
            datasets["valid"],
            test_sets,
            hparams,
            test_loader_kwargs,
            selection_metric=hparams["selection_metric"],
            zero_shot=zero_shot,
            longform_test_csv=hparams["longform_test_csv"],
            comparison_group=hparams["comparison_group"],
        )


def main(argv):
    """Fine-tune with ``python train.py HPARAMS [--key=value ...]``; one ``error:`` line and
    exit status 1 for what a user can fix."""
    try:
        argv = distributed.accept_launch_flag(argv)
        hparams_file, run_opts, overrides = sb.parse_arguments(argv)
        # The yaml builds the model: a wrong checkpoint or language fails here.
        hparams, overrides = load_hparams(hparams_file, overrides, run_opts)
    except (RecipeError, ValueError, OSError) as error:
        sys.exit(f"error: {str(error).strip().splitlines()[0]}")
    try:
        fine_tune(hparams, hparams_file, overrides, run_opts)
    except RecipeError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main(sys.argv[1:])
