"""A tiny.en fine-tuned with timestamp targets, exported: transformers' pipeline returns
timestamped chunks, and the recipe's timestamp decoding equals transformers' generate."""

import csv

import pytest
import soundfile as sf
import torch
import transformers
from conftest import fine_tune_tiny_en

from whisper_finetuning import export_hf
from whisper_finetuning.data.examples import segments_from_tokens
from whisper_finetuning.decoding.search import greedy_search
from whisper_finetuning.model.asr import WhisperASR


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, tiny_en_dir):
    """One epoch of cross-attention fine-tuning of the real tiny.en, every target timestamped."""
    root = tmp_path_factory.mktemp("export_timestamps")
    return fine_tune_tiny_en(
        root, tiny_en_dir, "--timestamp_probability=1.0", "--diagnose_after_training=False"
    )


@pytest.mark.slow
def test_exported_model_trained_with_timestamps_returns_timestamped_chunks(experiment, tmp_path):
    dest, _ = export_hf.export(experiment / "exp", tmp_path / "hf")
    pipe = transformers.pipeline("automatic-speech-recognition", model=str(dest), device="cpu")
    whisper = WhisperASR(str(dest)).eval()
    with open(experiment / "exp/manifests/test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows
    for row in rows:
        audio = sf.read(row["wav"].replace("$data_root", str(experiment / "data")), dtype="float32")
        duration = float(row["duration"])
        heard = pipe({"raw": audio[0], "sampling_rate": 16000}, return_timestamps=True)
        chunks = [(*chunk["timestamp"], chunk["text"].strip()) for chunk in heard["chunks"]]
        assert chunks and all(
            0 <= start < end <= duration + 0.5 and text for start, end, text in chunks
        )
        assert all(a[1] <= b[0] for a, b in zip(chunks, chunks[1:], strict=False))  # in order
        # The recipe's timestamp decoding is transformers' generate with timestamps, exactly
        # (the pipeline's own decode differed from both in the wording of one test clip).
        features = whisper.features(torch.from_numpy(audio[0])[None])
        with torch.no_grad():
            encoder_out = whisper.encode(features)
            generated = whisper.model.generate(features, return_timestamps=True).tolist()[0]
        prompt = whisper.prompt(timestamps=True)
        (tokens,), _ = greedy_search(whisper, encoder_out, prompts=[prompt], timestamps=True)
        generated = generated[len(prompt) :] if generated[: len(prompt)] == prompt else generated
        assert tokens == [t for t in generated if t != whisper.eot]
        segments = segments_from_tokens(tokens, whisper.timestamp_begin, whisper.decode_text)
        assert segments and all(0 <= s.start < s.end <= duration + 0.5 for s in segments)
