"""Facts of Whisper's token vocabulary shared by the model, the converter and the data checks."""

import re

ENGLISH_ONLY_VOCAB_SIZE = 51864  # .en checkpoints; multilingual ones have more (large-v3: 51866)
MAX_PROMPT_TOKENS = 4  # start of transcript, language, task, no timestamps
LANGUAGE_AND_TASK_TOKENS = 2  # the prompt tokens English-only (.en) checkpoints lack
ENGLISH, ENGLISH_CODE = "english", "en"  # Whisper's name and code of English (.en models')
# Decoder positions of every released Whisper, for tools without a model at hand (a loaded
# model reads its own config: WhisperASR.max_positions).
MAX_TARGET_POSITIONS = 448

EOT, SOT, NO_TIMESTAMPS = "<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"
START_OF_PREV, TRANSLATE, TRANSCRIBE = "<|startofprev|>", "<|translate|>", "<|transcribe|>"
TASKS = ("transcribe", "translate")  # the task tokens' names: what the `task` hparam may be
# Timestamp tokens <|0.00|>, <|0.02|>, ... <|30.00|> follow <|notimestamps|> in every Whisper
# vocabulary: the first one's id is the no-timestamps id + 1 (openai's timestamp_begin).
TIME_PRECISION = 0.02  # seconds per timestamp token
TIMESTAMP = re.compile(r"<\|\d+\.\d\d\|>")
MAX_INITIAL_TIMESTAMP_INDEX = 50  # a first timestamp after 1.00 s is not allowed (openai, ct2)
# openai prompts with at most the last n_text_ctx // 2 - 1 tokens of the previous text.
MAX_PREVIOUS_TOKENS = MAX_TARGET_POSITIONS // 2 - 1


def is_multilingual(vocab_size):
    """Whether a checkpoint with this vocabulary has language and task tokens."""
    return vocab_size > ENGLISH_ONLY_VOCAB_SIZE
