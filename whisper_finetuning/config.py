"""Hyperparameter files that extend one another, with command-line overrides.

``hparams/whisper_small.yaml`` holds every key. A file for another model size only names what
differs, under ``extends: <base file>``; its keys, then the command line's, are applied to the
base as HyperPyYAML overrides, so ``!ref`` values in the base follow them (and the child's own
values may use ``!ref`` too). An override naming a
key the base does not have is an error, said in one line.
"""

import re
from pathlib import Path

import ruamel.yaml
from hyperpyyaml import load_hyperpyyaml

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


def plain_values(hparams_file, overrides=""):
    """The keys of ``hparams_file`` (with ``extends`` and ``overrides`` applied) as written,
    without building any object; ``!ref`` values stay unresolved."""
    base, merged = resolve(hparams_file, overrides)
    return {**_parse(base.read_text(), str(base)), **merged}


def load_hparams(hparams_file, overrides=""):
    """Load ``hparams_file`` with ``overrides`` (YAML text); returns ``(hparams, base, merged)``."""
    base, merged = resolve(hparams_file, overrides)
    with open(base) as stream:
        try:
            hparams = load_hyperpyyaml(stream, merged)
        except KeyError as error:
            match = re.search(r"Override '(.+?)' not found", str(error))
            key = match.group(1) if match else str(error)
            raise HparamsError(f"unknown hyperparameter '{key}': {base} has no such key") from None
        except ruamel.yaml.YAMLError as error:
            raise HparamsError(f"{base}: malformed YAML: {_first_line(error)}") from None
    return hparams, base, merged
