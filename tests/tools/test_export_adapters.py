"""A short LoRA fine-tune of the real tiny.en, exported merged (pipeline, CTranslate2) and as
PEFT's adapter folder: each transcribes the valid set as the recipe's greedy decoding did."""

import json

import numpy as np
import peft
import pytest
import torch
import transformers
from conftest import fine_tune_tiny_en, read_jsonl, run_audio

from whisper_finetuning.export import huggingface as export


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, tiny_en_dir):
    """One epoch of LoRA (decoder attention, rank 8) on 8 utterances: 4 steps at a rate that
    moves the adapters."""
    root = tmp_path_factory.mktemp("export_lora")
    return fine_tune_tiny_en(
        root,
        tiny_en_dir,
        "--trainable_patterns=[]",
        "--adapter=lora",
        "--lora_rank=8",
        "--lora_alpha=16",
        "--lr=0.001",
        "--warmup_steps=1",
        "--batch_size=2",
        timeout=1200,
    )


@pytest.mark.slow
def test_merged_and_adapter_exports_transcribe_as_the_recipe_decoded(
    experiment, tiny_en_dir, tmp_path
):
    decoded = read_jsonl(experiment / "exp/valid/utterances_epoch1.jsonl")
    assert len(decoded) == 4 and not any(utt["loop_stopped"] for utt in decoded)
    merged, _ = export.export(experiment / "exp", tmp_path / "merged", ct2=True)
    selected = json.loads((merged / "selected_checkpoint.json").read_text())
    assert selected["epoch"] == 1 and selected["base_model"] == str(tiny_en_dir)
    # A plain Whisper: no adapter left, and the weights moved away from the base model's.
    plain = transformers.WhisperForConditionalGeneration.from_pretrained(merged)
    base = transformers.WhisperForConditionalGeneration.from_pretrained(tiny_en_dir)
    assert not [n for n, _ in plain.named_parameters() if "lora" in n or "base_layer" in n]
    q_proj = "model.decoder.layers.0.self_attn.q_proj.weight"
    moved = plain.state_dict()[q_proj] - base.state_dict()[q_proj]
    assert moved.abs().max() > 0
    fc1 = "model.decoder.layers.0.fc1.weight"
    assert torch.equal(plain.state_dict()[fc1], base.state_dict()[fc1])

    pipe = transformers.pipeline("automatic-speech-recognition", model=str(merged), device="cpu")
    import ctranslate2

    ct2_model = ctranslate2.models.Whisper(str(merged / export.CT2_SUBFOLDER))
    adapter_dir, _ = export.export(experiment / "exp", tmp_path / "adapter", adapter_only=True)
    assert (adapter_dir / "adapter_config.json").exists()
    with_adapters = peft.PeftModel.from_pretrained(base, adapter_dir).eval()
    prompt = pipe.tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|notimestamps|>"])
    for utt in decoded:
        audio = run_audio(experiment, utt["id"])
        heard = pipe({"raw": audio, "sampling_rate": 16000}, generate_kwargs={"num_beams": 1})
        assert heard["text"].strip() == utt["hyp"]
        features = pipe.feature_extractor(audio, sampling_rate=16000, return_tensors="pt")
        result = ct2_model.generate(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(features.input_features)),
            [prompt],
            beam_size=1,
        )
        assert pipe.tokenizer.decode(result[0].sequences_ids[0]).strip() == utt["hyp"]
        with torch.no_grad():
            tokens = with_adapters.generate(
                input_features=features.input_features, num_beams=1, max_new_tokens=96
            )
        assert pipe.tokenizer.decode(tokens[0], skip_special_tokens=True).strip() == utt["hyp"]


@pytest.mark.slow
def test_adapter_only_export_refuses_ct2_and_writes_nothing(experiment, tmp_path):
    with pytest.raises(ValueError, match="--ct2 converts a merged model"):
        export.export(experiment / "exp", tmp_path / "a", ct2=True, adapter_only=True)
    assert not (tmp_path / "a").exists()
