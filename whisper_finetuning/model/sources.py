"""A Whisper to label or teach with, named the way the tools name one (``EXP_OR_MODEL``).

A recipe experiment folder (it holds ``hyperparams.yaml``) gives its selected checkpoint, as
``export_hf`` exports it; anything else is a ``WhisperASR`` source: ``bundled:NAME``, a Hugging
Face directory or a Hub name.
"""

from pathlib import Path

from whisper_finetuning.data.audio import CHUNK_SECONDS
from whisper_finetuning.export.huggingface import describe, load_best
from whisper_finetuning.model.asr import WhisperASR


def is_experiment(source):
    """Whether ``source`` is a train.py output folder."""
    return (Path(str(source)) / "hyperparams.yaml").is_file()


def load_frozen(source, save_path=None, window_seconds=CHUNK_SECONDS, language=None):
    """``(WhisperASR in eval mode with every parameter frozen, what was loaded in words)``; a
    model (not a run, which keeps its own) encodes ``window_seconds`` windows and prompts in
    ``language`` (a multilingual model's default)."""
    if is_experiment(source):
        whisper, checkpoint = load_best(source)
        loaded = f"{describe(checkpoint)} of {source}"
    else:
        whisper = WhisperASR(
            str(source),
            save_path=save_path,
            freeze=True,
            window_seconds=window_seconds,
            language=language,
        )
        loaded = str(source)
    whisper.requires_grad_(False)
    return whisper.eval(), loaded
