"""Fine-tune Whisper with SpeechBrain and choose checkpoints by what users hear.

The layout is the architecture:

- ``python -m whisper_finetuning.<tool>``: the command-line tools are this package's top-level
  modules (``export_hf``, ``ct2_to_hf``, ``check_data``, ``diagnose``, ``review``, ``benchmark``,
  ``memory``, ``write_shards``, ``upstream`` ...).
- The library the recipe's ``train.py`` imports, by role: ``data`` (manifests, audio, checks,
  batches; ``data.prepare``: the datasets' preparers), ``model``, ``decoding``, ``evaluation``,
  ``training``, ``export``.
- ``analysis``: the diagnosis and the review of finished runs (never imports torch).
- ``profiling``: what only the benchmarks and the memory planner use.
"""
