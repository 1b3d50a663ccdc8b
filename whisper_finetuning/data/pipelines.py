"""What the recipe's datasets read besides audio and tokens: this epoch's training examples
in Whisper's own formats, cached encoder outputs, and how training batches are formed."""

import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.data_pipeline import provides, takes
from speechbrain.utils.distributed import run_on_main

from whisper_finetuning.data import batching, encoder_cache, examples
from whisper_finetuning.data.manifests import NONSPEECH, REPLAY, DataError
from whisper_finetuning.evaluation.text import is_nonspeech

REPLAY_SLOT = "replay:{}"  # the IDs of the training set's replay slots
REPLAY_ROW, NONSPEECH_CLIP = "replay/{}", "nonspeech/{}"  # replay rows', clips' keys


def usable_rows(dataset, key="{}"):
    """A checked dataset's usable rows in manifest order, ``{key.format(ID): row}``."""
    return {key.format(utt_id): dataset.data[utt_id] for utt_id in dataset.data_ids}


def replay_slot_count(n_train, ratio):
    """How many replay slots ``n_train`` training rows get: ``ratio`` of the mixed set is
    replay, ``round(n_train * ratio / (1 - ratio))`` (0.2: one per four training rows)."""
    return round(n_train * ratio / (1 - ratio))


def with_replay_slots(train_set, replay_rows, ratio):
    """The training set with ``replay_slot_count`` replay slots after its rows, and their IDs.

    A slot's own columns only size it for sorting and dynamic batching (the longest duration
    and transcript of the replay rows) and group it in the training log (``replay`` in every
    other column, such as ``spk_id`` and ``label_source``: a replay row's loss is never
    weighted as pseudo-labelled); its audio and tokens are the replay row it holds in an epoch
    (``TrainingExamples.replayed``).
    """
    rows = usable_rows(train_set)
    count = replay_slot_count(len(rows), ratio)
    slots = [REPLAY_SLOT.format(k) for k in range(count)]
    taken = [slot for slot in slots if slot in rows]
    if taken:
        raise DataError(f"training row ID '{taken[0]}' is a replay slot's: rename it")
    longest = {
        "duration": max(float(row["duration"]) for row in replay_rows.values()),
        "wrd": max((row["wrd"] for row in replay_rows.values()), key=len),
    }
    first_replay, first_train = next(iter(replay_rows.values())), next(iter(rows.values()))
    filler = {column: REPLAY for column in first_train}  # group columns: "replay"
    filler |= {c: first_replay.get(c, first_train[c]) for c in ("wav", "language") if c in filler}
    filler |= longest
    return DynamicItemDataset({**rows, **{slot: dict(filler) for slot in slots}}), slots


def training_examples(datasets, whisper, hparams, nonspeech_probability):
    """The training rows' examples (timestamps, long form, previous text, non-speech rows'
    no-speech target, a ``nonspeech_probability`` share of rows replaced by non-speech (0 in
    sanity mode, which overfits the rows' own transcripts), replay), or None when every row
    trains as a plain transcript. Takes the replay and non-speech sets out of ``datasets``;
    with replay, ``datasets["train"]`` gains the replay slots."""
    sources = {name: datasets.pop(name, None) for name in (REPLAY, NONSPEECH)}
    train_rows, slots, replay, clips = usable_rows(datasets["train"]), (), None, None
    if sources[REPLAY] is not None:
        replay = usable_rows(sources[REPLAY], REPLAY_ROW)
        if not replay:
            raise DataError("replay_csv has no usable rows")
        datasets["train"], slots = with_replay_slots(
            datasets["train"], replay, hparams["replay_ratio"]
        )
    if sources[NONSPEECH] is not None:
        clips = usable_rows(sources[NONSPEECH], NONSPEECH_CLIP)
        spoken = [key for key, row in clips.items() if not is_nonspeech(row["wrd"])]
        if not clips or spoken:
            first = spoken and spoken[0].removeprefix(NONSPEECH_CLIP.format(""))
            why = f"row {first} has a transcript" if clips else "it has no usable rows"
            raise DataError(f"nonspeech_csv must hold non-speech clips: {why}")
    builder = examples.TrainingExamples(
        train_rows,
        whisper,
        hparams["seed"],
        hparams["timestamp_probability"],
        hparams["longform_probability"],
        hparams["condition_on_prev_probability"],
        nonspeech_target=hparams["objective"] != "mwer",  # mwer searches from plain prompts
        nonspeech_probability=nonspeech_probability,
        nonspeech_clips=clips,
        replay_rows=replay,
        replay_slots=slots,
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
    # Long-form examples join utterances' audio, non-speech replacements and replay slots
    # change a row's audio per epoch: their encoder output cannot come from the per-utterance
    # cache.
    joins_audio = builder is not None and builder.changes_audio
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
