"""The accent corpus's non-speech test clips: made by sox and espeak-ng, reproducibly, at
their stated levels, appended to the test manifest and never made twice."""

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from whisper_finetuning.data.prepare import accent_corpus, nonspeech_test, synthesis

VOICES = ("en-us", "en-gb-scotland")
SIZES = {"n_train_sentences": 2, "n_valid_sentences": 2, "n_test_sentences": 3}
N_CLIPS = 8  # two of each kind
SEED, OTHER_SEED = 11, 12
PEAK_TOLERANCE_DB = 0.05  # sox sets the peak; 16-bit rounding moves it a little

pytestmark = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in synthesis.REQUIRED_TOOLS),
    reason="espeak-ng and sox are required: apt-get install espeak-ng sox",
)


def build(root, seed, n_clips=N_CLIPS):
    return accent_corpus.prepare_accent_corpus(
        root / "data", root / "save", voices=VOICES, seed=seed, n_nonspeech_test=n_clips, **SIZES
    )


def rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def clips(root):
    return {p.name: p.read_bytes() for p in sorted((root / "data" / "nonspeech").glob("*.wav"))}


def peak_db(path):
    audio, _ = soundfile.read(path)
    return 20 * np.log10(np.abs(audio).max())


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    roots = {name: tmp_path_factory.mktemp(name) for name in ("a", "b", "other")}
    seeds = {"a": SEED, "b": SEED, "other": OTHER_SEED}
    return {name: (root, build(root, seeds[name])) for name, root in roots.items()}


def test_test_manifest_ends_with_the_clips_as_nonspeech_rows(corpora):
    root, manifests = corpora["a"]
    test = rows(manifests["test"])
    speech, nonspeech = test[:-N_CLIPS], test[-N_CLIPS:]
    assert len(speech) == SIZES["n_test_sentences"] * len(VOICES)
    assert all(row["wrd"] for row in speech)
    kinds = [nonspeech_test.KINDS[k % 4] for k in range(N_CLIPS)]
    assert [row["ID"] for row in nonspeech] == [f"nonspeech_{k:03d}_{kinds[k]}" for k in range(8)]
    for row, kind in zip(nonspeech, kinds, strict=True):
        assert (row["wrd"], row["dialect"], row["spk_id"]) == ("", "nonspeech", kind)
        assert row["wav"] == f"$data_root/nonspeech/{row['ID']}.wav"
        info = soundfile.info(root / "data" / "nonspeech" / f"{row['ID']}.wav")
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert abs(info.frames / 16000 - float(row["duration"])) < 0.0015
        assert nonspeech_test.SECONDS[0] - 0.001 <= float(row["duration"])
        assert float(row["duration"]) <= nonspeech_test.SECONDS[1] + 0.001
    for split in ("train", "valid"):  # only the test set gains clips
        assert all(row["wrd"] for row in rows(manifests[split]))


def test_clips_are_reproducible_and_another_seed_makes_others(corpora):
    (root_a, manifests_a), (root_b, manifests_b) = corpora["a"], corpora["b"]
    assert clips(root_a) == clips(root_b) and len(clips(root_a)) == N_CLIPS
    assert Path(manifests_a["test"]).read_bytes() == Path(manifests_b["test"]).read_bytes()
    other = clips(corpora["other"][0])
    assert all(other[name] != data for name, data in clips(root_a).items())


def test_levels_as_stated(corpora):
    folder = corpora["a"][0] / "data" / "nonspeech"
    expected = {"babble": -25, "chords": -12, "hum": -20, "room": -50}
    for path in folder.glob("*.wav"):
        kind = path.stem.rsplit("_", 1)[1]
        assert abs(peak_db(path) - expected[kind]) < PEAK_TOLERANCE_DB, path.name


def test_babble_speakers_come_from_the_voices_and_the_test_sentences():
    sentences = ["one two three.", "four five six.", "seven eight nine."]
    rotations = {" ".join(sentences[k:] + sentences[:k]) for k in range(len(sentences))}
    plan = nonspeech_test.babble_plan(SEED, 0, VOICES, sentences)
    assert len(plan) == nonspeech_test.BABBLE_VOICES == 4
    for voice, text in plan:
        base, variant = voice.split("+")
        assert base in VOICES and variant in nonspeech_test.VOICE_VARIANTS
        assert text in rotations  # three consecutive test sentences
    assert plan == nonspeech_test.babble_plan(SEED, 0, VOICES, sentences)


def test_rerun_makes_nothing_and_without_clips_the_test_set_is_speech_only(
    corpora, monkeypatch, tmp_path
):
    root, manifests = corpora["a"]
    files = sorted((root / "data").rglob("*.wav")) + [Path(p) for p in manifests.values()]
    mtimes = [p.stat().st_mtime_ns for p in files]

    def fail(*args):
        raise AssertionError("nothing must be made again")

    monkeypatch.setattr(accent_corpus, "synthesize", fail)
    monkeypatch.setattr(nonspeech_test, "synthesize_clip", fail)
    assert build(root, SEED) == manifests
    assert [p.stat().st_mtime_ns for p in files] == mtimes
    monkeypatch.undo()

    without = build(tmp_path, SEED, n_clips=0)
    assert rows(without["test"]) == rows(manifests["test"])[:-N_CLIPS]
