"""The dimensions of OpenAI's Whisper checkpoints as transformers configurations (no weights):
what the memory planner and the benchmarks build random models of. Needs transformers only."""

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
