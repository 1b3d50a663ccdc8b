"""What the recipe's datasets read besides audio and tokens: this epoch's training examples
in Whisper's own formats, cached encoder outputs, and how training batches are formed."""

import torch
from speechbrain.utils.data_pipeline import provides, takes
from speechbrain.utils.distributed import run_on_main

from whisper_finetuning.data import batching, encoder_cache, examples


def training_examples(train_set, whisper, hparams):
    """The training rows' examples (timestamps, long form, previous text, non-speech rows'
    no-speech target), or None when every row trains as a plain transcript."""
    builder = examples.TrainingExamples(
        {utt_id: train_set.data[utt_id] for utt_id in train_set.data_ids},  # usable rows
        whisper,
        hparams["seed"],
        hparams["timestamp_probability"],
        hparams["longform_probability"],
        hparams["condition_on_prev_probability"],
        nonspeech_target=hparams["objective"] != "mwer",  # mwer searches from plain prompts
    )
    return builder if builder.active else None


def example_pipeline(builder):
    """This epoch's example of a row: its plan, text and tokens (``TrainingExamples``)."""

    @takes("id")
    @provides("plan", "target_text", "tokens_bos", "tokens_eos", "prompt_len")
    def pipeline(utt_id):
        plan = builder.plan(utt_id)
        yield plan
        yield builder.text(plan)
        tokens_bos, tokens_eos, prompt_len = builder.tokens(plan)
        yield torch.LongTensor(tokens_bos)
        yield torch.LongTensor(tokens_eos)
        yield prompt_len

    return pipeline


def add_audio(datasets, hparams, whisper, builder, audio_pipeline):
    """Give each dataset its audio: cached encoder output (``frozen_out``) where the cache
    applies, the joined audio of long-form examples, else ``audio_pipeline`` (``sig``);
    returns each dataset's audio key."""
    # Long-form examples join utterances' audio: their encoder output cannot come from the
    # per-utterance cache.
    joins_audio = builder is not None and builder.longform_probability > 0
    use = {
        "train": encoder_cache.use_cache(hparams["encoder_cache"], whisper, hparams["augment"])
        and not joins_audio,
        "eval": encoder_cache.use_cache(hparams["encoder_cache"], whisper, augment=False),
    }
    if any(use.values()):
        cache = encoder_cache.EncoderCache(hparams["encoder_cache_folder"], whisper)
    keys = {}
    for name, dataset in datasets.items():
        if use["train" if name == "train" else "eval"]:
            entries = run_on_main(cache.prepare, args=[dataset])  # built once, read by all
            dataset.add_dynamic_item(
                lambda utt_id, wav, entries=entries: cache.load(entries[utt_id], wav),
                takes=["id", "wav"],
                provides="frozen_out",
            )
            keys[name] = "frozen_out"
            continue
        if name == "train" and builder is not None:
            dataset.add_dynamic_item(builder.audio, takes="plan", provides="sig")
        else:
            dataset.add_dynamic_item(audio_pipeline)
        keys[name] = "sig"
    return keys


def train_batches(train_set, loader_kwargs, hparams, whisper):
    """The training set in its order and the training loader's arguments: sorted by duration
    (``sorting``), or batches of a bounded total length reshuffled every epoch
    (``dynamic_batching``), else ``loader_kwargs``."""
    loader_kwargs = dict(loader_kwargs)
    if hparams["sorting"] != "random":
        descending = hparams["sorting"] == "descending"
        train_set = train_set.filtered_sorted(sort_key="duration", reverse=descending)
        loader_kwargs["shuffle"] = False
    if hparams["dynamic_batching"]:
        sampler = batching.dynamic_batch_sampler(
            train_set,
            hparams["dynamic_batch_length"],
            whisper,
            hparams["dynamic_batch_sampler"],
        )
        loader_kwargs = {"batch_sampler": sampler, "num_workers": hparams["num_workers"]}
    return train_set, loader_kwargs
