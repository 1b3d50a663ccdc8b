"""The encoder-output cache: same loss as computing the encoder, invalidated by content."""

from pathlib import Path

import pytest
import torch
from conftest import make_random_whisper, speak, write_manifest

from whisper_finetuning.data import encoder_cache
from whisper_finetuning.data import manifests as dataio
from whisper_finetuning.data.audio import read_audio
from whisper_finetuning.data.encoder_cache import EncoderCache, load_entry
from whisper_finetuning.model.asr import WhisperASR

# float16 storage of encoder outputs moves the loss by far less than this.
LOSS_TOLERANCE = 1e-3


@pytest.fixture
def dataset(tmp_path):
    texts = ["A cup of tea, please.", "The train leaves at nine from the second platform."]
    rows = [
        {"ID": f"u{i}", "duration": 1.0, "wav": speak(t, tmp_path / f"u{i}.wav"), "wrd": t}
        for i, t in enumerate(texts)
    ]
    return dataio.load_manifest(write_manifest(tmp_path / "m.csv", rows), tmp_path)


def loss(model, encoder_out, text):
    tokens = torch.tensor([model.prefix_tokens + model.encode_text(text) + [model.eot]])
    logits = model.forward_decoder(tokens[:, :-1], model.encode_trainable(encoder_out))
    return torch.nn.functional.cross_entropy(logits[0], tokens[0, 1:]).item()


@pytest.mark.parametrize(
    "options",
    [{}, {"trainable_encoder_layers": 1}, {"window_seconds": 1}],  # 1 s: windows of 2 s and 4 s
)
@pytest.mark.slow
def test_cached_and_computed_encoder_give_the_same_loss(
    random_whisper_dir, dataset, tmp_path, options
):
    model = WhisperASR(str(random_whisper_dir), **options).eval()
    entries = EncoderCache(tmp_path / "cache", model).prepare(dataset)
    for utt_id, row in dataset.data.items():
        with torch.no_grad():
            computed = model.encode_frozen(model.features(read_audio(row["wav"])[None]))
            cached = load_entry(entries[utt_id])[None]
            assert cached.shape == computed.shape
            assert abs(loss(model, cached, row["wrd"]) - loss(model, computed, row["wrd"])) < (
                LOSS_TOLERANCE
            )


@pytest.mark.slow
def test_changing_audio_or_model_recomputes(random_whisper_dir, dataset, tmp_path, caplog):
    model = WhisperASR(str(random_whisper_dir))
    cache = EncoderCache(tmp_path / "cache", model)
    first = cache.prepare(dataset)
    assert all(path.exists() for path in first.values())
    assert cache.prepare(dataset) == first  # nothing to do the second time
    # A changed audio file gets a new entry; the other utterance keeps its own.
    speak("Something else entirely.", Path(dataset.data["u0"]["wav"]))
    second = cache.prepare(dataset)
    assert second["u0"] != first["u0"] and second["u1"] == first["u1"]
    # Another model (other weights) or another freezing boundary: another folder.
    other = make_random_whisper(tmp_path / "other", random_whisper_dir, seed=1)
    assert EncoderCache(tmp_path / "cache", WhisperASR(str(other))).folder != cache.folder
    partly = WhisperASR(str(random_whisper_dir), trainable_encoder_layers=1)
    assert EncoderCache(tmp_path / "cache", partly).folder != cache.folder


def test_cache_refuses_when_it_would_be_wrong(random_whisper_dir):
    model = WhisperASR(str(random_whisper_dir), freeze_encoder=False)
    assert not encoder_cache.use_cache("auto", model, augment=False)
    with pytest.raises(ValueError, match="convolutional stem trains"):
        encoder_cache.use_cache(True, model, augment=False)
    frozen = WhisperASR(str(random_whisper_dir))
    with pytest.raises(ValueError, match="augmentation changes the encoder input"):
        encoder_cache.use_cache(True, frozen, augment=True)
    assert encoder_cache.use_cache("auto", frozen, augment=False)
    assert not encoder_cache.use_cache(False, frozen, augment=False)


@pytest.mark.slow
def test_rows_skipped_by_the_checks_are_not_cached(random_whisper_dir, dataset, tmp_path):
    model = WhisperASR(str(random_whisper_dir))
    Path(dataset.data["u1"]["wav"]).unlink()
    kept = dataio.check_rows(dataset, "train", model, "skip")
    entries = EncoderCache(tmp_path / "cache", model).prepare(kept)
    assert list(entries) == ["u0"] and entries["u0"].exists()
