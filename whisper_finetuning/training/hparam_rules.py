"""The type and range of every plain hyperparameter, checked before any work starts.

``RULES`` is the one table: key (``a.b`` for a key inside a mapping) -> ``Rule``. ``check``
runs it on the values a hyperparameter file and its overrides resolve to, before any object
(the model, the data loaders) is built; the first failure is one line naming the key and what
it allows. ``rerun_settings`` picks the values a rerun in a folder holding a trained checkpoint
must not change (``Rule.same_on_rerun``).
"""

import itertools
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import ruamel.yaml

from whisper_finetuning.data.audio import CHUNK_SECONDS
from whisper_finetuning.data.batching import BATCH_LENGTHS
from whisper_finetuning.data.encoder_cache import MODES as ENCODER_CACHE_MODES
from whisper_finetuning.data.manifests import BAD_ROW_POLICIES
from whisper_finetuning.evaluation.scoring import NORMALIZERS
from whisper_finetuning.evaluation.selection import SELECTION_METRICS
from whisper_finetuning.model.adapters import ADAPTERS
from whisper_finetuning.model.asr import language_code
from whisper_finetuning.model.bundled import BUNDLED_MODELS
from whisper_finetuning.model.vocabulary import (
    ENGLISH_CODE,
    MAX_TARGET_POSITIONS,
    TASKS,
    is_multilingual,
)
from whisper_finetuning.training.mwer import OBJECTIVES

SORTINGS = ("random", "ascending", "descending")
PRECISIONS = ("fp32", "bf16", "fp16")
SHARDINGS = ("ddp", "fsdp")  # training/sharding.py
SAVE_FOLDER = "save"  # save_folder's place in an output folder, as the yaml has it
DATA_CHECKS = ("error", "warn", "off")


@dataclass(frozen=True)
class Rule:
    """What one key allows: a kind (int, number, bool, str, str_list, mapping, choice), an
    inclusive range (``low_open``: the low end excluded), choices, null or not, and an
    extra ``check`` (value -> why not, or None) with ``words`` saying what it allows."""

    kind: str
    low: float = None
    high: float = None
    low_open: bool = False
    choices: tuple = ()
    nullable: bool = False
    check: object = None
    words: str = ""
    same_on_rerun: bool = True  # False: may differ when a rerun continues a trained checkpoint

    def allowed(self):
        """The allowed values in words (``an integer >= 1``)."""
        if self.words:
            words = self.words
        elif self.kind == "choice":
            words = "one of " + ", ".join(str(c) for c in self.choices)
        else:
            words = {
                "int": "an integer",
                "number": "a number",
                "bool": "True or False",
                "str": "a string",
                "str_list": "a list of strings",
                "number_list": "a list of numbers",
                "mapping": "a mapping of key: value",
            }[self.kind]
            if self.low is not None and self.high is not None:
                words += f" from {_show(self.low)} to {_show(self.high)}"
            elif self.low is not None:
                words += f" {'>' if self.low_open else '>='} {_show(self.low)}"
        return words + (" or null" if self.nullable else "")

    def problem(self, value):
        """Why ``value`` is not allowed, or None."""
        if value is None:
            return None if self.nullable else f"must be {self.allowed()}, not null"
        if not _has_kind(self.kind, value, self.choices):
            return f"must be {self.allowed()}, not {_show(value)}"
        if self.kind in ("int", "number"):
            too_low = self.low is not None and (
                value <= self.low if self.low_open else value < self.low
            )
            too_high = self.high is not None and value > self.high
            if too_low or too_high or not math.isfinite(value):
                return f"must be {self.allowed()}, not {_show(value)}"
        why = self.check(value) if self.check else None
        return f"must be {self.allowed()}, not {_show(value)} ({why})" if why else None


def _has_kind(kind, value, choices):
    """Whether ``value`` is of ``kind`` (a bool is not a number; an integral float is no int)."""
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "str_list":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == "number_list":
        return isinstance(value, list) and all(_has_kind("number", v, ()) for v in value)
    if kind == "mapping":
        return isinstance(value, dict)
    if kind == "int_or_str":
        return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
    return any(type(value) is type(c) and value == c for c in choices)


def _show(value):
    """A value as it would be written in the yaml."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def _teacher_source(value):
    """A train.py output folder (its selected checkpoint teaches), or a model source."""
    if os.path.isfile(os.path.join(os.path.expanduser(value), "hyperparams.yaml")):
        return None
    return _model_source(value)


def _model_source(value):
    """A ``bundled:`` name that exists; a local model folder (a path) that holds a model."""
    if value.startswith("bundled:"):
        if value not in BUNDLED_MODELS:
            return "no such bundled model"
        return None
    local = value.startswith(("/", "./", "../", "~")) or os.path.exists(value)
    if not local:
        return None  # a Hugging Face Hub name, checked when it loads
    folder = os.path.expanduser(value)
    if not os.path.isdir(folder):
        return "no such folder"
    if not os.path.isfile(os.path.join(folder, "config.json")):
        return "a folder without config.json"
    return None


def _whisper_language(value):
    """A language Whisper knows (name or code); the valid codes when not."""
    try:
        language_code(value)
    except ValueError as error:
        return str(error)
    return None


def english_only(whisper_hub):
    """Whether ``whisper_hub`` names an English-only (``.en``) checkpoint: a local folder by
    its vocabulary size, a bundled or Hub name by its ``.en`` suffix; None when unknown."""
    config = Path(os.path.expanduser(whisper_hub)) / "config.json"
    if config.is_file():
        try:
            vocab_size = json.loads(config.read_text())["vocab_size"]
        except (OSError, ValueError, KeyError):
            return None
        return not is_multilingual(vocab_size)
    return whisper_hub.rstrip("/").endswith(".en")


def _validated_run(value):
    """A train.py output folder whose ``save`` holds a checkpoint with a valid WER."""
    if not validated_checkpoints(value):
        return "no checkpoint with a valid WER in its save folder"
    return None


def validated_checkpoints(folder):
    """The ``CKPT.yaml`` paths in an output folder's ``save`` folder that hold a WER."""
    found = []
    for meta in sorted((Path(folder) / SAVE_FOLDER).glob("CKPT+*/CKPT.yaml")):
        if "WER" in (ruamel.yaml.YAML(typ="safe").load(meta.read_text()) or {}):
            found.append(meta)
    return found


def _regular_expressions(patterns):
    """Each pattern compiles as a regular expression."""
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as error:
            return f"'{pattern}': {error}"
    return None


def _below_one(value):
    """Under 1 (a dropout of 1 drops every input)."""
    return None if value < 1 else "1 or more drops every input"


def _epoch_or_folder(value):
    """An epoch number is >= 1 (a folder is checked where it is loaded)."""
    return "epochs count from 1" if isinstance(value, int) and value < 1 else None


def _non_empty(value):
    """At least one entry."""
    return None if value else "no manifest"


def _int(low=None, high=None, **kw):
    return Rule("int", low, high, **kw)


def _number(low=None, high=None, **kw):
    return Rule("number", low, high, **kw)


def _choice(*choices, **kw):
    return Rule("choice", choices=choices, **kw)


BOOL, STR, STR_LIST, MAPPING = Rule("bool"), Rule("str"), Rule("str_list"), Rule("mapping")
PATH = Rule("str", same_on_rerun=False)  # content is compared, not where it lies
RERUN_MAY_CHANGE = dict(same_on_rerun=False)

RULES = {
    # data
    "seed": _int(),
    "output_folder": PATH,
    "save_folder": PATH,
    "data_folder": STR,
    "dataset": STR,  # its choices: whisper_finetuning.data.prepare.PREPARERS
    "prep_options": MAPPING,
    "skip_prep": BOOL,
    "manifest_folder": PATH,
    "train_csv": PATH,
    "valid_csv": PATH,
    "test_csv": Rule(
        "str_list", check=_non_empty, words="a list of manifests", same_on_rerun=False
    ),
    "on_bad_row": _choice(*BAD_ROW_POLICIES),
    "data_checks": _choice(*DATA_CHECKS, **RERUN_MAY_CHANGE),
    "group_columns": Rule("str_list", **RERUN_MAY_CHANGE),
    "sorting": _choice(*SORTINGS),
    # model
    "whisper_hub": Rule(
        "str",
        check=_model_source,
        words=f"{', '.join(BUNDLED_MODELS)}, a Hugging Face Hub name or a local model folder",
    ),
    "init_from": Rule(
        "str",
        nullable=True,
        check=_validated_run,
        words="the output folder of a run with a validated checkpoint",
    ),
    "whisper_cache": Rule("str", nullable=True, **RERUN_MAY_CHANGE),
    "language": Rule(
        "str",
        nullable=True,
        check=_whisper_language,
        words="a language Whisper knows (name or code, e.g. german or de)",
    ),
    "task": _choice(*TASKS),
    "freeze": BOOL,
    "freeze_encoder": BOOL,
    "trainable_encoder_layers": _int(0),
    "trainable_patterns": STR_LIST,
    "encoder_window_seconds": _int(1, CHUNK_SECONDS),
    "normalizer": _choice("auto", *NORMALIZERS),
    # the valid score that keeps the checkpoint; changing it on a rerun changes what is kept
    "selection_metric": _choice(*SELECTION_METRICS),
    "encoder_cache": _choice(*ENCODER_CACHE_MODES, **RERUN_MAY_CHANGE),
    "encoder_cache_folder": Rule(
        "str", nullable=True, same_on_rerun=False
    ),  # null: <output>/encoder_cache
    "cross_attention_cache_mb": _int(0, **RERUN_MAY_CHANGE),
    # adapters: which, where and how they scale are the trained checkpoint's own
    "adapter": _choice(*ADAPTERS, nullable=True),
    "lora_rank": _int(1),
    "lora_alpha": _number(0, low_open=True),
    "lora_dropout": _number(0, check=_below_one, words="a number from 0 to under 1"),
    "adapter_targets": Rule(
        "str_list", check=_regular_expressions, words="a list of regular expressions"
    ),
    # recomputes the same activations: results do not change
    "gradient_checkpointing": Rule("bool", **RERUN_MAY_CHANGE),
    # training
    "number_of_epochs": _int(1, **RERUN_MAY_CHANGE),
    "batch_size": _int(1),
    "test_batch_size": _int(1, **RERUN_MAY_CHANGE),
    "lr": _number(0, low_open=True),
    "warmup_steps": _int(1),
    "weight_decay": _number(0),
    "max_grad_norm": _number(0, low_open=True),
    "grad_accumulation_factor": _int(1),
    "label_smoothing": _number(0, 1),
    "loss_chunk_size": _int(0, **RERUN_MAY_CHANGE),
    "keep_freed_memory": Rule("bool", **RERUN_MAY_CHANGE),
    "adamw_fused": Rule("bool", **RERUN_MAY_CHANGE),
    # the optimizer's saved state has another form with 8-bit states
    "adamw_8bit": BOOL,
    # a rerun may continue a CE checkpoint with mwer; whether mwer_init's folder or epoch holds
    # a checkpoint is checked where it is loaded (mwer.init_checkpoint)
    "objective": _choice(*OBJECTIVES, **RERUN_MAY_CHANGE),
    "mwer_beam_size": _int(1, **RERUN_MAY_CHANGE),
    "mwer_ce_weight": _number(0, **RERUN_MAY_CHANGE),
    "mwer_init": Rule(
        "int_or_str",
        nullable=True,
        check=_epoch_or_folder,
        words="the epoch number (>= 1) of a kept checkpoint or a checkpoint folder",
        **RERUN_MAY_CHANGE,
    ),
    "precision": _choice(*PRECISIONS),
    # checkpoints are consolidated either way (training/sharding.py): a rerun may switch
    "sharding": _choice(*SHARDINGS, **RERUN_MAY_CHANGE),
    "timestamp_probability": _number(0, 1),
    "longform_probability": _number(0, 1),
    "condition_on_prev_probability": _number(0, 1),
    "ckpt_interval_minutes": _number(0, **RERUN_MAY_CHANGE),
    "ckpt_interval_steps": _int(0, **RERUN_MAY_CHANGE),
    "nonfinite_patience": _int(0, **RERUN_MAY_CHANGE),
    "num_workers": _int(0, **RERUN_MAY_CHANGE),
    "zero_shot_eval": Rule("bool", **RERUN_MAY_CHANGE),
    "comparison_group": Rule("str", **RERUN_MAY_CHANGE),
    "diagnose_after_training": Rule("bool", **RERUN_MAY_CHANGE),
    "tensorboard": Rule("bool", **RERUN_MAY_CHANGE),
    "review_checkpoints": BOOL,
    # how many checkpoints the run keeps to the end, and which it may add
    "average_checkpoints": _int(0),
    "sanity_utterances": _int(0, **RERUN_MAY_CHANGE),
    "sanity_passes_per_epoch": _int(1, **RERUN_MAY_CHANGE),
    "sanity_max_epochs": _int(1, **RERUN_MAY_CHANGE),
    "sanity_lr": _number(0, low_open=True, **RERUN_MAY_CHANGE),
    "sanity_max_nll": _number(0, **RERUN_MAY_CHANGE),
    "dynamic_batching": BOOL,
    "dynamic_batch_length": _choice(*BATCH_LENGTHS),
    "dynamic_batch_sampler.max_batch_length": _number(0, low_open=True),
    "dynamic_batch_sampler.num_buckets": _int(1),
    # decoding
    "decode_max_tokens": _int(1, MAX_TARGET_POSITIONS, nullable=True),
    "test_beam_size": _int(1, **RERUN_MAY_CHANGE),
    "length_penalty": _number(0, **RERUN_MAY_CHANGE),
    "loop_min_repeats": _int(2),
    "loop_min_tokens": _int(1),
    "longform_test_csv": Rule("str_list", **RERUN_MAY_CHANGE),
    "longform_condition_on_previous_text": Rule("bool", **RERUN_MAY_CHANGE),
    # augmentation
    "augment": BOOL,
    # ---- sweeps (python -m whisper_finetuning.sweep) ----
    "decode_test_sets": Rule("bool", **RERUN_MAY_CHANGE),
    # ---- non-speech: openai's transcribe rules in every search (decoding/transcribe_rules.py,
    # docs/nonspeech.md); null switches a threshold's rule off ----
    "temperatures": Rule(
        "number_list",
        check=lambda value: _temperatures(value),  # defined below
        words="a non-empty list of increasing temperatures >= 0",
        **RERUN_MAY_CHANGE,
    ),
    "valid_temperatures": Rule(
        "number_list",
        nullable=True,
        check=lambda value: _temperatures(value),
        words="a non-empty list of increasing temperatures >= 0",
        **RERUN_MAY_CHANGE,
    ),
    "compression_ratio_threshold": _number(0, low_open=True, nullable=True, **RERUN_MAY_CHANGE),
    "logprob_threshold": _number(nullable=True, **RERUN_MAY_CHANGE),
    "no_speech_threshold": _number(0, 1, nullable=True, **RERUN_MAY_CHANGE),
    "best_of": _int(1, **RERUN_MAY_CHANGE),
    # ---- training on non-speech and keeping what Whisper knew (issue 33) ----
    # what a checkpoint trained on (the manifests' content is compared: run.json)
    "nonspeech_probability": _number(0, 1),
    "nonspeech_csv": Rule("str", nullable=True, same_on_rerun=False),
    "replay_csv": Rule("str", nullable=True, same_on_rerun=False),
    "replay_ratio": _number(0, check=_below_one, words="a number from 0 to under 1"),
    "l2sp_weight": _number(0),
    # decoded like the test sets (its content is compared like theirs: run.json)
    "keep_test_csv": Rule("str", nullable=True, **RERUN_MAY_CHANGE),
    # ---- pseudo-labels and distillation (issue 29; docs/pseudo-labels.md) ----
    "pseudo_label_weight": _number(0, **RERUN_MAY_CHANGE),
    "teacher": Rule(
        "str",
        nullable=True,
        check=_teacher_source,
        words=f"null, an experiment folder, {', '.join(BUNDLED_MODELS)}, a Hub name or a folder",
        same_on_rerun=False,
    ),
    "distill_weight": _number(0, **RERUN_MAY_CHANGE),
    "distill_temperature": _number(0, low_open=True, **RERUN_MAY_CHANGE),
    "student_decoder_layers": _int(1, nullable=True),  # the checkpoint's shape: kept on rerun
    "assistant": Rule(
        "str",
        nullable=True,
        check=_teacher_source,
        words=f"null, an experiment folder, {', '.join(BUNDLED_MODELS)}, a Hub name or a folder",
        same_on_rerun=False,
    ),
}


def _temperatures(values):
    """Why a temperature list is not one fallback sequence, or None."""
    if not values:
        return "empty"
    if any(not math.isfinite(t) or t < 0 for t in values):
        return "a temperature below 0"
    if any(b <= a for a, b in itertools.pairwise(values)):
        return "not increasing"
    return None


def _lookup(values, key):
    """The value at ``a.b`` in nested mappings; ``KeyError`` if a file does not have it."""
    for part in key.split("."):
        values = values[part]
    return values


def check(values):
    """The first problem with ``values`` (plain resolved hyperparameters) as one line, or None.

    A key absent from ``values`` (a file that is not built on whisper_small.yaml) is not
    checked.
    """
    for key, rule in RULES.items():
        try:
            value = _lookup(values, key)
        except (KeyError, TypeError):
            continue
        problem = rule.problem(value)
        if problem:
            return f"{key} {problem}"
    return _combination_problem(values)


# MWER decodes and scores every row with the plain transcription prompt and its own reference,
# which examples in the other formats do not have.
_NOT_WITH_MWER = (
    "timestamp_probability",
    "longform_probability",
    "condition_on_prev_probability",
    "nonspeech_probability",
    "replay_csv",
)


def _combination_problem(values):
    """The first pair of individually valid values that cannot be used together, or None."""
    hub = values.get("whisper_hub")
    if isinstance(hub, str) and english_only(hub):
        if values.get("task", "transcribe") != "transcribe":
            return (
                f"task {values['task']} needs a multilingual checkpoint; {hub} is English-only "
                "(.en)"
            )
        language = values.get("language")
        if language is not None and language_code(language) != ENGLISH_CODE:
            return (
                f"language {language}: an English-only (.en) checkpoint cannot transcribe it: "
                "use a multilingual one (e.g. --whisper_hub=bundled:base)"
            )
    if values.get("sharding") == "fsdp" and values.get("adapter"):
        return (
            f"sharding fsdp is for full fine-tuning; adapter {values['adapter']} trains few "
            "weights: use sharding: ddp with an adapter (or adapter: null to shard the model)"
        )
    if values.get("sharding") == "fsdp" and values.get("l2sp_weight"):
        return (
            "l2sp_weight must be 0 with sharding fsdp (its pretrained copies are whole tensors, "
            "the sharded parameters are not): use sharding: ddp with L2-SP"
        )
    if values.get("objective") == "mwer":
        for key in _NOT_WITH_MWER:
            if values.get(key):
                none = "null" if key.endswith("_csv") else "0"
                return (
                    f"{key} must be {none} with objective mwer (it scores plain transcripts only)"
                )
    if values.get("nonspeech_csv") and not values.get("nonspeech_probability"):
        return "nonspeech_csv needs nonspeech_probability > 0 (the share of rows it replaces)"
    return None


def rerun_settings(values):
    """The values a rerun continuing this folder's trained checkpoint must keep."""
    settings = {}
    for key, rule in RULES.items():
        if rule.same_on_rerun:
            try:
                settings[key] = _lookup(values, key)
            except (KeyError, TypeError):
                continue
    return settings
