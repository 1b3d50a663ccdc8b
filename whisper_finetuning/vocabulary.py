"""Facts of Whisper's token vocabulary shared by the model, the converter and the data checks."""

ENGLISH_ONLY_VOCAB_SIZE = 51864  # .en checkpoints; multilingual ones have more (large-v3: 51866)
MAX_PROMPT_TOKENS = 4  # start of transcript, language, task, no timestamps
# Decoder positions of every released Whisper, for tools without a model at hand (a loaded
# model reads its own config: WhisperASR.max_positions).
MAX_TARGET_POSITIONS = 448


def is_multilingual(vocab_size):
    """Whether a checkpoint with this vocabulary has language and task tokens."""
    return vocab_size > ENGLISH_ONLY_VOCAB_SIZE
