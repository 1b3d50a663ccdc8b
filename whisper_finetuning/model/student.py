"""A student: a Whisper whose decoder keeps a few maximally spaced layers of its own.

distil-whisper initialises its students this way (``np.linspace(0, total - 1, keep, dtype=int)``:
2 of 32 decoder layers are layers 0 and 31). The cut is in place; the config and the
key/value cache's layer indices follow, so the student searches and exports as a Whisper of
its own depth.
"""

import json
from pathlib import Path

import numpy as np
import torch

from whisper_finetuning.common.errors import RecipeError


class DistillationError(RecipeError, ValueError):
    """Distillation settings that cannot work together."""


def spaced_layers(total, keep):
    """``keep`` maximally spaced layer indices out of ``total``: the first and the last, the
    others evenly between (distil-whisper's ``np.linspace(0, total - 1, keep, dtype=int)``)."""
    if not 1 <= keep <= total:
        raise DistillationError(
            f"student_decoder_layers must be between 1 and the model's {total}, not {keep}"
        )
    return np.linspace(0, total - 1, keep, dtype=int).tolist()


def keep_decoder_layers(model, keep):
    """Cut a Hugging Face Whisper's decoder to ``keep`` maximally spaced layers, in place
    (the config follows, so an export saves the student); returns the kept indices."""
    decoder = model.model.decoder
    chosen = spaced_layers(len(decoder.layers), keep)
    decoder.layers = torch.nn.ModuleList(decoder.layers[i] for i in chosen)
    for index, layer in enumerate(decoder.layers):  # the key/value cache is indexed by these
        layer.self_attn.layer_idx = layer.encoder_attn.layer_idx = index
    model.config.decoder_layers = keep
    return chosen


def cut_as_trained(whisper, experiment_folder):
    """Cut a run's freshly built model as the run cut its student (``run.json`` records
    ``student_decoder_layers`` among its settings, ``provenance.RUN_INFO``), so that the
    student's checkpoint loads into a model of its own shape."""
    info = Path(experiment_folder) / "run.json"
    settings = json.loads(info.read_text()).get("settings", {}) if info.is_file() else {}
    if settings.get("student_decoder_layers"):
        keep_decoder_layers(whisper.model, settings["student_decoder_layers"])
