"""Hyperparameter files: plain HyperPyYAML, every key used, overrides checked (bad input:
test_bad_input)."""

from pathlib import Path

import pytest
from check_yaml import unused_yaml_vars
from hyperpyyaml import load_hyperpyyaml

from whisper_finetuning.training.config import HparamsError, load_hparams, plain_values
from whisper_finetuning.training.defaults import ADVANCED

SHIPPED = sorted(Path("hparams").glob("*.yaml"))
MAIN_YAML_MAX_LINES = 180


def test_the_shipped_yamls_are_the_recipes():
    names = [path.name for path in SHIPPED]
    assert names == [
        "demo_swiss_base.yaml",
        "demo_tiny_en.yaml",
        "whisper_large-v3_full.yaml",
        "whisper_large-v3_lora.yaml",
        "whisper_small.yaml",
    ]
    assert len(Path("hparams/whisper_small.yaml").read_text().splitlines()) <= MAIN_YAML_MAX_LINES


@pytest.mark.parametrize("hparams_file", SHIPPED, ids=lambda path: path.name)
def test_each_yaml_loads_with_plain_hyperpyyaml(hparams_file, random_whisper_dir, tmp_path):
    overrides = {"data_folder": str(tmp_path), "whisper_hub": str(random_whisper_dir)}
    with open(hparams_file) as stream:
        hparams = load_hyperpyyaml(stream, overrides)
    assert hparams["whisper"].prefix_tokens  # the model was built from the override
    assert hparams["test_csv"] == [f"{hparams['output_folder']}/manifests/test.csv"]
    assert hparams["checkpointer"].checkpoints_dir == Path(hparams["save_folder"])


@pytest.mark.parametrize("hparams_file", SHIPPED, ids=lambda path: path.name)
def test_speechbrains_yaml_vs_script_check_finds_no_unused_key(hparams_file):
    assert unused_yaml_vars(hparams_file, "train.py") == []


def test_advanced_settings_take_library_defaults_unless_set():
    values = plain_values("hparams/whisper_small.yaml", {"data_folder": "x"})
    assert {key: values[key] for key in ADVANCED} == ADVANCED
    demo = plain_values("hparams/demo_tiny_en.yaml", "objective: mwer\nsanity_lr: 0.01")
    assert demo["zero_shot_eval"] is True  # the yaml's own value
    assert (demo["objective"], demo["sanity_lr"], demo["mwer_beam_size"]) == ("mwer", 0.01, 4)


def test_the_command_line_wins_and_the_encoder_cache_follows_the_output(random_whisper_dir):
    overrides = f"whisper_hub: {random_whisper_dir}\ndata_folder: d\nlr: 0.001\nnum_workers: 0"
    hparams, given = load_hparams("hparams/whisper_small.yaml", overrides + "\nsorting: ascending")
    assert hparams["lr"] == 0.001 and hparams["lr_annealing"].lr_initial == 0.001
    assert hparams["train_loader_kwargs"]["num_workers"] == 0
    assert hparams["encoder_cache_folder"] == f"{hparams['output_folder']}/encoder_cache"
    assert given == {
        "whisper_hub": str(random_whisper_dir),
        "data_folder": "d",
        "lr": 0.001,
        "num_workers": 0,
        "sorting": "ascending",
    }


def test_a_key_given_twice_or_unknown_is_named():
    with pytest.raises(HparamsError, match="command-line overrides: 'lr' is given twice"):
        plain_values("hparams/whisper_small.yaml", "data_folder: x\nlr: 1.0e-4\nlr: 1.0e-5")
    with pytest.raises(HparamsError, match="unknown hyperparameter 'lrr'"):
        plain_values("hparams/whisper_small.yaml", "data_folder: x\nlrr: 0.1")
