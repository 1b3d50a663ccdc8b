"""Peak memory of a training step, predicted from a Whisper's shapes (the ``memory`` tool).

The model is built on PyTorch's meta device (no download, no memory) and its trainable
parameters are chosen by the recipe's own rules (``model.set_trainable``, ``adapters``), so
parameter counts are exact. The peak is the sum of:

* weights: every parameter in fp32 (the recipe keeps fp32 weights; bf16 autocast casts on use);
* gradients: 4 bytes per trainable parameter;
* optimizer state: AdamW's two fp32 moments (8 bytes per trainable parameter), or 2 bytes with
  8-bit AdamW (bitsandbytes);
* activations: the tensors autograd keeps for the backward pass, counted per layer from the
  layer's shapes for every layer that runs with gradients (from the lowest trainable one up;
  the whole decoder when the encoder trains), plus the loss's vocabulary-sized tensors
  (``loss_bytes``), plus the encoder output (or, without the encoder cache, the frozen
  encoder's own peak).

Under ``sharding: fsdp`` over ``gpus`` processes (``training/sharding.py``), weights,
gradients and optimizer state are divided by ``gpus`` (each GPU holds its shard); activations
are not (each GPU runs its own batch). Each GPU also holds gathered copies in the compute
precision (bf16 or fp32), with their unsharded gradients: the root's parameters (embeddings,
stem, layer norms: gathered for the whole step) and two layers (the one running and the next,
prefetched) at a time (``gathered``).

Attention is counted as PyTorch's fused scaled-dot-product attention keeps it (queries, keys,
values and output; no score matrix). Measured against real training steps by
``python -m whisper_finetuning.memory_benchmark`` (README: Memory).
"""

import dataclasses
import functools
from collections.abc import Callable

import torch
from transformers import WhisperForConditionalGeneration

from whisper_finetuning.model import adapters
from whisper_finetuning.model.absorbed_attention import width_budget
from whisper_finetuning.model.asr import frozen_encoder_depth, set_trainable
from whisper_finetuning.profiling.shapes import SHAPES, config_of

GB = 1e9
FP32 = 4
FRAMES_PER_SECOND = 50  # encoder frames per second of audio (after the stride-2 convolution)
ADAMW_BYTES, ADAMW_8BIT_BYTES = 8, 2  # optimizer state per trainable parameter
# Vocabulary-sized tensors alive at the loss's peak with ``loss_chunk_size: 0``: logits,
# log-probabilities, the smoothed target distribution, the KL divergence and its masked copy
# (speechbrain's nll_loss), all kept for the whole batch.
LOSS_VOCAB_TENSORS = 5
GELU_AND_LINEAR_OUTPUTS = 2  # the feed-forward's hidden width appears twice (fc1 out, GELU out)


@dataclasses.dataclass(frozen=True)
class Settings:
    """What decides a training step's memory; names follow the recipe's hparams."""

    model: str = "small"
    batch_size: int = 8
    tokens: int = 128  # decoder positions per utterance: prompt + transcript
    encoder_window_seconds: int = 30
    trainable_patterns: tuple = ()
    trainable_encoder_layers: int = 0
    adapter: str | None = None
    lora_rank: int = 16
    lora_dropout: float = 0.05
    adapter_targets: tuple = ()
    gradient_checkpointing: bool = False
    bf16: bool = False
    adamw_8bit: bool = False
    encoder_cache: bool = True  # the frozen encoder's output read from disk
    loss_chunk_size: int = 256  # target positions the loss projects at a time; 0: all at once
    freeze_encoder: bool = True
    sharding: str = "ddp"  # or fsdp: weights, gradients, optimizer state divided by gpus
    gpus: int = 1


def shape_name(whisper_hub):
    """The shape of a checkpoint name (``openai/whisper-large-v3`` -> ``large-v3``)."""
    name = str(whisper_hub).split("/")[-1].split(":")[-1].removeprefix("whisper-")
    if name == "turbo":
        name = "large-v3-turbo"
    if name not in SHAPES:
        raise ValueError(f"unknown Whisper shape '{whisper_hub}': one of {', '.join(SHAPES)}")
    return name


def whisper_config(name):
    """A ``WhisperConfig`` with the shapes of model ``name``."""
    return config_of(SHAPES[shape_name(name)])


def meta_model(settings):
    """The Whisper of ``settings`` on the meta device, with adapters and trainable flags set."""
    return _meta_model(
        settings.model,
        settings.adapter,
        settings.adapter_targets,
        settings.lora_rank,
        settings.lora_dropout,
        settings.trainable_patterns,
        settings.trainable_encoder_layers,
        settings.freeze_encoder,
    )


@functools.lru_cache(maxsize=16)
def _meta_model(
    model,
    adapter,
    adapter_targets,
    lora_rank,
    lora_dropout,
    patterns,
    trainable_encoder_layers,
    freeze_encoder=True,
):
    """``meta_model``'s work, once per choice of what trains (the other settings reuse it)."""
    with torch.device("meta"):
        whisper = WhisperForConditionalGeneration(whisper_config(model))
    if adapter:  # alpha only scales the adapters' output: it changes no shape
        adapters.add_adapters(
            whisper, adapter, list(adapter_targets), lora_rank, 2 * lora_rank, lora_dropout
        )
    set_trainable(
        whisper,
        freeze=False,
        freeze_encoder=freeze_encoder,
        trainable_encoder_layers=trainable_encoder_layers,
        patterns=list(patterns),
        adapter=bool(adapter),
    )
    return whisper


def _trains(module):
    """True if any parameter under ``module`` requires a gradient."""
    return any(p.requires_grad for p in module.parameters())


def _saves_input(linear):
    """True if a linear layer keeps its input for the backward pass: its weight trains or an
    adapter reads it."""
    return hasattr(linear, "lora_A") or linear.weight.requires_grad


def _adapter_extra(linear, rows, dropout):
    """Elements an adapted linear layer adds: the adapter's bottleneck output (rank) and, with
    dropout, its dropped-out copy of the input."""
    if not hasattr(linear, "lora_A"):
        return 0
    a = linear.lora_A[adapters.ADAPTER_NAME]
    return rows * (a.out_features + (a.in_features if dropout > 0 else 0))


def _absorbs(attention, tokens, dropout):
    """True if a decoder layer's cross-attention takes the absorbed path
    (``model/absorbed_attention.py``) for a batch of ``tokens`` positions: plain (not adapted)
    key and value projections, no attention dropout, heads x tokens under its width budget."""
    if (
        type(attention.k_proj) is not torch.nn.Linear
        or type(attention.v_proj) is not torch.nn.Linear
    ):
        return False
    if dropout:
        return False
    frozen = not (attention.k_proj.weight.requires_grad or attention.v_proj.weight.requires_grad)
    return tokens * attention.num_heads < width_budget(attention.embed_dim, frozen)


def _cross_attention(attn, tokens, frames, d_model, absorbed, frames_need_grad):
    """Elements a decoder layer's cross-attention keeps for its backward pass.

    transformers' path: the queries and the output (fused attention, no score matrix), the
    keys and values over the frames. The absorbed path: each head's weights over the frames
    (heads x tokens x frames, the softmax output both products read), the queries moved into
    the frames' space when the frames need a gradient, the mixed frames when ``v_proj`` trains
    and the queries when ``k_proj`` trains (each product keeps the operand the other's gradient
    needs).
    """
    elements = tokens * d_model * (_saves_input(attn.q_proj) + _saves_input(attn.out_proj))
    if not absorbed:
        return elements + tokens * d_model * 2 + frames * d_model * 2
    heads = attn.num_heads
    elements += heads * tokens * frames
    elements += heads * tokens * d_model * frames_need_grad
    elements += heads * tokens * d_model * attn.v_proj.weight.requires_grad
    elements += tokens * d_model * attn.k_proj.weight.requires_grad
    return elements


def _layer_activations(
    layer, tokens, frames, d_model, ffn, dropout, absorbed=False, frames_grad=False
):
    """Elements one transformer layer keeps for its backward pass.

    ``tokens`` are the rows of the layer's own sequence (batch x length); ``frames`` the
    encoder rows its cross-attention reads (0 for an encoder layer); ``absorbed``: its
    cross-attention takes the absorbed path; ``frames_grad``: the encoder output it reads needs
    a gradient (the encoder trains).
    """
    cross = frames > 0
    attn_inputs = [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj]
    elements = tokens * d_model * (3 if cross else 2)  # layer norm inputs
    elements += tokens * d_model * 4  # self-attention queries, keys, values, output
    elements += tokens * d_model * any(_saves_input(m) for m in attn_inputs)
    elements += tokens * d_model * _saves_input(layer.self_attn.out_proj)
    linears = [*attn_inputs, layer.self_attn.out_proj, layer.fc1, layer.fc2]
    if cross:
        attn = layer.encoder_attn
        elements += _cross_attention(attn, tokens, frames, d_model, absorbed, frames_grad)
        elements += sum(_adapter_extra(m, frames, dropout) for m in (attn.k_proj, attn.v_proj))
        linears += [attn.q_proj, attn.out_proj]
    elements += tokens * d_model * _saves_input(layer.fc1) + tokens * ffn  # fc1 in, GELU in
    elements += tokens * ffn * _saves_input(layer.fc2)
    elements += sum(_adapter_extra(m, tokens, dropout) for m in linears)
    return elements


def loss_bytes(batch_size, tokens, vocab, d_model, chunk_size, projection_trains):
    """Bytes the loss holds at its peak for ``batch_size`` utterances of ``tokens`` positions.

    ``chunk_size`` 0: ``LOSS_VOCAB_TENSORS`` float32 (positions, vocabulary) tensors of the
    whole batch. Otherwise (``fast_loss``), in rows of the vocabulary: a chunk's logits and
    log-probabilities while its log-softmax runs; when the output projection trains, its float32
    weight gradient (``d_model`` rows: the first chunk's product, to which each later chunk adds
    a temporary product of the same size) beside the chunk's gradient. The hidden states' rows
    that predict a target are gathered into one (positions, width) tensor for the forward, and
    its gradient of the same size is kept for the backward pass.
    """
    positions = batch_size * tokens
    if chunk_size == 0:
        return LOSS_VOCAB_TENSORS * positions * vocab * FP32
    first = min(positions, chunk_size)
    later = min(max(positions - chunk_size, 0), chunk_size)  # the largest later chunk
    weight = d_model * projection_trains
    rows = max(2 * first, first + weight)
    if later:
        rows = max(rows, weight + max(2 * later, weight + later))
    return vocab * FP32 * rows + 2 * positions * d_model * FP32


def batch_activations(batch_size, per_utterance, frozen_encoder_per_utterance, loss):
    """Activation bytes of a batch: the trainable layers' (``per_utterance`` each) and the
    loss's, or the frozen encoder's own peak if larger (it runs first and frees its own)."""
    training = batch_size * per_utterance + loss(batch_size)
    return max(training, batch_size * frozen_encoder_per_utterance)


@dataclasses.dataclass
class Prediction:
    """Predicted bytes by component, and the counts behind them."""

    total_params: int
    trainable_params: int
    batch_size: int
    weights: float
    gradients: float
    optimizer: float
    activations_of: Callable[[int], float]  # activation bytes of a batch size
    gathered: float = 0  # fsdp: gathered parameters and their gradients, per GPU
    backward_per_utterance: float = 0  # bytes an utterance keeps beside the backward's gradients

    @property
    def activations(self):
        """Predicted activation bytes of the batch."""
        return self.activations_of(self.batch_size)

    @property
    def fixed(self):
        """Bytes that do not depend on the batch: weights, gradients, optimizer state (and
        under fsdp the gathered parameters)."""
        return self.weights + self.gradients + self.optimizer + self.gathered

    def backward_of(self, batch_size):
        """Bytes the backward pass holds at most beyond the weights and optimizer state: every
        gradient, and what an utterance keeps beside them (``peak_of``)."""
        return self.gradients + batch_size * self.backward_per_utterance

    def peak_of(self, batch_size):
        """Predicted peak bytes of a step of ``batch_size`` utterances, as the step runs: the
        weights and the optimizer state throughout; then either the forward pass and the loss
        (every saved activation alive, no gradient yet but the chunked loss's own) or the
        backward pass, whose gradients are born as the activations are freed (all gradients
        beside the layer being differentiated, or recomputed under gradient checkpointing, and
        the checkpointed layer inputs, at most). Gradients are set to None after each
        optimizer step (SpeechBrain's zero_grad) and the fused AdamW step needs no temporaries.
        """
        backward = self.backward_of(batch_size)
        held = self.weights + self.optimizer + self.gathered
        return held + max(self.activations_of(batch_size), backward)

    @property
    def peak(self):
        """Predicted peak bytes of a training step."""
        return self.peak_of(self.batch_size)

    def largest_batch(self, budget_gb):
        """The largest batch size whose predicted peak fits ``budget_gb`` (0 if none)."""
        budget = budget_gb * GB
        high = 1
        while self.peak_of(high) <= budget:
            high *= 2
        low = high // 2  # fits (or is 0); ``high`` does not
        while high - low > 1:  # the activations grow with the batch, the loss's not linearly
            middle = (low + high) // 2
            low, high = (middle, high) if self.peak_of(middle) <= budget else (low, middle)
        return low


def gathered_bytes(model, width):
    """Per GPU under fsdp: the root's parameters and the two largest layers' (running and
    prefetched), gathered in ``width`` bytes each, with gradients of the same size."""
    layers = [*model.model.encoder.layers, *model.model.decoder.layers]
    sizes = sorted(sum(p.numel() for p in layer.parameters()) for layer in layers)
    root = sum(p.numel() for p in model.parameters()) - sum(sizes)
    return (root + sum(sizes[-2:])) * width * 2


def predict(settings):
    """Predicted peak memory of one training step (after the first optimizer step); the
    layers' activations are counted for one utterance and scale with the batch."""
    model = meta_model(settings)
    config = model.config
    d_model, ffn, vocab = config.d_model, config.decoder_ffn_dim, config.vocab_size
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tokens, frames = settings.tokens, settings.encoder_window_seconds * FRAMES_PER_SECOND
    encoder, decoder = model.model.encoder, model.model.decoder
    dropout = settings.lora_dropout

    depth = frozen_encoder_depth(model)
    encoder_layers = [] if depth > len(encoder.layers) else encoder.layers[max(depth - 1, 0) :]
    decoder_trains = [_trains(layer) for layer in decoder.layers]
    lowest = 0 if encoder_layers or _trains(decoder.embed_tokens) else decoder_trains.index(True)
    decoder_layers = decoder.layers[lowest:]

    grad_layers = [_layer_activations(m, frames, 0, d_model, ffn, dropout) for m in encoder_layers]
    frames_grad = bool(encoder_layers)
    grad_layers += [
        _layer_activations(
            m,
            tokens,
            frames,
            d_model,
            ffn,
            dropout,
            _absorbs(m.encoder_attn, tokens, config.attention_dropout),
            frames_grad,
        )
        for m in decoder_layers
    ]
    largest_layer = max(grad_layers, default=0)
    width = 2 if settings.bf16 else FP32  # autocast keeps matmul outputs in bf16
    encoder_out = frames * d_model * FP32
    if settings.gradient_checkpointing:
        # the forward keeps each layer's input only; the backward recomputes one layer at a time
        inputs = len(encoder_layers) * frames * d_model + len(decoder_layers) * tokens * d_model
        per_utterance = inputs * width + encoder_out
        backward_per_utterance = (inputs + largest_layer) * width + encoder_out
    else:
        per_utterance = sum(grad_layers) * width + encoder_out
        # the backward frees each layer's tensors as it passes: the layer it is in, at most
        backward_per_utterance = largest_layer * width + encoder_out
    frozen_encoder = 0
    if not settings.encoder_cache:  # the frozen encoder runs first, without gradients
        stem = 2 * frames * d_model * 2  # two convolution outputs of twice the frames
        block = frames * (3 * d_model + GELU_AND_LINEAR_OUTPUTS * ffn)
        frozen_encoder = max(stem, block) * width
    loss = functools.partial(
        loss_bytes,
        tokens=tokens,
        vocab=vocab,
        d_model=d_model,
        chunk_size=settings.loss_chunk_size,
        projection_trains=model.proj_out.weight.requires_grad,
    )
    shards = settings.gpus if settings.sharding == "fsdp" else 1
    return Prediction(
        total_params=total,
        trainable_params=trainable,
        batch_size=settings.batch_size,
        weights=total * FP32 / shards,
        gradients=trainable * FP32 / shards,
        optimizer=trainable * (ADAMW_8BIT_BYTES if settings.adamw_8bit else ADAMW_BYTES) / shards,
        gathered=gathered_bytes(model, width) if settings.sharding == "fsdp" else 0,
        activations_of=functools.partial(
            batch_activations,
            per_utterance=per_utterance,
            frozen_encoder_per_utterance=frozen_encoder,
            loss=loss,
        ),
        backward_per_utterance=backward_per_utterance,
    )
