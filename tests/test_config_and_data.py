"""Hyperparameter files, manifest checks and audio reading: clear errors, counted skips."""

import logging

import pytest
import torch
from conftest import sine, write_manifest

from local import dataio
from local.config import HparamsError, load_hparams, resolve
from local.whisper import WhisperASR


def test_size_configs_extend_the_base_and_command_line_wins():
    base, merged = resolve("hparams/whisper_tiny.yaml", "lr: 0.001\nwhisper_hub: foo")
    assert base.name == "whisper_small.yaml"
    assert merged["lr"] == 0.001 and merged["whisper_hub"] == "foo"
    assert merged["batch_size"] == 16  # from whisper_tiny.yaml
    for size in ("base", "medium", "large-v3", "tiny"):
        _, merged = resolve(f"hparams/whisper_{size}.yaml")
        assert merged["whisper_hub"] == f"openai/whisper-{size}"


def test_unknown_key_and_malformed_yaml_are_one_line_errors(tmp_path):
    with pytest.raises(HparamsError, match="unknown hyperparameter 'lrr'"):
        load_hparams("hparams/whisper_small.yaml", "lrr: 0.1\ndata_folder: x")
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: whisper_small.yaml\nlr: [1, 2\n")
    with pytest.raises(HparamsError, match="malformed YAML"):
        resolve(bad)
    missing_base = tmp_path / "orphan.yaml"
    missing_base.write_text("extends: nowhere.yaml\n")
    with pytest.raises(HparamsError, match="extends a file that does not exist"):
        resolve(missing_base)


@pytest.fixture(scope="module")
def model(random_whisper_dir):
    return WhisperASR(str(random_whisper_dir))


@pytest.fixture
def corpus(tmp_path):
    """One good row and one row per kind of problem."""
    rows = [
        {"ID": "good", "wav": sine(tmp_path / "good.wav", 1.0), "wrd": "hello there"},
        {"ID": "missing", "wav": tmp_path / "absent.wav", "wrd": "hello"},
        {"ID": "empty_label", "wav": sine(tmp_path / "e.wav", 1.0), "wrd": "   "},
        {"ID": "long_label", "wav": sine(tmp_path / "l.wav", 1.0), "wrd": "word " * 500},
        {"ID": "long_audio", "wav": sine(tmp_path / "la.wav", 31.0), "wrd": "too long"},
        {"ID": "corrupt", "wav": tmp_path / "corrupt.wav", "wrd": "hello"},
    ]
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF not really a wav")
    for row in rows:
        row["duration"] = 1.0
    return write_manifest(tmp_path / "rows.csv", rows)


def test_bad_rows_are_skipped_with_counted_reasons(corpus, model, caplog):
    dataset = dataio.load_manifest(corpus, corpus.parent)
    with caplog.at_level(logging.WARNING):
        kept = dataio.check_rows(dataset, "train", model, "skip")
    assert kept.data_ids == ["good"]
    log = caplog.text
    assert "skipped 2 row(s) with missing or unreadable audio" in log
    assert "skipped 1 row(s) with empty transcript" in log
    assert "exceeds the decoder's 448" in log
    assert "exceeds Whisper's 30 s window" in log


def test_bad_rows_can_be_an_error_naming_the_row(corpus, model):
    dataset = dataio.load_manifest(corpus, corpus.parent)
    with pytest.raises(dataio.DataError, match=r"train: row missing \(.*absent.wav\): missing"):
        dataio.check_rows(dataset, "train", model, "error")


def test_manifest_missing_a_column(tmp_path):
    path = write_manifest(tmp_path / "m.csv", [], columns=("ID", "duration", "wav"))
    with pytest.raises(dataio.DataError, match="lacks column\\(s\\) wrd"):
        dataio.load_manifest(path, tmp_path)
    with pytest.raises(dataio.DataError, match="cannot read manifest"):
        dataio.load_manifest(tmp_path / "none.csv", tmp_path)


@pytest.mark.parametrize("rate, channels", [(8000, 1), (44100, 2), (48000, 1), (16000, 2)])
def test_audio_is_read_as_16k_mono(tmp_path, rate, channels):
    wav = dataio.read_audio(sine(tmp_path / "a.wav", 0.5, rate=rate, channels=channels))
    assert wav.dim() == 1 and abs(len(wav) - 8000) <= 1
    reference = dataio.read_audio(sine(tmp_path / "ref.wav", 0.5))
    n = min(len(wav), len(reference))
    # Same tone after resampling: the spectra peak at the same frequency bin.
    assert torch.fft.rfft(wav[:n]).abs().argmax() == torch.fft.rfft(reference[:n]).abs().argmax()


@pytest.mark.parametrize(
    "hparams_file, expected",
    [
        ("recipes/LibriSpeech/ASR/whisper/hparams/whisper_small.yaml", "test-other.csv"),
        ("recipes/CommonVoice/ASR/whisper/hparams/whisper_small.yaml", "test.csv"),
        ("hparams/demo_tiny_en.yaml", "test.csv"),
    ],
)
def test_recipe_configs_load(hparams_file, expected, random_whisper_dir, tmp_path):
    overrides = f"whisper_hub: {random_whisper_dir}\ndata_folder: {tmp_path}\nlanguage: german"
    hparams, base, _ = load_hparams(hparams_file, overrides)
    assert base.name == "whisper_small.yaml"
    assert hparams["test_csv"][-1] == f"{hparams['manifest_folder']}/{expected}"
    assert hparams["whisper"].prefix_tokens  # the model was built from the override
