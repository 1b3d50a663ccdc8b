"""Floating-point operations of Whisper's work, counted from its shapes, and a matmul probe.

A multiply-add counts 2. Only matrix products and convolutions are counted (normalisations,
softmaxes and activations are a few percent). Token positions are counted at each sequence's
real length, never its batch's padded one, so the time spent on padding shows up as lower
utilisation. A training step's backward pass costs twice its forward (input and weight
gradients), except where the cross-attention meets the frozen encoder's output, which needs no
gradient.
"""

import time

import torch

# projections trained, frozen, kept per utterance, or absorbed into the queries (trained)
KEYS_VALUES = ("train", "frozen", "kept", "absorbed")


def encoder_forward(config, window_seconds):
    """One clip through the encoder at a window of ``window_seconds`` (100 mel frames a second,
    halved by the second convolution)."""
    mel_frames = window_seconds * 100
    frames = mel_frames // 2
    d = config.d_model
    convolutions = 2 * mel_frames * config.num_mel_bins * 3 * d + 2 * frames * 3 * d * d
    layer = 8 * frames * d * d + 4 * frames * frames * d + 4 * frames * d * config.encoder_ffn_dim
    return convolutions + config.encoder_layers * layer


def decoder_training_step(config, positions, frames, projected, keys_values="train"):
    """Forward and backward of the decoder (all of it training) for one sequence of ``positions``
    tokens over ``frames`` encoder frames, with the output projection over ``projected``
    positions. ``keys_values``: the cross-attention's key/value projections train (forward and
    weight gradient), are frozen (forward only), are kept per utterance (nothing) or train
    absorbed into the queries (``absorbed_attention.py``: every head attends to the frames)."""
    if keys_values not in KEYS_VALUES:
        raise ValueError(f"keys_values must be one of {KEYS_VALUES}")
    d, t, layers = config.d_model, positions, config.decoder_layers
    self_attention = 8 * t * d * d + 4 * t * t * d
    queries_output = 4 * t * d * d
    feed_forward = 4 * t * d * config.decoder_ffn_dim
    forward = layers * (self_attention + queries_output + feed_forward)
    forward += 2 * projected * d * config.vocab_size
    if keys_values == "absorbed":
        # each head's scores and mixture over the frames themselves (forward, and the
        # queries' and probabilities' gradients), plus moving the queries and values
        heads = config.decoder_attention_heads
        cross_attention = layers * (8 * heads * t * frames * d + 12 * t * d * d)
        return 3 * forward + cross_attention
    # scores and weighted values over the frames: without trained keys and values, the
    # backward pass needs only the queries' and the probabilities' gradients
    attention_passes = 3 if keys_values == "train" else 2
    cross_attention = layers * 4 * t * frames * d * attention_passes
    key_value_passes = {"train": 2, "frozen": 1, "kept": 0}[keys_values]
    keys_values_cost = layers * 4 * frames * d * d * key_value_passes
    return 3 * forward + cross_attention + keys_values_cost


def matmul_peak(device="cpu", dtype=torch.float32, size=2048, seconds=1.0):
    """The best FLOP/s of square matrix products of ``size`` over about ``seconds``, on this
    device and in this dtype: the machine's practical peak for what a training step does."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    best = 0.0
    torch.mm(a, b)  # warm-up: thread pools, kernels
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        _synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _synchronize(device)
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def _synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
