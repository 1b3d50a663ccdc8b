"""Export a run's min-WER checkpoint (or another kept epoch's) as a Hugging Face Whisper directory.

The exported directory loads with ``transformers.pipeline("automatic-speech-recognition",
model=DEST_DIR)``; with ``--ct2`` and the ``ctranslate2`` package, ``DEST_DIR/ctranslate2``
holds the same model for faster-whisper.

``--epoch N`` exports epoch N's checkpoint instead, e.g. the one a human review preferred
(kept when training ran with ``review_checkpoints: True``).

Only checkpoints taken at an epoch's end have a valid WER. A run stopped before its first
validation holds only an intra-epoch checkpoint: exporting it is refused unless asked for
(``allow_unvalidated``). ``describe`` names the checkpoint an export took.

A run trained with an adapter (``adapter: lora`` or ``dora``) is exported with its adapters
merged into the weights: a plain Whisper directory. ``--adapter_only`` writes PEFT's adapter
folder instead, which ``PeftModel.from_pretrained(base_model, DEST_DIR)`` loads on the base model.

Before a folder is called done, the checkpoint's files match the checksums its ``CKPT.yaml``
recorded, its tensors are all the trainable ones and finite, and the written model (or adapter
folder, loaded onto the base model) loads back with the same finite weights and decodes a
clip; ``SHA256SUMS`` lists every file written (``sha256sum -c SHA256SUMS`` checks it; the recipe
checks it when the folder is its ``whisper_hub``).

Command line: ``python -m whisper_finetuning.export_hf``.
"""

import copy
import shutil
import sys
import tempfile
from pathlib import Path

import ruamel.yaml
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.checkpoints import ckpt_recency
from transformers import WhisperForConditionalGeneration, WhisperProcessor

from whisper_finetuning.common.checksums import write_sums
from whisper_finetuning.common.errors import RecipeError
from whisper_finetuning.common.files import write_json
from whisper_finetuning.data.audio import (
    CHUNK_SECONDS,  # what transformers and faster-whisper pad to
    SAMPLE_RATE,
)
from whisper_finetuning.decoding.transcribe_rules import TranscribeRules
from whisper_finetuning.evaluation.selection import best_earliest
from whisper_finetuning.model import adapters
from whisper_finetuning.model.student import cut_as_trained
from whisper_finetuning.training.checkpointing import CHECKSUMS_KEY, VerifiedCheckpointer
from whisper_finetuning.training.defaults import ADVANCED

READABLE_FILE, READABLE_DIR = 0o644, 0o755
CT2_SUBFOLDER = "ctranslate2"
CT2_COPIED_FILES = ["tokenizer.json", "preprocessor_config.json"]
EXPORT_ADVICE = (
    "export another kept epoch (--epoch N), or move {checkpoint} out of {folder} to export the "
    "next best one"
)
# what the export builds the run's model from, and where its checkpoints are
REQUIRED_SETTINGS = ("save_folder", "whisper")
SETTINGS_ADVICE = "the export builds the run's model from it: restore it from a copy"


class RunSettingsError(RecipeError, ValueError):
    """A run's ``hyperparams.yaml`` that is not the settings train.py wrote."""


class WrittenExportError(RecipeError, ValueError):
    """A written model or adapter folder that does not load back as what was exported."""


def save_whisper_dir(model, tokenizer, feature_extractor, dest):
    """Write a complete Hugging Face Whisper directory at ``dest``, all or nothing.

    Files are written into a temporary sibling that is renamed into place, so ``dest`` never
    holds half an export.
    """

    def write(staging):
        model.save_pretrained(staging)
        WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(
            staging
        )
        feature_extractor.save_pretrained(staging)  # preprocessor_config.json
        tokenizer.save_vocabulary(str(staging))  # vocab.json, merges.txt, normalizer.json
        check_written(staging, model, feature_extractor)

    return write_dir_atomically(dest, write)


def check_clip(feature_extractor):
    """The clip a written model must decode: a second of silence, as input features."""
    return feature_extractor(
        [0.0] * SAMPLE_RATE, sampling_rate=SAMPLE_RATE, return_tensors="pt"
    ).input_features


def check_weights(written, expected, what, names=None):
    """``written``'s tensors (those of ``names``, else all) are finite and equal to
    ``expected``'s of the same name; a one-line WrittenExportError naming ``what`` if not."""
    for name, value in written.items():
        if names is not None and name not in names:
            continue
        if not torch.isfinite(value).all():
            raise WrittenExportError(
                f"the written {what} holds NaN or inf values in {name}: not exported"
            )
        if name in expected and not torch.equal(value, expected[name].cpu()):
            raise WrittenExportError(f"the written {what}'s {name} differs from the checkpoint's")


@torch.no_grad()
def check_written(folder, model, feature_extractor):
    """Load the model written in ``folder`` back: the weights of ``model``, all finite, and it
    decodes a clip (a second of silence) to at least one token; a WrittenExportError if not."""
    written = WhisperForConditionalGeneration.from_pretrained(folder)
    check_weights(written.state_dict(), model.state_dict(), "model")
    if written.generate(check_clip(feature_extractor), max_new_tokens=2).shape[-1] == 0:
        raise WrittenExportError("the written model decodes no token from a clip: not exported")


@torch.no_grad()
def check_written_adapters(folder, model, feature_extractor):
    """Load the adapter folder written in ``folder`` onto the base model (``model``, a
    ``PeftModel``, without its adapters) as ``PeftModel.from_pretrained`` does: the adapters of
    ``model``, all finite, and the adapted model decodes ``check_written``'s clip to at least
    one token; a one-line WrittenExportError if not."""
    import peft

    base = copy.deepcopy(model).unload()
    try:
        written = peft.PeftModel.from_pretrained(base, folder)
    except Exception as error:  # safetensors', PEFT's or json's own reason for a damaged file
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise WrittenExportError(
            f"the written adapter folder does not load onto the base model ({reason}): not exported"
        ) from None
    expected = model.state_dict()
    names = {name for name in expected if adapters.is_adapter_parameter(name)}
    missing = sorted(names - set(written.state_dict()))
    if missing:
        raise WrittenExportError(f"the written adapters lack {missing[0]}: not exported")
    check_weights(written.state_dict(), expected, "adapter folder", names)
    tokens = written.generate(input_features=check_clip(feature_extractor), max_new_tokens=2)
    if tokens.shape[-1] == 0:
        raise WrittenExportError("the written adapters decode no token from a clip: not exported")


def save_adapter_dir(model, feature_extractor, dest):
    """Write PEFT's adapter folder of ``model`` (a ``PeftModel``) at ``dest``, all or nothing,
    checked by ``check_written_adapters`` before it is renamed into place."""

    def write(staging):
        model.save_pretrained(staging)
        check_written_adapters(staging, model, feature_extractor)

    return write_dir_atomically(dest, write)


def write_dir_atomically(dest, write):
    """Let ``write(folder)`` fill a temporary sibling of ``dest``, then rename it to ``dest``."""
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} already exists and is not empty: remove it or pick another")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        write(staging)
        for path in staging.iterdir():  # mkdtemp and save_pretrained make owner-only files
            path.chmod(READABLE_FILE)
        staging.chmod(READABLE_DIR)
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


def load_run_settings(hparams_file):
    """The run's settings built from its ``hyperparams.yaml`` (no checkpointer); a damaged file
    (not UTF-8, not YAML, cut short before the model, objects that do not build) is one line
    naming it. A model folder the settings name that cannot be loaded says so itself."""

    def damaged(why):
        return RunSettingsError(f"{hparams_file} {why}; {SETTINGS_ADVICE}")

    try:
        text = Path(hparams_file).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise damaged("is damaged (not UTF-8 text)") from None
    if not text.strip():
        raise damaged("is empty")
    try:
        values = ruamel.yaml.YAML().load(text)
    except ruamel.yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise damaged(f"is damaged (not YAML: {getattr(error, 'problem', error)}{where})") from None
    if not isinstance(values, dict):
        raise damaged("is damaged (not a mapping of settings)")
    missing = [name for name in REQUIRED_SETTINGS if name not in values]
    if missing:
        raise damaged(f"is damaged (no '{missing[0]}' setting: cut short?)")
    try:
        return load_hyperpyyaml(text, {"checkpointer": None})
    except (RecipeError, OSError):
        raise
    except Exception as error:  # a tag, reference or argument the file's damage left behind
        reason = (str(error).strip().splitlines() or [""])[0]
        raise damaged(f"is damaged ({type(error).__name__}: {reason})") from None


def load_best(experiment_folder, epoch=None, allow_unvalidated=False):
    """The run's ``WhisperASR`` with its selected checkpoint (best by the run's
    ``selection_metric``, WER by default) or epoch ``epoch``'s loaded, and that checkpoint;
    with no validated checkpoint, the latest intra-epoch one if ``allow_unvalidated``, else an
    error.

    Works from any directory: the checkpoints are looked up in ``EXPERIMENT_FOLDER/save``, not
    at the (possibly relative) path the run was started with.
    """
    hparams, checkpoint = load_best_settings(experiment_folder, epoch, allow_unvalidated)
    return hparams["whisper"], checkpoint


def load_best_settings(experiment_folder, epoch=None, allow_unvalidated=False):
    """``load_best``, returning the run's settings (its ``whisper`` loaded) instead of the
    model alone."""
    experiment_folder = Path(experiment_folder)
    hparams_file = experiment_folder / "hyperparams.yaml"
    if not hparams_file.is_file():
        raise FileNotFoundError(f"{hparams_file} not found: is this a train.py output folder?")
    hparams = load_run_settings(hparams_file)
    save_folder = experiment_folder / Path(hparams["save_folder"]).name
    cut_as_trained(hparams["whisper"], experiment_folder)  # a distilled student's layers
    checkpointer = VerifiedCheckpointer(
        save_folder, recoverables={"whisper": hparams["whisper"]}, advice=EXPORT_ADVICE
    )
    end_of_epoch = [c for c in checkpointer.list_checkpoints() if "WER" in c.meta]
    if epoch is not None:
        kept = sorted(c.meta["epoch"] for c in end_of_epoch)
        if epoch not in kept:
            raise FileNotFoundError(
                f"no checkpoint of epoch {epoch} in {save_folder} (kept: {kept}); train with "
                "review_checkpoints: True to keep the min-loss and last epochs too"
            )
        predicate = lambda ckpt: ckpt.meta.get("epoch") == epoch  # noqa: E731
        checkpoint = checkpointer.recover_if_possible(ckpt_predicate=predicate)
    else:
        metric = hparams.get("selection_metric", "WER")
        key = best_earliest(metric) if end_of_epoch else ckpt_recency
        checkpoint = checkpointer.find_checkpoint(importance_key=key)
        if checkpoint is not None and not end_of_epoch and not allow_unvalidated:
            raise ValueError(
                f"{save_folder} holds only {checkpoint.path.name}, an intra-epoch checkpoint "
                "taken before any validation (no valid WER): train through an epoch, or pass "
                "--allow_unvalidated to export it anyway"
            )
        if checkpoint is not None:
            checkpointer.load_checkpoint(checkpoint)
    if checkpoint is None:
        raise FileNotFoundError(f"no checkpoint in {save_folder}: train first")
    return hparams, checkpoint


def generation_config(whisper):
    """The checkpoint's generation config with the run's task and default language (none when
    rows named their own): a pipeline given no language or task then prompts as the run did
    (a ``translate`` run translates). openai's ``transcribe`` thresholds stay out of it:
    transformers' ``generate`` asks for the scores ``logprob_threshold`` needs only when it
    is an argument, so a config holding it fails a plain ``generate()``; ``generate_kwargs``
    gives them as arguments."""
    config = copy.deepcopy(whisper.generation_config)
    if whisper.is_multilingual:
        config.task = whisper.task
        config.language = whisper.language  # Whisper's name of it, or None
    return config


def generate_kwargs(rules=TranscribeRules()):  # noqa: B008  (frozen: shared safely)
    """transformers ``generate`` arguments that decode under openai's ``transcribe`` rules, as
    the recipe's searches do: the fallback temperatures and the thresholds ``rules`` set. A
    threshold switched off (None) is left out, as transformers' default (None) is off; so is
    ``no_speech_threshold`` without ``logprob_threshold``, which transformers' no-speech skip
    compares against (``generation_whisper.py``; the recipe skips on silence alone then).
    ``best_of`` has no transformers argument: its fallback draws one sample."""
    kwargs = {
        "temperature": list(rules.temperatures),
        "compression_ratio_threshold": rules.compression_ratio_threshold,
        "logprob_threshold": rules.logprob_threshold,
        "no_speech_threshold": rules.no_speech_threshold,
    }
    if rules.logprob_threshold is None:
        kwargs["no_speech_threshold"] = None
    return {key: value for key, value in kwargs.items() if value is not None}


def run_rules(hparams):
    """The ``transcribe`` rules a run decoded with, from its saved settings (its
    ``hyperparams.yaml`` holds only the advanced settings it changed; the samples' seed, which
    no ``generate`` argument takes, defaults to 0)."""
    return TranscribeRules.of({**ADVANCED, "seed": 0, **hparams})


def describe(checkpoint):
    """Which checkpoint an export took, in words."""
    meta = checkpoint.meta
    if "WER" not in meta:
        return f"{checkpoint.path.name} (intra-epoch, not validated)"
    return f"{checkpoint.path.name} (epoch {meta['epoch']}, valid WER {meta['WER']:.2f}%)"


def export(
    experiment_folder, dest_dir, ct2=False, epoch=None, allow_unvalidated=False, adapter_only=False
):
    """Export the selected (or epoch ``epoch``'s) checkpoint of ``experiment_folder``; with
    ``adapter_only``, only its adapters, as PEFT's adapter folder. Returns the destination and
    the checkpoint."""
    hparams, checkpoint = load_best_settings(experiment_folder, epoch, allow_unvalidated)
    whisper = hparams["whisper"]
    if adapter_only and whisper.adapter_config is None:
        raise ValueError("--adapter_only: this run trained no adapter (adapter: lora or dora)")
    if adapter_only and ct2:
        raise ValueError("--ct2 converts a merged model: drop --adapter_only")
    model = whisper.model
    if whisper.adapter_config is not None:
        model = adapters.as_peft_model(whisper.model, whisper.adapter_config)
    if adapter_only:
        dest = save_adapter_dir(model, whisper.feature_extractor, dest_dir)
    else:
        if whisper.adapter_config is not None:
            model = model.merge_and_unload()
        model.generation_config = generation_config(whisper)
        dest = save_whisper_dir(model, whisper.tokenizer, whisper.feature_extractor, dest_dir)
    meta = {k: v for k, v in checkpoint.meta.items() if k != CHECKSUMS_KEY}
    selected = {"checkpoint": checkpoint.path.name, **meta}
    selected["encoder_window_seconds"] = whisper.window_seconds
    selected["base_model"] = whisper.source
    selected["generate_kwargs"] = generate_kwargs(run_rules(hparams))
    write_json(dest / "selected_checkpoint.json", selected)
    if whisper.window_seconds != CHUNK_SECONDS:
        print(
            f"warning: trained with a {whisper.window_seconds} s encoder window; transformers "
            f"and faster-whisper pad to {CHUNK_SECONDS} s, which this model has not seen",
            file=sys.stderr,
        )
    if ct2:
        import ctranslate2

        converter = ctranslate2.converters.TransformersConverter(
            str(dest), copy_files=CT2_COPIED_FILES
        )
        converter.convert(str(dest / CT2_SUBFOLDER))
    write_sums(dest)
    return dest, checkpoint
