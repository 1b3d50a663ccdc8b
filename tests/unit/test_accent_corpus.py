"""Tests for the espeak-ng accent corpus: determinism, split hygiene, audio format."""

import csv
import re
import shutil
from pathlib import Path

import pytest
import soundfile

from whisper_finetuning.data.prepare import accent_corpus, synthesis

TINY_VOICES = ("en-us", "en-gb-scotland")
TINY_SIZES = {"n_train_sentences": 4, "n_valid_sentences": 2, "n_test_sentences": 2}
SEED = 7
OTHER_SEED = 8
MIN_SENTENCES = 330
DURATION_TOLERANCE = 0.0015  # manifest durations are rounded to milliseconds

needs_tools = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in synthesis.REQUIRED_TOOLS),
    reason="espeak-ng and sox are required: apt-get install espeak-ng sox",
)


def build(root: Path, seed: int) -> dict[str, str]:
    """Build the tiny corpus with wavs under root/data and manifests under root/save."""
    return accent_corpus.prepare_accent_corpus(
        root / "data", root / "save", voices=TINY_VOICES, seed=seed, **TINY_SIZES
    )


def read_rows(path: str) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def wav_files(root: Path) -> dict[str, bytes]:
    data = root / "data"
    return {str(p.relative_to(data)): p.read_bytes() for p in sorted(data.rglob("*.wav"))}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Two builds with the same seed and one with another seed, keyed by name."""
    roots = {name: tmp_path_factory.mktemp(name) for name in ("a", "b", "other")}
    seeds = {"a": SEED, "b": SEED, "other": OTHER_SEED}
    return {name: (root, build(root, seeds[name])) for name, root in roots.items()}


def test_sentence_file_is_large_distinct_and_spelled_out():
    lines = accent_corpus.load_sentences()
    assert len({line.lower() for line in lines}) == len(lines) >= MIN_SENTENCES
    for line in lines:
        assert re.fullmatch(r"[A-Za-z .,?']+", line), line
        assert 6 <= len(line.split()) <= 20, line


def test_missing_espeak_gives_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="apt-get install espeak-ng"):
        accent_corpus.prepare_accent_corpus(tmp_path, tmp_path, voices=TINY_VOICES, **TINY_SIZES)

    assert accent_corpus.main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "apt-get install espeak-ng" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.slow
@needs_tools
def test_same_seed_gives_identical_manifests_and_audio(corpora):
    (root_a, manifests_a), (root_b, manifests_b) = corpora["a"], corpora["b"]
    for split in accent_corpus.SPLITS:
        assert Path(manifests_a[split]).read_bytes() == Path(manifests_b[split]).read_bytes()
    assert wav_files(root_a) == wav_files(root_b)


@pytest.mark.slow
@needs_tools
def test_different_seed_gives_different_split(corpora):
    def texts(manifests):
        return {split: {row["wrd"] for row in read_rows(manifests[split])} for split in manifests}

    assert texts(corpora["a"][1]) != texts(corpora["other"][1])


@pytest.mark.slow
@needs_tools
@pytest.mark.parametrize("name", ["a", "other"])
def test_splits_share_no_sentence_and_every_voice_speaks_all(corpora, name):
    _, manifests = corpora[name]
    seen: set[str] = set()
    for split, path in manifests.items():
        rows = read_rows(path)
        texts = {row["wrd"] for row in rows}
        assert not texts & seen
        seen |= texts
        n_sentences = TINY_SIZES[f"n_{split}_sentences"]
        assert len(texts) == n_sentences and len(rows) == n_sentences * len(TINY_VOICES)
        for voice in TINY_VOICES:
            assert {row["wrd"] for row in rows if row["dialect"] == voice} == texts


@pytest.mark.slow
@needs_tools
def test_manifest_fields_and_audio_format(corpora):
    root, manifests = corpora["a"]
    sentences = set(accent_corpus.load_sentences())
    for path in manifests.values():
        with open(path, newline="", encoding="utf-8") as f:
            assert next(csv.reader(f)) == list(accent_corpus.MANIFEST_HEADER)
        for row in read_rows(path):
            voice = row["dialect"]
            assert re.fullmatch(rf"{re.escape(voice)}_s\d{{4}}", row["ID"])
            assert row["spk_id"] == voice and row["wrd"] in sentences
            assert row["language"] == "english"
            assert row["wav"] == f"$data_root/wav/{voice}/{row['ID']}.wav"
            info = soundfile.info(row["wav"].replace("$data_root", str(root / "data")))
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            assert abs(info.frames / info.samplerate - float(row["duration"])) < DURATION_TOLERANCE


@pytest.mark.slow
@needs_tools
def test_rerun_is_idempotent_and_does_no_synthesis(corpora, monkeypatch):
    root, manifests = corpora["a"]
    files = sorted((root / "data").rglob("*.wav")) + [Path(p) for p in manifests.values()]
    mtimes = [p.stat().st_mtime_ns for p in files]

    def fail(*args):
        raise AssertionError("synthesis must not run again")

    monkeypatch.setattr(accent_corpus, "synthesize", fail)
    assert build(root, SEED) == manifests
    assert [p.stat().st_mtime_ns for p in files] == mtimes


def test_longform_recordings_join_one_voice_in_order_within_40_to_90_s(tmp_path):
    import json

    import numpy as np

    rng = np.random.default_rng(0)
    utterances = []
    for voice in ("en-us", "en-gb"):
        for i in range(30):
            utt = accent_corpus.Utterance(f"{voice}_s{i:04d}", voice, f"sentence {i} of {voice}")
            speech = 0.5 * rng.standard_normal(int(16000 * rng.uniform(2.0, 5.0)))
            pad = np.zeros(int(16000 * 0.3))  # espeak-like silence around the speech
            (tmp_path / utt.rel_wav).parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(tmp_path / utt.rel_wav, np.concatenate([pad, speech, pad]), 16000)
            utterances.append(utt)
    manifest = tmp_path / "longform_test.csv"
    accent_corpus.write_longform(manifest, utterances, tmp_path, seed=3)
    rows = read_rows(str(manifest))
    assert rows and {row["spk_id"] for row in rows} == {"en-us", "en-gb"}
    for row in rows:
        audio, rate = soundfile.read(row["wav"].replace("$data_root", str(tmp_path)))
        assert rate == 16000 and 40 <= len(audio) / rate <= 90
        segments = json.loads(row["segments"])
        texts = [text for _, _, text in segments]
        assert row["wrd"] == " ".join(texts)
        numbers = [int(text.split()[1]) for text in texts]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # in order
        assert all(text.endswith(row["spk_id"]) for text in texts)  # one voice
        loud = np.abs(audio) > 0
        ms = rate // 1000  # segment times are rounded to milliseconds
        edges = [(round(a * rate), round(b * rate)) for a, b, _ in segments]
        for k, (first, last) in enumerate(edges):
            # Speech where the segment says (to 1 ms), silence between segments.
            assert loud[first] and loud[last - ms : last + ms].any()
            if k + 1 < len(edges):
                gap = (edges[k + 1][0] - last) / rate
                assert 0.3 - 1e-3 <= gap <= 1.0 + 1e-3
                assert not loud[last + ms : edges[k + 1][0]].any()
