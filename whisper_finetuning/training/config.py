"""Hyperparameter files that extend one another, with command-line overrides.

``hparams/whisper_small.yaml`` holds every key. A file for another model size only names what
differs, under ``extends: <base file>``; its keys, then the command line's, are applied to the
base as HyperPyYAML overrides, so ``!ref`` values in the base follow them (and the child's own
values may use ``!ref`` too). An override naming a
key the base does not have is an error, said in one line; so is a value of the wrong type or
range (``hparam_rules``), found before anything is built.
"""

import re
from pathlib import Path

import ruamel.yaml
from hyperpyyaml import load_hyperpyyaml, resolve_references

from whisper_finetuning.training import hparam_rules

EXTENDS_KEY = "extends"


class HparamsError(ValueError):
    """A hyperparameter file or override that cannot be used."""


def _parse(text, where):
    """A YAML mapping with its HyperPyYAML tags kept for later resolution."""
    try:
        mapping = ruamel.yaml.YAML().load(text) or {}
    except ruamel.yaml.YAMLError as error:
        raise HparamsError(f"{where}: malformed YAML: {_first_line(error)}") from None
    if not isinstance(mapping, dict):
        raise HparamsError(f"{where}: expected key: value pairs")
    return mapping


def _first_line(error):
    """The first non-empty line of an error message."""
    return next((line for line in str(error).splitlines() if line.strip()), repr(error))


def resolve(hparams_file, overrides=""):
    """The base file and the merged overrides that ``hparams_file`` plus ``overrides`` mean.

    ``overrides`` is YAML text (as ``speechbrain.parse_arguments`` gives it) or a mapping.

    Returns ``(base_file, overrides_dict)``; follows chains of ``extends``.
    """
    path = Path(hparams_file)
    if not path.is_file():
        raise HparamsError(f"hyperparameter file not found: {path}")
    if isinstance(overrides, dict):
        merged = dict(overrides)
    else:
        merged = _parse(overrides, "command-line overrides") if overrides else {}
    while True:
        head = path.read_text()
        if f"\n{EXTENDS_KEY}:" not in "\n" + head:
            return path, merged
        child = _parse(head, str(path))
        base = path.parent / str(child.pop(EXTENDS_KEY))
        merged = {**child, **merged}
        if not base.is_file():
            raise HparamsError(f"{path}: extends a file that does not exist: {base}")
        path = base


def plain_values(base, merged):
    """The hyperparameters with references and overrides resolved, no object built.

    Mappings and lists are plain dicts and lists; tagged values (``!new:`` ...) stay tagged.
    """
    with open(base) as stream:
        try:
            resolved = resolve_references(stream, merged, overrides_must_match=True)
        except KeyError as error:
            match = re.search(r"Override '(.+?)' not found", str(error))
            key = match.group(1) if match else str(error)
            raise HparamsError(f"unknown hyperparameter '{key}': {base} has no such key") from None
        except ruamel.yaml.YAMLError as error:
            raise HparamsError(f"{base}: malformed YAML: {_first_line(error)}") from None
    return _plain(ruamel.yaml.YAML().load(resolved))


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
    """Load ``hparams_file`` with ``overrides`` (YAML text); returns ``(hparams, base, merged)``.

    Every plain value is checked (``hparam_rules``) before any object is built. SpeechBrain
    takes some keys (``--grad_accumulation_factor``, ``--precision`` ...) as run options
    (``run_opts``) instead of overrides: those given are checked too and replace the file's
    values in ``hparams``, so that ``hparams`` says what the run uses.
    """
    base, merged = resolve(hparams_file, overrides)
    values = plain_values(base, merged)
    given = getattr(run_opts, "overridden_args", ())
    run_options = {key: run_opts[key] for key in given if key in values}
    problem = hparam_rules.check({**values, **run_options})
    if problem:
        raise HparamsError(problem)
    with open(base) as stream:
        hparams = load_hyperpyyaml(stream, merged)
    hparams.update(run_options)
    return hparams, base, merged
