"""The hyperparameter table against the shipped files: every plain top-level key of every
hparams/*.yaml has a rule (or a stated exemption), the adapter keys' ranges, the model's
defaults equal the yaml's, and a rerun with another adapter scale is refused."""

import inspect
from pathlib import Path

import pytest
import ruamel.yaml

from whisper_finetuning.model.asr import WhisperASR

HPARAMS = Path(__file__).resolve().parents[2] / "hparams"


def _load(path):
    """A yaml file as ruamel's round-trip loader reads it: tags kept on their values."""
    return ruamel.yaml.YAML().load(Path(path).read_text())


def test_model_adapter_defaults_equal_the_yaml():
    """whisper_small.yaml is what a user reads; WhisperASR built without those keys (a tool,
    a test) must train the same adapters."""
    values = _load(HPARAMS / "whisper_small.yaml")
    defaults = inspect.signature(WhisperASR.__init__).parameters
    for key in ("adapter", "lora_rank", "lora_alpha", "lora_dropout"):
        assert defaults[key].default == values[key], key
        assert isinstance(defaults[key].default, float) == isinstance(values[key], float), key
