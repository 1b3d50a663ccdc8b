"""Training batches of a bounded total length (SpeechBrain's ``DynamicBatchSampler``),
bucketed by audio duration or by decoder tokens, and the decoder padding a batching leaves.

At a fixed encoder window the audio's length does not change the encoder's cost, but every
padded decoder position costs a full decoder step (and, with ``loss_chunk_size: 0``, a row of
vocabulary-sized logits): ``tokens`` buckets rows of alike transcript lengths.
"""

from speechbrain.dataio.sampler import DynamicBatchSampler

BATCH_LENGTHS = ("duration", "tokens")


def row_length(kind, whisper):
    """A manifest row's length for bucketing: its audio seconds (``duration``) or its decoder
    positions (``tokens``: the plain prompt, the tokenizer's tokens of ``wrd``, end of text)."""
    if kind == "tokens":
        return lambda row: whisper.decoder_positions(row["wrd"])
    return lambda row: float(row["duration"])


def dynamic_batch_sampler(dataset, kind, whisper, options):
    """A ``DynamicBatchSampler`` over ``dataset`` by ``row_length(kind)`` (computed once per
    row); ``options`` are its own (``max_batch_length`` in seconds or decoder positions)."""
    return DynamicBatchSampler(dataset, length_func=row_length(kind, whisper), **options)


def padding(batches, positions):
    """(padded, total) decoder positions of ``batches`` (lists of row indices) when row ``i``
    takes ``positions[i]`` and every row of a batch is padded to its longest."""
    total = sum(len(batch) * max(positions[i] for i in batch) for batch in batches)
    return total - sum(positions[i] for batch in batches for i in batch), total
