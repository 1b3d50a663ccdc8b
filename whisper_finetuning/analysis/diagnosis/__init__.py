"""Diagnose a training run: why loss and WER disagree, and which checkpoint to trust.

``python -m whisper_finetuning.diagnose`` runs it; the modules here read the logs (``records``),
hold the statistics (``stats``), run the analyses (``boundary``, ``checks``) and write the
plots and the report (``plots``, ``report``).
"""


class Unavailable(Exception):
    """An analysis the available logs do not allow; the message says what is missing."""
