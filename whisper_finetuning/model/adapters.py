"""LoRA and DoRA adapters (through PEFT) injected into a Hugging Face Whisper in place.

The model keeps its module names (``model.decoder.layers.0.self_attn.q_proj``), so the
recipe's encoder split, decoding and checkpoints work unchanged; each adapted linear layer
gains ``lora_A``/``lora_B`` (and DoRA's ``lora_magnitude_vector``) parameters, the only ones
that train.
"""

import copy
import re

import peft
import torch

ADAPTERS = ("lora", "dora")
ADAPTER_PARAM_MARK = "lora_"  # PEFT's prefix of LoRA and DoRA parameter names
ADAPTER_NAME = "default"


def target_names(model, patterns):
    """Names of the linear layers of ``model`` that match one of the regular expressions."""
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and any(re.search(p, name) for p in patterns)
    ]
    if not names:
        raise ValueError(f"adapter_targets {list(patterns)} match no linear layer of this model")
    return names


def add_adapters(model, adapter, patterns, rank, alpha, dropout):
    """Inject ``adapter`` (lora or dora) into the matching linear layers; returns its config."""
    if adapter not in ADAPTERS:
        raise ValueError(f"adapter must be one of {ADAPTERS} or null, not '{adapter}'")
    config = peft.LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_names(model, patterns),
        use_dora=adapter == "dora",
    )
    peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    return config


def is_adapter_parameter(name):
    """True for a LoRA/DoRA parameter's name."""
    return ADAPTER_PARAM_MARK in name


def as_peft_model(model, config):
    """``model`` with its trained adapters, wrapped as PEFT's ``PeftModel`` (which saves the
    adapter folder and merges the adapters); ``model`` is changed in place."""
    trained = {
        name: param.detach().clone()
        for name, param in model.named_parameters()
        if is_adapter_parameter(name)
    }
    wrapped = peft.get_peft_model(model, copy.deepcopy(config))  # re-initialises the adapters
    result = wrapped.base_model.model.load_state_dict(trained, strict=False)
    unloaded = [name for name in result.missing_keys if is_adapter_parameter(name)]
    if result.unexpected_keys or unloaded:
        raise ValueError(
            f"adapters do not fit PEFT's model: {(result.unexpected_keys or unloaded)[0]}"
        )
    return wrapped
