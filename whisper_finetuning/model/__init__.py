"""The model: Whisper for fine-tuning, its adapters and loss, the bundled checkpoints."""
