"""Hyperparameter files: sizes extend the base, recipe configs load (bad input: test_bad_input)."""

import pytest

from whisper_finetuning.training.config import load_hparams, resolve


def test_size_configs_extend_the_base_and_command_line_wins():
    base, merged = resolve("hparams/whisper_tiny.yaml", "lr: 0.001\nwhisper_hub: foo")
    assert base.name == "whisper_small.yaml"
    assert merged["lr"] == 0.001 and merged["whisper_hub"] == "foo"
    assert merged["batch_size"] == 16  # from whisper_tiny.yaml
    for size in ("base", "medium", "large-v3", "tiny"):
        _, merged = resolve(f"hparams/whisper_{size}.yaml")
        assert merged["whisper_hub"] == f"openai/whisper-{size}"


@pytest.mark.parametrize(
    "hparams_file, expected",
    [
        ("recipes/LibriSpeech/ASR/whisper/hparams/whisper_small.yaml", "test-other.csv"),
        ("recipes/CommonVoice/ASR/whisper/hparams/whisper_small.yaml", "test.csv"),
        ("hparams/demo_tiny_en.yaml", "test.csv"),
    ],
)
def test_recipe_configs_load(hparams_file, expected, random_whisper_dir, tmp_path):
    overrides = f"whisper_hub: {random_whisper_dir}\ndata_folder: {tmp_path}\nlanguage: english"
    hparams, base, _ = load_hparams(hparams_file, overrides)
    assert base.name == "whisper_small.yaml"
    assert hparams["test_csv"][-1] == f"{hparams['manifest_folder']}/{expected}"
    assert hparams["whisper"].prefix_tokens  # the model was built from the override
