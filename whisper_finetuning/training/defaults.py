"""Advanced settings: library defaults that the recipe yamls need not list.

Each key works like any hparam: a yaml may set it and the command line overrides it
(``--objective=mwer``, ``--sanity_utterances=8``); ``hparam_rules`` checks its value. The
docs name each group's page.
"""

ADVANCED = {
    # ---- data (docs/data-sources.md, docs/bad-input-and-faults.md) ----
    # Checks before training (python -m whisper_finetuning.check_data, <output>/data_report.md):
    # error stops on errors that skipping rows cannot fix (leakage, duplicate IDs); warn only
    # logs them; off skips them.
    "data_checks": "error",
    # random, ascending or descending (by duration).
    "sorting": "random",
    # Batches bounded by total length instead of batch_size, bucketed by duration (audio
    # seconds) or tokens (decoder positions; python -m whisper_finetuning.padding).
    "dynamic_batching": False,
    "dynamic_batch_length": "duration",
    "dynamic_batch_sampler": {
        "max_batch_length": 120,
        "num_buckets": 20,
        "shuffle": True,
        "batch_ordering": "random",
    },
    # ---- starting point ----
    # An earlier run's output folder whose selected checkpoint starts this run.
    "init_from": None,
    # ---- caches and memory (docs/adapters-and-memory.md, docs/speed.md) ----
    # Frozen-encoder outputs on disk: auto (when valid), true (require) or false; the folder
    # (null: <output_folder>/encoder_cache).
    "encoder_cache": "auto",
    "encoder_cache_folder": None,
    # Freed memory stays in the process for reuse (glibc): big tensors (each step's, each
    # encoder cache batch's) are not page-faulted in again every time.
    "keep_freed_memory": True,
    # AdamW with 8-bit states (bitsandbytes, CUDA only).
    "adamw_8bit": False,
    # ---- several GPUs (docs/fsdp.md) ----
    # Under torchrun: ddp (every process holds the whole model; DistributedDataParallel) or
    # fsdp (full fine-tuning with weights, gradients and AdamW states sharded: FSDP2).
    "sharding": "ddp",
    # ---- MWER (docs/mwer.md) ----
    # ce (label-smoothed cross-entropy) or mwer (expected word errors over N-best lists of
    # mwer_beam_size, + mwer_ce_weight x CE); mwer_init: a checkpoint folder or epoch to start
    # from.
    "objective": "ce",
    "mwer_beam_size": 4,
    "mwer_ce_weight": 0.01,
    "mwer_init": None,
    # ---- pseudo-labels and distillation (docs/pseudo-labels.md) ----
    # The loss of rows with label_source: pseudo (python -m whisper_finetuning.pseudo_label)
    # is scaled by this (1: as human-labelled rows).
    "pseudo_label_weight": 1.0,
    # Distillation: a teacher (experiment folder or model) adds distill_weight x KL to its
    # token distribution at distill_temperature (distil-whisper's 2); student_decoder_layers N
    # keeps N maximally spaced decoder layers of whisper_hub (null: all).
    "teacher": None,
    "distill_weight": 1.0,
    "distill_temperature": 2.0,
    "student_decoder_layers": None,
    # Speculative test decoding: this model (experiment folder or model; null: off) drafts,
    # the selected checkpoint verifies: its greedy transcripts, faster (test_beam_size: 1).
    "assistant": None,
    # ---- timestamps and long form (docs/timestamps-and-longform.md) ----
    # Shares of training rows in Whisper's own formats, drawn per (seed, epoch, utterance).
    "timestamp_probability": 0.0,
    "longform_probability": 0.0,
    "condition_on_prev_probability": 0.0,
    # Long-form test manifests (recordings over 30 s), decoded by openai/whisper's loop.
    "longform_test_csv": [],
    "longform_condition_on_previous_text": False,
    # ---- non-speech (docs/nonspeech.md): openai's transcribe rules in every search ----
    # A hypothesis too repetitive (compression ratio) or too unlikely (mean log-probability)
    # is decoded again by sampling at the next temperature; one where <|nospeech|> is more
    # likely than no_speech_threshold at the start and the text no likelier than
    # logprob_threshold is empty. OpenAI's defaults; null switches a rule off. Above
    # temperature 0, best_of samples are drawn and the likeliest per token kept (openai's CLI).
    "temperatures": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
    "compression_ratio_threshold": 2.4,
    "logprob_threshold": -1.0,
    "no_speech_threshold": 0.6,
    "best_of": 5,
    # The valid search's own temperatures (null: temperatures); [0.0] keeps the no-speech
    # skip and picks checkpoints by deterministic greedy output.
    "valid_temperatures": None,
    # Train it away: this share of training rows (drawn per seed, epoch and row) is replaced
    # by non-speech audio with the no-speech target: clips of nonspeech_csv (a manifest of
    # empty transcripts) or, when null, generated noise, tones and sweeps.
    "nonspeech_probability": 0.0,
    "nonspeech_csv": None,
    # Keep what Whisper knew: rows of replay_csv make replay_ratio of each epoch's training
    # rows (0.2: one per four training rows; drawn per seed and epoch); l2sp_weight adds
    # l2sp_weight x sum ||theta - theta_pretrained||^2 over the trained parameters (not halved);
    # keep_test_csv is decoded zero-shot and fine-tuned, forgetting_NAME.json/.md.
    "replay_csv": None,
    "replay_ratio": 0.2,
    "l2sp_weight": 0.0,
    "keep_test_csv": None,
    # ---- resilience (docs/bad-input-and-faults.md) ----
    # Intra-epoch checkpoints every so many minutes or batches (0: off).
    "ckpt_interval_minutes": 15,
    "ckpt_interval_steps": 0,
    # Batches with a non-finite loss are skipped; more than this many in an epoch stop the run.
    "nonfinite_patience": 3,
    # ---- after training (docs/diagnosis.md, docs/review.md) ----
    # Decode the test sets zero-shot first (demo_results.json, per comparison_group value).
    "zero_shot_eval": False,
    "comparison_group": "dialect",
    "diagnose_after_training": True,
    "tensorboard": False,
    # Also keep the min-loss and last checkpoints, for a review by ear.
    "review_checkpoints": False,
    # Average the N best epochs' weights into one more candidate (0 or 1: off).
    "average_checkpoints": 0,
    # ---- sanity mode (docs/diagnosis.md): overfit N utterances, fail unless WER reaches 0 ----
    "sanity_utterances": 0,
    "sanity_passes_per_epoch": 10,
    "sanity_max_epochs": 30,
    "sanity_lr": 0.001,
    "sanity_max_nll": 0.05,
    # ---- sweeps (docs/comparing-runs.md) ----
    # Decode the test sets (and zero-shot, long-form) after fit; a sweep's trials choose by
    # valid only, and the chosen trial's folder is rerun with it true to decode them.
    "decode_test_sets": True,
}
