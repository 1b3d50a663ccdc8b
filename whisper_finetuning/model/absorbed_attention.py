"""Cross-attention that attends to the encoder frames without projecting them.

Whisper's cross-attention projects every encoder frame to keys and values in every decoder
layer: 2 x frames x d_model^2 multiply-adds per layer and utterance, forward and backward,
most of a cached training step at the 30 s window (1500 frames against ~30 tokens) when those
projections train. Both are linear, so they can move to the queries' side instead: a head's
score ``q_h . (W_kh x)`` is ``(W_kh^T q_h) . x``, and since its attention weights sum to one,
its output ``sum_f p_f (W_vh x_f + b_vh)`` is ``W_vh (sum_f p_f x_f) + b_vh``. Every head then
attends over the frames themselves: heads x tokens x frames x d_model multiply-adds, fewer
whenever heads x decoder positions are fewer than d_model (a batch shorter than a head's
width, 64 in every Whisper; half that where the projections are frozen but gradients flow).
Longer batches, attention masks or dropout, and adapter-wrapped projections take transformers'
own path; a search takes it once its transcript passes the break-even
(``AbsorbedCrossAttention.decoding_break_even``). The result equals it up to float rounding
(the sums run in another order; ``tests/unit/test_absorbed_attention.py``).
"""

import torch
from transformers.cache_utils import EncoderDecoderCache
from transformers.models.whisper.modeling_whisper import WhisperAttention


class AbsorbedCrossAttention(WhisperAttention):
    """``WhisperAttention`` that takes the absorbed path where it is exact and cheaper."""

    def forward(
        self,
        hidden_states,
        key_value_states=None,
        past_key_values=None,
        attention_mask=None,
        output_attentions=False,
        **kwargs,
    ):
        """As ``WhisperAttention.forward``; (output, None) from the absorbed path."""
        plain = key_value_states is None or attention_mask is not None or output_attentions
        if plain or not self._absorbs(hidden_states, past_key_values):
            return super().forward(
                hidden_states,
                key_value_states,
                past_key_values,
                attention_mask,
                output_attentions,
                **kwargs,
            )
        return absorbed_cross_attention(self, hidden_states, key_value_states), None

    def _absorbs(self, hidden_states, past_key_values):
        """Plain projections, no dropout, short queries and, when decoding with a cache, a
        transcript still shorter than the break-even (``decoding_break_even``) whose keys and
        values were not projected yet."""
        if (
            (self.dropout and self.training)
            or type(self.k_proj) is not torch.nn.Linear
            or type(self.v_proj) is not torch.nn.Linear
            or hidden_states.shape[1] * self.num_heads >= self._width_budget()
        ):
            return False
        if past_key_values is None:
            return True
        if not isinstance(past_key_values, EncoderDecoderCache):
            return False
        decoded = past_key_values.self_attention_cache.get_seq_length()  # this step's included
        projected = past_key_values.is_updated.get(self.layer_idx, False)
        return not projected and decoded < self.decoding_break_even()

    def decoding_break_even(self):
        """Decoded positions after which projecting the keys and values once (frames x width^2
        per projection, then frames x width per step) costs less than attending to the frames
        at every step (heads x frames x width per step): width / (heads - 1). Past it the
        search projects and caches them as transformers does (at most twice the cheaper
        choice's work, known only once the transcript ends)."""
        return self.embed_dim / max(self.num_heads - 1, 1)

    def _width_budget(self):
        """``width_budget`` for this layer's projections and this pass."""
        frozen = not (self.k_proj.weight.requires_grad or self.v_proj.weight.requires_grad)
        return width_budget(self.embed_dim, frozen and torch.is_grad_enabled())


def width_budget(d_model, frozen_with_gradients):
    """Heads x query positions below which the absorbed path does fewer multiply-adds.

    Absorbed, each product costs heads x tokens x frames x width; transformers' path costs
    frames x width^2 per projection pass: fewer when heads x tokens < width, or half of it
    where the projections are frozen but gradients flow (they then skip the weight gradient,
    the absorbed path does not)."""
    return d_model // 2 if frozen_with_gradients else d_model


def absorbed_cross_attention(attention, hidden_states, frames):
    """``attention``'s (a ``WhisperAttention``) output for queries ``hidden_states`` (batch,
    tokens, width) over ``frames`` (batch, frames, width), without projecting the frames."""
    batch, tokens, width = hidden_states.shape
    heads, head_dim = attention.num_heads, attention.head_dim
    queries = (attention.q_proj(hidden_states) * attention.scaling).view(
        batch, tokens, heads, head_dim
    )
    # each head's query moved into the frames' space: W_kh^T q_h, (batch, heads x tokens, width)
    frame_queries = torch.einsum(
        "bthe,hew->bhtw", queries, attention.k_proj.weight.view(heads, head_dim, width)
    ).reshape(batch, heads * tokens, width)
    # plain products, not SDPA (1.7x slower on CPU at this width); the weights are never larger
    # than the keys transformers' path keeps, since heads x tokens < d_model
    weights = torch.softmax(frame_queries @ frames.transpose(1, 2), dim=-1)
    mixed = (weights @ frames).view(batch, heads, tokens, width)
    values = torch.einsum(
        "bhtw,hew->bthe", mixed, attention.v_proj.weight.view(heads, head_dim, width)
    )
    if attention.v_proj.bias is not None:
        values = values + attention.v_proj.bias.view(heads, head_dim)
    return attention.out_proj(values.reshape(batch, tokens, width))


def absorb_cross_attention(model):
    """Give every decoder layer of a Hugging Face Whisper the absorbed cross-attention (the
    parameters and the state dict stay as they are)."""
    for layer in model.model.decoder.layers:
        if type(layer.encoder_attn) is WhisperAttention:
            layer.encoder_attn.__class__ = AbsorbedCrossAttention
