"""The hyperparameter table against the shipped files: every plain top-level key of every
hparams/*.yaml has a rule (or a stated exemption), the adapter keys' ranges, the model's
defaults equal the yaml's, and a rerun with another adapter scale is refused."""

import inspect
from pathlib import Path

import pytest
import ruamel.yaml

from whisper_finetuning.common.errors import RecipeError
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


# Tags whose values are objects or references, not plain values (hyperpyyaml's).
OBJECT_TAGS = ("!new:", "!name:", "!apply:", "!ref")


def _tag(value):
    tag = getattr(value, "tag", None)
    return getattr(tag, "value", tag)  # ruamel >= 0.17.22 wraps it in a Tag


def _plain(value):
    """A scalar or a list of scalars, none of them an object or a reference."""
    if (_tag(value) or "").startswith(OBJECT_TAGS):
        return False
    if isinstance(value, list):
        return all(_plain(item) and not isinstance(item, (list, dict)) for item in value)
    return not isinstance(value, dict)


@pytest.mark.parametrize("path", sorted(HPARAMS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_plain_top_level_key_has_a_rule(path):
    from whisper_finetuning.training.hparam_rules import RULES

    values = _load(path)
    plain = [key for key, value in values.items() if _plain(value)]
    assert "lora_alpha" in plain or path.name != "whisper_small.yaml"  # the parse sees them
    assert "whisper" not in plain and "train_log" not in plain  # !new: and !ref are not plain
    assert [key for key in plain if key not in RULES] == []


def test_every_advanced_setting_has_a_rule_its_default_passes():
    from whisper_finetuning.training.defaults import ADVANCED
    from whisper_finetuning.training.hparam_rules import RULES, check

    nested = {key.split(".")[0] for key in RULES if "." in key}  # a rule per inner key
    assert [key for key in ADVANCED if key not in RULES and key not in nested] == []
    assert check(ADVANCED) is None


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"adapter": "lora"}, None),
        ({"adapter": None}, None),
        ({"adapter": "ia3"}, "adapter must be one of lora, dora or null, not 'ia3'"),
        ({"lora_rank": 1}, None),
        ({"lora_rank": 0}, "lora_rank must be an integer >= 1, not 0"),
        ({"lora_rank": 8.0}, "lora_rank must be an integer >= 1, not 8"),
        ({"lora_alpha": 0.5}, None),
        ({"lora_alpha": 0}, "lora_alpha must be a number > 0, not 0"),
        ({"lora_dropout": 0}, None),
        ({"lora_dropout": 0.99}, None),
        (
            {"lora_dropout": 1.0},
            "lora_dropout must be a number from 0 to under 1, not 1 (1 or more drops every input)",
        ),
        ({"lora_dropout": -0.1}, "lora_dropout must be a number from 0 to under 1, not -0.1"),
        ({"adapter_targets": [r"decoder\.layers\.\d+\.fc1$"]}, None),
        ({"adapter_targets": "fc1"}, "adapter_targets must be a list of regular expressions, not"),
        (
            {"adapter_targets": ["fc1", "q_proj("]},
            "adapter_targets must be a list of regular expressions, not ['fc1', 'q_proj('] "
            "('q_proj(': missing ), unterminated subpattern at position 6)",
        ),
        ({"gradient_checkpointing": 1}, "gradient_checkpointing must be True or False, not 1"),
        ({"average_checkpoints": -1}, "average_checkpoints must be an integer >= 0, not -1"),
        ({"adamw_8bit": "yes"}, "adamw_8bit must be True or False, not 'yes'"),
        ({"mwer_init": None}, None),
        ({"mwer_init": 2}, None),
        ({"mwer_init": "results/run/save/CKPT+1"}, None),
        ({"mwer_init": 0}, "mwer_init must be the epoch number (>= 1) of a kept checkpoint or"),
        ({"mwer_init": 2.0}, "mwer_init must be the epoch number (>= 1) of a kept checkpoint or"),
    ],
)
def test_adapter_and_other_new_rules(values, problem):
    from whisper_finetuning.training import hparam_rules

    found = hparam_rules.check(values)
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith(problem), found


def _folder_with_checkpoint(folder, lora_alpha):
    """The hparams of a run in ``folder`` whose checkpoint (and run.json) exists."""
    from whisper_finetuning.common.files import write_json
    from whisper_finetuning.training import provenance

    hparams = _load(HPARAMS / "whisper_small.yaml")
    plain = {key: value for key, value in hparams.items() if _plain(value)}
    manifests = {name: folder / f"{name}.csv" for name in ("train", "valid", "test")}
    for path in manifests.values():
        path.write_text("ID,duration,wav,wrd\n")
    hparams = {
        **plain,
        "output_folder": str(folder),
        "data_folder": str(folder),  # !PLACEHOLDER in the file
        "save_folder": str(folder / "save"),
        "train_csv": str(manifests["train"]),
        "valid_csv": str(manifests["valid"]),
        "test_csv": [str(manifests["test"])],
        "adapter": "lora",
        "lora_alpha": lora_alpha,
    }
    (folder / "save" / "CKPT+2026-01-01+00-00-00+00").mkdir(parents=True)
    write_json(folder / provenance.RUN_INFO, provenance.record(hparams))
    return hparams


def test_a_rerun_with_another_lora_alpha_is_refused(tmp_path):
    from whisper_finetuning.training import hparam_rules, provenance

    hparams = _folder_with_checkpoint(tmp_path, lora_alpha=32)
    assert hparam_rules.rerun_settings(hparams)["lora_alpha"] == 32
    assert provenance.check_rerun(hparams) is True  # the same settings: it trains on
    with pytest.raises(RecipeError) as refused:
        provenance.check_rerun({**hparams, "lora_alpha": 64})
    assert f"{tmp_path} holds a checkpoint of a run with lora_alpha: 32, not 64" in str(
        refused.value
    )


def test_a_finished_run_may_decode_other_test_manifests_but_not_train_on_other_data(tmp_path):
    from whisper_finetuning.training import provenance, runs

    hparams = _folder_with_checkpoint(tmp_path, lora_alpha=32)
    other = tmp_path / "other.csv"
    other.write_text("ID,duration,wav,wrd\nx,1.0,x.wav,x\n")
    elsewhere = {**hparams, "test_csv": [str(other)]}
    with pytest.raises(RecipeError) as refused:  # it would train on: the test sets are its own
        provenance.check_rerun(elsewhere)
    assert f"{tmp_path} holds a checkpoint of a run with no test manifest" in str(refused.value)
    runs.mark_fit_done(hparams["save_folder"], hparams["number_of_epochs"])
    assert provenance.check_rerun(elsewhere) is False  # it only decodes
    with pytest.raises(RecipeError) as refused:
        provenance.check_rerun({**elsewhere, "valid_csv": str(other)})
    assert f"{tmp_path} holds a checkpoint of a run with another valid manifest" in str(
        refused.value
    )
