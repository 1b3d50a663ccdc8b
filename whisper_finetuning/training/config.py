"""Hyperparameter files with command-line overrides, checked before anything is built.

Each recipe yaml is plain HyperPyYAML, complete on its own. The advanced settings
(``defaults.ADVANCED``) take library defaults unless the yaml or the command line sets them.
An override naming a key neither has, or the same key twice, is an error said in one line;
so is a value of the wrong type or range (``hparam_rules``).
"""

import os
import re
from pathlib import Path

import ruamel.yaml
import torch
from hyperpyyaml import load_hyperpyyaml, resolve_references

from whisper_finetuning.common.errors import RecipeError
from whisper_finetuning.decoding import transcribe_rules
from whisper_finetuning.training import allocator, hparam_rules
from whisper_finetuning.training.defaults import ADVANCED


class HparamsError(RecipeError, ValueError):
    """A hyperparameter file or override that cannot be used."""


def _first_line(error):
    """The first non-empty line of an error message."""
    return next((line for line in str(error).splitlines() if line.strip()), repr(error))


def _parse(text, where):
    """A YAML mapping with its HyperPyYAML tags kept for later resolution."""
    try:
        mapping = ruamel.yaml.YAML().load(text) or {}
    except ruamel.yaml.constructor.DuplicateKeyError as error:
        key = re.search(r'found duplicate key "(.+?)"', str(error))
        name = key.group(1) if key else _first_line(error)
        raise HparamsError(f"{where}: '{name}' is given twice") from None
    except ruamel.yaml.YAMLError as error:
        raise HparamsError(f"{where}: malformed YAML: {_first_line(error)}") from None
    if not isinstance(mapping, dict):
        raise HparamsError(f"{where}: expected key: value pairs")
    return mapping


def split_overrides(hparams_file, overrides=""):
    """``overrides`` (YAML text, as ``speechbrain.parse_arguments`` gives it, or a mapping) as
    ``(for the file, advanced)``: keys the file has, and advanced keys it leaves to defaults."""
    path = Path(hparams_file)
    if not path.is_file():
        raise HparamsError(f"hyperparameter file not found: {path}")
    in_file = _parse(path.read_text(), str(path))
    if isinstance(overrides, dict):
        given = dict(overrides)
    else:
        given = _parse(overrides, "command-line overrides") if overrides else {}
    unknown = [key for key in given if key not in in_file and key not in ADVANCED]
    if unknown:
        raise HparamsError(f"unknown hyperparameter '{unknown[0]}': {path} has no such key")
    file_overrides = {key: value for key, value in given.items() if key in in_file}
    advanced = {key: value for key, value in ADVANCED.items() if key not in in_file}
    advanced.update({key: value for key, value in given.items() if key not in in_file})
    return file_overrides, _plain(advanced)


def plain_values(hparams_file, overrides=""):
    """Every hyperparameter with references, overrides and defaults resolved, no object built.

    Mappings and lists are plain dicts and lists; tagged values (``!new:`` ...) stay tagged.
    """
    file_overrides, advanced = split_overrides(hparams_file, overrides)
    with open(hparams_file) as stream:
        try:
            resolved = resolve_references(stream, file_overrides, overrides_must_match=True)
        except ruamel.yaml.YAMLError as error:
            raise HparamsError(f"{hparams_file}: malformed YAML: {_first_line(error)}") from None
    return {**_plain(ruamel.yaml.YAML().load(resolved)), **advanced}


def _plain(node):
    """ruamel's round-trip containers and scalars as built-in Python values."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    for kind in (bool, int, float, str):
        if isinstance(node, kind):
            return kind(node)
    return node


def load_hparams(hparams_file, overrides="", run_opts=None):
    """Load ``hparams_file`` with ``overrides``; returns ``(hparams, overrides as a mapping)``.

    Every plain value is checked (``hparam_rules``) before any object is built. SpeechBrain
    takes some keys (``--grad_accumulation_factor``, ``--precision`` ...) as run options
    (``run_opts``) instead of overrides: those given are checked too and replace the file's
    values in ``hparams``, so that ``hparams`` says what the run uses. Where it is set, applies
    ``keep_freed_memory`` to the process.
    """
    values = plain_values(hparams_file, overrides)
    given = getattr(run_opts, "overridden_args", ())
    run_options = {key: run_opts[key] for key in given if key in values}
    settings = {**values, **run_options}
    problem = hparam_rules.check(settings)
    if problem:
        raise HparamsError(problem)
    if not torch.cuda.is_available():  # before any rerun check: this machine cannot run it
        if settings["precision"] == "fp16":
            raise HparamsError(
                "precision fp16 needs a CUDA GPU; use --precision=bf16 or fp32 on CPU"
            )
        if settings["adamw_8bit"]:
            raise HparamsError(
                "adamw_8bit needs a CUDA GPU (bitsandbytes); set adamw_8bit: False on CPU"
            )
    if settings.get("sharding") == "fsdp" and os.environ.get("RANK") is None:
        raise HparamsError(
            "sharding fsdp shards the model over the processes of a torchrun: start it with "
            "torchrun --nproc_per_node=N train.py HPARAMS, or use sharding: ddp for one process"
        )
    if settings["keep_freed_memory"]:  # for the whole run: the model's loading, the encoder
        allocator.keep_freed_memory()  # cache's pass (before any Brain exists), every step
    file_overrides, advanced = split_overrides(hparams_file, overrides)
    with open(hparams_file) as stream:
        hparams = load_hyperpyyaml(stream, file_overrides)
    hparams.update(advanced)
    if hparams["encoder_cache_folder"] is None:
        hparams["encoder_cache_folder"] = f"{hparams['output_folder']}/encoder_cache"
    hparams.update(run_options)
    transcribe_rules.attach(hparams)
    return hparams, {**file_overrides, **advanced_given(advanced)}


def advanced_given(advanced):
    """The advanced settings that differ from the library's defaults."""
    return {key: value for key, value in advanced.items() if ADVANCED.get(key) != value}
