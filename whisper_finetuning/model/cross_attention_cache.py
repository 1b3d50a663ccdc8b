"""Cross-attention keys and values computed once per training utterance and kept in memory.

When the encoder and every decoder layer's ``encoder_attn.k_proj`` / ``v_proj`` are frozen
(e.g. ``trainable_patterns: ['encoder_attn\\.(q_proj|out_proj)',
'decoder\\.layers\\.\\d+\\.self_attn\\.']``, or adapters that leave those two projections
alone), each utterance's cross-attention keys and values are the same in every epoch.
Projecting them is most of a cached decoder step at the 30 s window (1500 frames against ~25
tokens), so the first epoch computes them and later epochs read them. They are kept as
float32, exactly what the step computes; the memory cost is ``2 x decoder layers x frames x
d_model x 4`` bytes per utterance (30 s: tiny 18.4 MB, small 111 MB, medium 295 MB, large-v3
492 MB), up to a budget; utterances beyond it are projected in every step as before.
"""

import re

import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

FROZEN_PROJECTIONS = re.compile(r"encoder_attn\.(k_proj|v_proj)\.")


def keys_values_frozen(model):
    """True when no parameter of a Hugging Face Whisper that feeds the cross-attention's keys
    and values trains: the encoder's and every ``encoder_attn.k_proj``/``v_proj`` (adapters
    included)."""
    encoder = model.model.encoder.parameters()
    projections = (
        p for n, p in model.model.decoder.named_parameters() if FROZEN_PROJECTIONS.search(n)
    )
    return not any(p.requires_grad for p in (*encoder, *projections))


def bytes_per_utterance(config, frames):
    """Memory one utterance's keys and values take (float32)."""
    return 2 * config.decoder_layers * frames * config.d_model * 4


class CrossAttentionCache:
    """Per-utterance cross-attention keys and values, up to ``budget_mb`` megabytes."""

    def __init__(self, budget_mb):
        self.budget = budget_mb * 2**20
        self.used = 0
        self.entries = {}  # utterance id -> [(keys, values) per layer], (heads, frames, head_dim)

    def past_key_values(self, decoder, utterance_ids, encoder_out):
        """A transformers cache holding the rows' keys and values for ``decoder`` (computed now
        for rows not kept yet), with an empty self-attention part."""
        if any(u not in self.entries for u in utterance_ids):
            fresh = _project(decoder, encoder_out)
            for row, utt_id in enumerate(utterance_ids):
                size = sum(k[row].nbytes + v[row].nbytes for k, v in fresh)
                if utt_id not in self.entries and self.used + size <= self.budget:
                    self.entries[utt_id] = [(k[row].clone(), v[row].clone()) for k, v in fresh]
                    self.used += size
            if any(u not in self.entries for u in utterance_ids):
                return _cache(fresh)  # over budget: this batch as computed
        layers = zip(*(self.entries[u] for u in utterance_ids), strict=True)
        return _cache(
            [
                (torch.stack([k for k, _ in rows]), torch.stack([v for _, v in rows]))
                for rows in layers
            ]
        )


@torch.no_grad()
def _project(decoder, encoder_out):
    """Each decoder layer's cross-attention (keys, values), (batch, heads, frames, head_dim), as
    transformers' WhisperAttention computes them."""
    projected = []
    for layer in decoder.layers:
        attention = layer.encoder_attn
        shape = (encoder_out.shape[0], -1, attention.num_heads, attention.head_dim)

        def heads(linear, attention=attention, shape=shape):
            return linear(encoder_out).view(shape).transpose(1, 2).contiguous()

        projected.append((heads(attention.k_proj), heads(attention.v_proj)))
    return projected


def _cache(projected):
    """An encoder-decoder cache whose cross-attention part is filled and marked as such."""
    cross = DynamicCache()
    for index, (keys, values) in enumerate(projected):
        cross.update(keys, values, index)
    cache = EncoderDecoderCache(DynamicCache(), cross)
    for index in range(len(projected)):
        cache.is_updated[index] = True
    return cache
