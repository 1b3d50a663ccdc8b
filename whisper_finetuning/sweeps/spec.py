"""A sweep's specification: a YAML file, read and checked before any trial runs.

```yaml
hparams: hparams/demo_tiny_en.yaml   # the recipe every trial runs
output_folder: results/sweep_lr      # trials in trial_NNN/, the study and the report
sampler: grid                        # grid, random or tpe
n_trials: 4                          # default for grid: the grid's size
seed: 0                              # the sampler's (give each process sharing a study its own)
storage: null                        # a database URL; default sqlite:///OUTPUT_FOLDER/study.db
study_name: null                     # default: the output folder's name
pruning: false                       # Optuna's median pruner on the valid metric per epoch:
                                     # true, or its arguments ({n_startup_trials: 2, ...})
selection_metric: WER                # what trials are chosen by (valid only)
heartbeat_seconds: 60                # a trial silent for twice this long was killed
overrides: {number_of_epochs: 2}     # --key=value given to every trial
space:                               # what the trials vary
  lr: [1.0e-4, 3.0e-4]               # a list: these values (all grid parameters are lists)
  warmup_steps: {low: 10, high: 100, int: true}
  weight_decay: {low: 1.0e-4, high: 0.1, log: true}
```
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import ruamel.yaml

from whisper_finetuning.common.errors import RecipeError
from whisper_finetuning.evaluation.selection import SELECTION_METRICS

SAMPLERS = ("grid", "random", "tpe")
STUDY_FILE = "study.db"


@dataclass
class SweepSpec:
    hparams: str
    output_folder: Path
    space: dict
    sampler: str = "tpe"
    n_trials: int = None
    seed: int = None
    storage: str = None
    study_name: str = None
    pruning: bool | dict = False  # a dict: MedianPruner's arguments
    selection_metric: str = "WER"
    heartbeat_seconds: int = 60
    overrides: dict = field(default_factory=dict)
    recipe: str = "train.py"  # the script a trial runs


def load(path):
    """The checked spec in ``path``; a ``RecipeError`` naming what is wrong."""
    try:
        raw = ruamel.yaml.YAML(typ="safe", pure=True).load(Path(path).read_text())
    except (OSError, ruamel.yaml.YAMLError) as error:
        raise RecipeError(f"cannot read the sweep spec {path}: {error}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a sweep spec is a mapping of keys (hparams, space, ...)")
    known = set(SweepSpec.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise RecipeError(f"{path}: unknown key(s) {', '.join(unknown)}; known: {sorted(known)}")
    for key in ("hparams", "output_folder", "space"):
        if raw.get(key) in (None, "", {}):
            raise RecipeError(f"{path}: '{key}' is required")
    spec = SweepSpec(**raw)
    spec.output_folder = Path(spec.output_folder)
    spec.study_name = spec.study_name or spec.output_folder.resolve().name
    spec.storage = spec.storage or f"sqlite:///{spec.output_folder.resolve() / STUDY_FILE}"
    _check(spec, path)
    return spec


def _check(spec, path):
    if spec.sampler not in SAMPLERS:
        raise RecipeError(f"{path}: sampler '{spec.sampler}'; choose one of {', '.join(SAMPLERS)}")
    if spec.selection_metric not in SELECTION_METRICS:
        raise RecipeError(
            f"{path}: selection_metric '{spec.selection_metric}'; choose one of "
            f"{', '.join(SELECTION_METRICS)}"
        )
    for name, values in spec.space.items():
        if isinstance(values, list):
            if not values:
                raise RecipeError(f"{path}: space.{name} lists no value")
        elif spec.sampler == "grid":
            raise RecipeError(f"{path}: space.{name}: a grid needs a list of values")
        elif not isinstance(values, dict) or not {"low", "high"} <= set(values):
            raise RecipeError(f"{path}: space.{name} is a list or {{low, high[, log, int]}}")
    if not isinstance(spec.pruning, (bool, dict)):
        raise RecipeError(f"{path}: pruning is true, false or the median pruner's arguments")
    try:
        pruner(spec)
    except (TypeError, ValueError) as error:
        raise RecipeError(f"{path}: pruning: {error}") from None
    if spec.n_trials is None:
        if spec.sampler != "grid":
            raise RecipeError(f"{path}: 'n_trials' is required for sampler {spec.sampler}")
        spec.n_trials = math.prod(len(v) for v in spec.space.values())
    if not isinstance(spec.n_trials, int) or spec.n_trials < 1:
        raise RecipeError(f"{path}: n_trials must be a positive integer")


def pruner(spec):
    """Optuna's median pruner on the valid metric per epoch (Optuna's defaults, or the spec's
    ``pruning`` arguments: it prunes from trial ``n_startup_trials + 1`` on), or none."""
    if spec.pruning is False:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(**(spec.pruning if isinstance(spec.pruning, dict) else {}))


def suggest(trial, space):
    """The trial's values of every swept hparam (Optuna ``suggest_*``)."""
    params = {}
    for name, values in space.items():
        if isinstance(values, list):
            params[name] = trial.suggest_categorical(name, values)
        elif values.get("int"):
            params[name] = trial.suggest_int(
                name, values["low"], values["high"], log=values.get("log", False)
            )
        else:
            params[name] = trial.suggest_float(
                name, float(values["low"]), float(values["high"]), log=values.get("log", False)
            )
    return params
