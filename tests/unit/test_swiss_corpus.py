"""The Swiss demo's corpus: German, French and Italian sentences spoken by espeak-ng voices and
variants, split by sentence per language, with each row's language in the manifest."""

import csv

import pytest

from whisper_finetuning.data.prepare import accent_corpus, swiss_corpus

VOICES = {"german": ("de+m3", "de"), "french": ("fr-ch",), "italian": ("it+f4",)}
SIZES = {"n_train_sentences": 3, "n_valid_sentences": 1, "n_test_sentences": 2}


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_swiss_corpus_manifests(tmp_path):
    manifests = swiss_corpus.prepare_swiss_corpus(
        tmp_path / "data", tmp_path / "save", voices=VOICES, **SIZES
    )
    sentences = {
        language: accent_corpus.load_sentences(swiss_corpus.SENTENCES_FOLDER / f"{language}.txt")
        for language in VOICES
    }
    lines = {}  # sentence line numbers per split and language
    for split, path in manifests.items():
        rows = read_rows(path)
        n_sentences = SIZES[f"n_{split}_sentences"]
        assert len(rows) == n_sentences * sum(len(v) for v in VOICES.values())
        for row in rows:
            language, voice = row["language"], row["dialect"]
            assert voice in VOICES[language] and row["spk_id"] == voice
            slug = voice.replace("+", "-")
            index = int(row["ID"].removeprefix(f"{slug}_s"))
            assert row["wrd"] == sentences[language][index]
            assert row["wav"] == f"$data_root/wav/{slug}/{row['ID']}.wav"
            assert (tmp_path / "data" / "wav" / slug / f"{row['ID']}.wav").is_file()
            lines.setdefault(split, set()).add(index)
    # Split by sentence line, the same for every language: no sentence (nor its translation)
    # crosses splits.
    assert not lines["train"] & lines["test"] and not lines["train"] & lines["valid"]
    assert len(lines["test"]) == SIZES["n_test_sentences"]


@pytest.mark.slow
def test_keep_and_replay_sets_are_english_sentences_apart_and_german_prompted_nonspeech(tmp_path):
    options = {"n_keep_sentences": 2, "n_replay_sentences": 3, "n_nonspeech_keep": 4}
    manifests = swiss_corpus.prepare_swiss_corpus(
        tmp_path / "data", tmp_path / "save", voices=VOICES, **SIZES, **options
    )
    assert set(manifests) == {"train", "valid", "test", "keep_test", "replay"}
    keep, replay = read_rows(manifests["keep_test"]), read_rows(manifests["replay"])
    english = accent_corpus.load_sentences()
    n_voices = len(swiss_corpus.KEEP_VOICES)
    speech, nonspeech = keep[: 2 * n_voices], keep[2 * n_voices :]
    assert len(replay) == 3 * n_voices
    for row in speech + replay:
        assert row["language"] == "english" and row["spk_id"] in swiss_corpus.KEEP_VOICES
        assert row["wrd"] == english[int(row["ID"].rsplit("_s", 1)[1])]
    assert not {row["wrd"] for row in speech} & {row["wrd"] for row in replay}
    assert [row["ID"] for row in nonspeech] == [
        "nonspeech_000_babble", "nonspeech_001_chords", "nonspeech_002_hum", "nonspeech_003_room",
    ]  # fmt: skip
    assert {(row["language"], row["wrd"]) for row in nonspeech} == {("german", "")}
    assert all(
        (tmp_path / "data" / row["wav"].removeprefix("$data_root/")).is_file() for row in keep
    )
    # A rerun finds everything current and rewrites nothing.
    stamps = {
        path: (tmp_path / "save" / path).stat().st_mtime_ns
        for path in ("keep_test.csv", "replay.csv")
    }
    swiss_corpus.prepare_swiss_corpus(
        tmp_path / "data", tmp_path / "save", voices=VOICES, **SIZES, **options
    )
    assert stamps == {path: (tmp_path / "save" / path).stat().st_mtime_ns for path in stamps}
