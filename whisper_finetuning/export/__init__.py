"""Export: a run's selected checkpoint as a Hugging Face Whisper folder (and CTranslate2)."""
