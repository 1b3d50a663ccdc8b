"""A short LoRA fine-tune of the real tiny.en, exported merged (pipeline, CTranslate2) and as
PEFT's adapter folder: each transcribes the valid set as the recipe's greedy decoding did; and,
on a random Whisper with scripted adapter weights, every merged layer against the formula."""

import json
from pathlib import Path

import numpy as np
import peft
import pytest
import torch
import transformers
from conftest import fine_tune_tiny_en, read_jsonl, run_audio
from recipe_runs import one_line_error

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


# Both attentions of every decoder layer (the yaml's default targets) and one feed-forward layer.
MERGE_TARGETS = [
    r"decoder\.layers\.\d+\.(self_attn|encoder_attn)\.(q_proj|k_proj|v_proj|out_proj)$",
    r"decoder\.layers\.1\.fc1$",
]
RANK, ALPHA = 4, 12  # scale alpha / r = 3 (not alpha, not alpha / sqrt(r) = 6)


def _adapter_experiment(folder, source, adapter, epochs, selection_metric="WER"):
    """A train.py-like output folder (hyperparams.yaml, save/CKPT+...) of a ``source`` Whisper
    with ``adapter``: one end-of-epoch checkpoint per ``epochs`` meta, each with its own random
    adapter weights; returns ``{epoch: saved adapter weights}``."""
    from whisper_finetuning.model.asr import WhisperASR
    from whisper_finetuning.training.checkpointing import AtomicCheckpointer

    options = {
        "adapter": adapter,
        "lora_rank": RANK,
        "lora_alpha": ALPHA,
        "lora_dropout": 0.0,
        "adapter_targets": MERGE_TARGETS,
        "trainable_patterns": [],
    }
    lines = [f"    {key}: {json.dumps(value)}" for key, value in options.items()]
    (folder / "hyperparams.yaml").write_text(
        "\n".join(
            [
                f"save_folder: {folder / 'save'}",
                f"selection_metric: {selection_metric}",
                "whisper: !new:whisper_finetuning.model.asr.WhisperASR",
                f"    source: {source}",
                *lines,
                "checkpointer: null",
                "",
            ]
        )
    )
    whisper = WhisperASR(str(source), **options)
    checkpointer = AtomicCheckpointer(folder / "save", {"whisper": whisper})
    generator = torch.Generator().manual_seed(0)
    saved = {}
    for meta in epochs:
        with torch.no_grad():
            for name, param in whisper.model.named_parameters():
                if param.requires_grad:  # lora_A, lora_B (zero at first), DoRA's magnitude
                    values = torch.randn(param.shape, generator=generator) * 0.2
                    param.copy_(values.abs() + 0.5 if "magnitude" in name else values)
        saved[meta["epoch"]] = {
            n: p.detach().clone() for n, p in whisper.model.named_parameters() if p.requires_grad
        }
        checkpointer.save_checkpoint(meta=meta)
    return saved


@pytest.mark.parametrize("adapter", ["lora", "dora"])
def test_every_adapted_layer_is_merged_by_the_formula(random_whisper_dir, tmp_path, adapter):
    """LoRA: W' = W + (alpha / r) B A. DoRA (Liu et al. 2024, as PEFT merges it): V = W +
    (alpha / r) B A, W' = diag(m / ||V||_row) V, each output row rescaled to its trained
    magnitude m. Biases and every layer without an adapter stay the base model's."""
    from whisper_finetuning.model import adapters

    experiment = tmp_path / "exp"
    experiment.mkdir()
    meta = {"epoch": 1, "loss": 1.0, "WER": 10.0}
    trained = _adapter_experiment(experiment, random_whisper_dir, adapter, [meta])[1]
    merged_dir, checkpoint = export.export(experiment, tmp_path / "merged")
    assert checkpoint.meta["epoch"] == 1
    base_model = transformers.WhisperForConditionalGeneration.from_pretrained(random_whisper_dir)
    base = base_model.state_dict()
    merged = transformers.WhisperForConditionalGeneration.from_pretrained(merged_dir).state_dict()
    assert merged.keys() == base.keys()
    targets = adapters.target_names(base_model, MERGE_TARGETS)
    assert len(targets) == 2 * 2 * 4 + 1  # 2 layers x 2 attentions x 4 projections, fc1
    scale = ALPHA / RANK
    for name in targets:
        lora_a = trained[f"{name}.lora_A.default.weight"]  # (r, in)
        lora_b = trained[f"{name}.lora_B.default.weight"]  # (out, r)
        weight = base[f"{name}.weight"] + scale * lora_b @ lora_a
        if adapter == "dora":
            magnitude = trained[f"{name}.lora_magnitude_vector.default.weight"]  # (out,)
            weight = (magnitude / weight.norm(dim=1))[:, None] * weight
        torch.testing.assert_close(merged[f"{name}.weight"], weight, rtol=0, atol=1e-6, msg=name)
        assert not torch.allclose(merged[f"{name}.weight"], base[f"{name}.weight"]), name
    merged_weights = {f"{name}.weight" for name in targets}
    for key, value in base.items():
        if key not in merged_weights:
            assert torch.equal(merged[key], value), key


@pytest.mark.parametrize(("metric", "selected"), [("BLEU", 3), ("WER", 2)])
def test_export_loads_the_best_epoch_by_the_runs_selection_metric(
    random_whisper_dir, tmp_path, metric, selected
):
    """Four kept epochs: the best WER is epoch 2's, the best BLEU epoch 3's, the last epoch 4.
    The export reads selection_metric from the run's hyperparams.yaml and loads that epoch's
    weights."""
    epochs = [
        {"epoch": 1, "loss": 0.9, "WER": 30.0, "BLEU": 40.0},
        {"epoch": 2, "loss": 0.8, "WER": 20.0, "BLEU": 44.0},
        {"epoch": 3, "loss": 0.7, "WER": 25.0, "BLEU": 50.0},
        {"epoch": 4, "loss": 0.6, "WER": 22.0, "BLEU": 46.0},
    ]
    experiment = tmp_path / "exp"
    experiment.mkdir()
    saved = _adapter_experiment(experiment, random_whisper_dir, "lora", epochs, metric)
    whisper, checkpoint = export.load_best(experiment)
    assert checkpoint.meta["epoch"] == selected
    loaded = dict(whisper.model.named_parameters())
    for name, value in saved[selected].items():
        assert torch.equal(loaded[name], value), name


def _cut(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _rewrite(path, value):
    from safetensors.torch import load_file, save_file

    save_file({k: torch.full_like(v, value) for k, v in load_file(path).items()}, path)


ADAPTER_FILE = "adapter_model.safetensors"
FIRST_ADAPTER = "base_model.model.model.decoder.layers.0.self_attn.k_proj.lora_A.default.weight"
WRITE_DAMAGE = {  # name: (damage done to the written adapter file, the line)
    "cut": (
        _cut,
        "the written adapter folder does not load onto the base model (Error while "
        "deserializing header: incomplete metadata, file not fully covered): not exported",
    ),
    "NaN": (
        lambda p: _rewrite(p, float("nan")),
        f"the written adapter folder holds NaN or inf values in {FIRST_ADAPTER}: not exported",
    ),
    "other weights": (
        lambda p: _rewrite(p, 0.0),
        f"the written adapter folder's {FIRST_ADAPTER} differs from the checkpoint's",
    ),
}


@pytest.mark.parametrize("case", WRITE_DAMAGE)
def test_adapter_only_export_loads_its_folder_back_and_refuses_a_damaged_write(
    random_whisper_dir, tmp_path, capsys, monkeypatch, case
):
    """The adapter folder is loaded onto the base model, compared, and decodes check_written's
    clip before it is renamed into place; a write damaged on its way is one line, no folder."""
    import peft

    from whisper_finetuning import export_hf

    experiment = tmp_path / "exp"
    experiment.mkdir()
    _adapter_experiment(experiment, random_whisper_dir, "lora", [{"epoch": 1, "WER": 10.0}])
    assert export_hf.main([str(experiment), str(tmp_path / "good"), "--adapter_only"]) == 0
    assert (tmp_path / "good" / ADAPTER_FILE).is_file()
    capsys.readouterr()
    damage, line = WRITE_DAMAGE[case]
    save = peft.PeftModel.save_pretrained

    def damaged_save(model, folder, *args, **kwargs):
        save(model, folder, *args, **kwargs)
        damage(Path(folder) / ADAPTER_FILE)

    monkeypatch.setattr(peft.PeftModel, "save_pretrained", damaged_save)
    assert export_hf.main([str(experiment), str(tmp_path / "bad"), "--adapter_only"]) == 1
    assert one_line_error(capsys.readouterr().err) == f"error: {line}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp", "good"]


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (  # openai's defaults: the run's hyperparams.yaml names none of them
            "",
            {
                "temperature": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
                "compression_ratio_threshold": 2.4,
                "logprob_threshold": -1.0,
                "no_speech_threshold": 0.6,
            },
        ),
        (  # overridden, as train.py's overrides are appended to the saved settings
            "temperatures: [0.0, 0.5]\ncompression_ratio_threshold: 3.0\n"
            "logprob_threshold: -0.5\nno_speech_threshold: 0.8\n",
            {
                "temperature": [0.0, 0.5],
                "compression_ratio_threshold": 3.0,
                "logprob_threshold": -0.5,
                "no_speech_threshold": 0.8,
            },
        ),
        (  # null: off, left out (transformers' default); no-speech needs logprob_threshold
            "temperatures: [0.0]\ncompression_ratio_threshold:\nlogprob_threshold:\n",
            {"temperature": [0.0]},
        ),
    ],
)
def test_the_export_writes_the_runs_transcribe_thresholds(
    random_whisper_dir, tmp_path, settings, expected
):
    experiment = tmp_path / "exp"
    experiment.mkdir()
    _adapter_experiment(
        experiment, random_whisper_dir, "lora", [{"epoch": 1, "loss": 1.0, "WER": 9.0}]
    )
    with open(experiment / "hyperparams.yaml", "a") as f:
        f.write(settings)
    dest, _ = export.export(experiment, tmp_path / "merged")
    selected = json.loads((dest / "selected_checkpoint.json").read_text())
    assert selected["generate_kwargs"] == expected
    model = transformers.WhisperForConditionalGeneration.from_pretrained(dest).eval()
    features = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # transformers takes them as they are
        assert model.generate(features, max_new_tokens=3, **expected).dim() == 2
