"""A Whisper to label or teach with, named the way the tools name one (``EXP_OR_MODEL``).

A recipe experiment folder (it holds ``hyperparams.yaml``) gives its selected checkpoint, as
``export_hf`` exports it; anything else is a ``WhisperASR`` source: ``bundled:NAME``, a Hugging
Face directory or a Hub name.
"""

from pathlib import Path

from whisper_finetuning.export.huggingface import describe, load_best
from whisper_finetuning.model.asr import WhisperASR


def is_experiment(source):
    """Whether ``source`` is a train.py output folder."""
    return (Path(str(source)) / "hyperparams.yaml").is_file()


def load_frozen(source, save_path=None):
    """``(WhisperASR in eval mode with every parameter frozen, what was loaded in words)``."""
    if is_experiment(source):
        whisper, checkpoint = load_best(source)
        loaded = f"{describe(checkpoint)} of {source}"
    else:
        whisper, loaded = WhisperASR(str(source), save_path=save_path, freeze=True), str(source)
    whisper.requires_grad_(False)
    return whisper.eval(), loaded
