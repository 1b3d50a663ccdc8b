"""The listening review behind ``whisper_finetuning.review``: sampling, storage, statistics."""
