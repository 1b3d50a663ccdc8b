"""``sharding``: its rule, its refusals (one line naming the fix) and the memory planner's
per-GPU figure under fsdp (exact arithmetic)."""

import dataclasses

import pytest

from whisper_finetuning import memory as memory_tool
from whisper_finetuning.profiling.memory_plan import FP32, Settings, meta_model, predict
from whisper_finetuning.training import hparam_rules
from whisper_finetuning.training.config import HparamsError, load_hparams


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"sharding": "ddp"}, None),
        ({"sharding": "fsdp", "adapter": None, "freeze_encoder": True}, None),
        ({"sharding": "zero3"}, "sharding must be one of ddp, fsdp, not 'zero3'"),
        (
            {"sharding": "fsdp", "adapter": "lora"},
            "sharding fsdp is for full fine-tuning; adapter lora trains few weights: use "
            "sharding: ddp with an adapter (or adapter: null to shard the model)",
        ),
        (
            {"sharding": "fsdp", "l2sp_weight": 0.01},
            "l2sp_weight must be 0 with sharding fsdp (its pretrained copies are whole tensors, "
            "the sharded parameters are not): use sharding: ddp with L2-SP",
        ),
        ({"sharding": "fsdp", "l2sp_weight": 0.0}, None),
    ],
)
def test_sharding_rule_and_adapter_refusal(values, problem):
    assert hparam_rules.check(values) == problem


def test_a_rerun_may_switch_sharding():
    assert "sharding" not in hparam_rules.rerun_settings({"sharding": "fsdp"})


def test_fsdp_without_torchrun_is_one_line_naming_torchrun(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(HparamsError) as refused:
        load_hparams("hparams/whisper_large-v3_full.yaml", {"data_folder": "x"})
    assert str(refused.value) == (
        "sharding fsdp shards the model over the processes of a torchrun: start it with "
        "torchrun --nproc_per_node=N train.py HPARAMS, or use sharding: ddp for one process"
    )


def test_fsdp_with_lora_is_refused_before_anything_is_built(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(HparamsError, match="^sharding fsdp is for full fine-tuning; adapter lora"):
        load_hparams("hparams/whisper_large-v3_lora.yaml", {"data_folder": "x", "sharding": "fsdp"})


def test_fsdp_divides_weights_gradients_and_optimizer_state_by_the_gpus_not_activations():
    full = Settings(model="tiny", freeze_encoder=False, bf16=True, batch_size=4)
    ddp = predict(full)
    fsdp = predict(dataclasses.replace(full, sharding="fsdp", gpus=4))
    model = meta_model(full)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert (total, trainable) == (37_760_640, 37_184_640)  # tiny: only the positions frozen
    assert ddp.weights == total * FP32 and fsdp.weights == total * FP32 / 4
    assert ddp.gradients == trainable * FP32 and fsdp.gradients == trainable * FP32 / 4
    assert ddp.optimizer == trainable * 8 and fsdp.optimizer == trainable * 8 / 4
    assert fsdp.activations == ddp.activations
    # Gathered in bf16, with gradients: the root (embeddings, stem, norms) and 2 layers.
    layers = [*model.model.encoder.layers, *model.model.decoder.layers]
    largest = max(sum(p.numel() for p in layer.parameters()) for layer in layers)
    root = total - sum(sum(p.numel() for p in layer.parameters()) for layer in layers)
    assert (root, largest) == (21_201_024, 2_365_824)
    assert fsdp.gathered == (root + 2 * largest) * 2 * 2 and ddp.gathered == 0
    # Weights and optimizer state throughout; then the larger of the forward (activations) and
    # the backward (the shard's gradients and what each utterance keeps beside them).
    backward = trainable * FP32 / 4 + 4 * fsdp.backward_per_utterance
    held = total * FP32 / 4 + trainable * 8 / 4 + fsdp.gathered
    assert fsdp.peak == held + max(ddp.activations, backward)


def test_the_full_yaml_states_the_planners_per_gpu_figure(capsys):
    assert memory_tool.main(["--hparams", "hparams/whisper_large-v3_full.yaml", "--gpus", "4"]) == 0
    peak = next(line for line in capsys.readouterr().out.splitlines() if "peak" in line)
    assert peak == (
        "  peak            9.98 GB per GPU (4 GPUs, fsdp) (weights + optimizer + the larger of "
        "the two): fits in 24 GB"
    )
    text = open("hparams/whisper_large-v3_full.yaml").read()
    assert (
        "python -m whisper_finetuning.memory --hparams hparams/whisper_large-v3_full.yaml" in text
    )
    assert "9.98 GB per GPU (4 GPUs, fsdp)" in text
