"""The dimensions of OpenAI's Whisper checkpoints as transformers configurations (no weights):
what the memory planner and the benchmarks build random models of, and a 64-wide one for tests
and checks."""

import shutil
from pathlib import Path

from transformers import WhisperConfig

# Whisper's published shapes: d_model, layers (encoder, decoder), heads, ffn, mel bins, vocab.
SHAPES = {
    "tiny": (384, 4, 4, 6, 1536, 80, 51865),
    "tiny.en": (384, 4, 4, 6, 1536, 80, 51864),
    "base": (512, 6, 6, 8, 2048, 80, 51865),
    "base.en": (512, 6, 6, 8, 2048, 80, 51864),
    "small": (768, 12, 12, 12, 3072, 80, 51865),
    "medium": (1024, 24, 24, 16, 4096, 80, 51865),
    "large-v2": (1280, 32, 32, 20, 5120, 80, 51865),
    "large-v3": (1280, 32, 32, 20, 5120, 128, 51866),
    "large-v3-turbo": (1280, 32, 4, 20, 5120, 128, 51866),
}
# 64 wide, 2 encoder and 2 decoder layers, the English-only vocabulary: seconds to train on CPU.
TEST_SHAPE = (64, 2, 2, 2, 128, 80, 51864)


def config_of(dimensions, **options):
    """A ``WhisperConfig`` of ``dimensions`` (a ``SHAPES`` value); ``options`` are further
    configuration fields (e.g. ``attn_implementation``)."""
    d_model, encoder_layers, decoder_layers, heads, ffn, mels, vocab = dimensions
    return WhisperConfig(
        vocab_size=vocab,
        num_mel_bins=mels,
        d_model=d_model,
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=ffn,
        decoder_ffn_dim=ffn,
        pad_token_id=50256,
        bos_token_id=50256,
        eos_token_id=50256,
        decoder_start_token_id=50257,
        **options,
    )


def save_random_whisper(folder, tokenizer_source, dimensions=TEST_SHAPE, seed=0):
    """``folder`` holding a random Whisper of ``dimensions`` with the tokenizer and feature
    extractor files of the Whisper folder ``tokenizer_source`` (of the same vocabulary)."""
    # imported here: the memory planner reads the shapes and needs none of these
    import torch
    from transformers import WhisperForConditionalGeneration

    from whisper_finetuning.model.ct2 import PROCESSOR_FILES

    torch.manual_seed(seed)
    WhisperForConditionalGeneration(config_of(dimensions)).save_pretrained(folder)
    for name in PROCESSOR_FILES:
        shutil.copy(Path(tokenizer_source) / name, Path(folder) / name)
    return Path(folder)
