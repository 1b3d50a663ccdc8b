"""Tests for ``data.prepare.corpora`` on tiny fake corpora built from real short audio."""

import csv
import io
import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile

from whisper_finetuning.data.manifests import load_manifest
from whisper_finetuning.data.prepare import corpora as data_prep
from whisper_finetuning.data.prepare import prepare
from whisper_finetuning.data.prepare.corpora import (
    hash_split,
    prepare_common_voice,
    prepare_librispeech,
    prepare_tsv_folder,
)

SAMPLE_RATE = 16000
DURATION_TOLERANCE = 1e-3  # seconds
TONE_HZ = 440
CV_SUMMARY = "skipped 3 rows: 1 missing audio, 1 unreadable audio, 1 empty transcript"
QUOTED_SENTENCE = "\"Hello,\" she said; it's 5 o'clock."  # CSV quoting must not alter it


def write_audio(path: Path, seconds: float) -> None:
    """Write a 16 kHz sine of ``seconds``; the format follows the file extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32), SAMPLE_RATE)


def can_write_mp3() -> bool:
    """Whether this libsndfile can encode mp3 (>= 1.1 with LAME)."""
    try:
        soundfile.write(io.BytesIO(), np.zeros(SAMPLE_RATE // 10), SAMPLE_RATE, format="MP3")
    except (soundfile.SoundFileError, TypeError, ValueError):
        return False
    return True


CV_EXT = "mp3" if can_write_mp3() else "wav"


def write_tsv(path: Path, header: list[str], rows: list[tuple]) -> None:
    """Write a tab-separated file without quoting, as Common Voice ships it."""
    lines = ["\t".join(header)] + ["\t".join(map(str, row)) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def assert_manifest(csv_path: str, header: list[str], expected: list[dict]) -> None:
    """Check the header and every row; durations to 1 ms and written with 3 decimals."""
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == header
        rows = list(reader)
    durations = [row.pop("duration") for row in rows]
    assert all(len(d.split(".")[1]) == 3 for d in durations)
    expected = [dict(row) for row in expected]
    expected_durations = [row.pop("duration") for row in expected]
    tolerance = DURATION_TOLERANCE
    assert [float(d) for d in durations] == pytest.approx(expected_durations, abs=tolerance)
    assert rows == expected


def read_ids(csv_path: str) -> list[str]:
    with open(csv_path, newline="", encoding="utf-8") as f:
        return [row["ID"] for row in csv.DictReader(f)]


# --------------------------------------------------------------------- LibriSpeech


@pytest.fixture
def librispeech(tmp_path):
    """A LibriSpeech tree with two train splits, one missing flac and one empty line."""
    root = tmp_path / "LibriSpeech"
    chapters = {
        ("train-clean-100", "19", "198"): [
            ("0000", "NORTHANGER ABBEY", 0.5),
            ("0001", "CHAPTER ONE", 0.25),
            ("0002", "THIS FLAC IS MISSING", None),
            ("0003", "", 0.3),
        ],
        ("train-other-500", "26", "495"): [("0000", "HELLO THERE", 0.2)],
        ("dev-clean", "84", "121123"): [("0000", "GO DO YOU HEAR", 0.4)],
        ("test-clean", "61", "70968"): [("0000", "HE BEGAN A CONFUSED COMPLAINT", 0.3)],
        ("test-other", "1688", "142285"): [("0000", "THERE WAS NO ONE", 0.35)],
    }
    for (split, spk, chapter), utterances in chapters.items():
        chapter_dir = root / split / spk / chapter
        chapter_dir.mkdir(parents=True)
        lines = []
        for number, text, seconds in utterances:
            utt_id = f"{spk}-{chapter}-{number}"
            lines.append(f"{utt_id} {text}".rstrip())
            if seconds is not None:
                write_audio(chapter_dir / f"{utt_id}.flac", seconds)
        (chapter_dir / f"{spk}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    (root / "SPEAKERS.TXT").write_text(
        "; ID  |SEX| SUBSET           |MINUTES| NAME\n"
        "19   | F | train-clean-100  | 25.19 | Kara Shallenberg\n"
        "84   | F | dev-clean        |  8.02 | Christie Nowak\n"
        "61   | M | test-clean       |  8.08 | Paul-Gabriel Wiener\n"
    )
    return root


def test_librispeech_manifests(librispeech, tmp_path, caplog):
    save = tmp_path / "save"
    with caplog.at_level(logging.WARNING, logger=data_prep.__name__):
        out = prepare_librispeech(
            librispeech, save, train_splits=("train-clean-100", "train-other-500")
        )

    assert out == {
        "train": str(save / "train.csv"),
        "valid": str(save / "valid.csv"),
        "test": [str(save / "test-clean.csv"), str(save / "test-other.csv")],
    }
    header = ["ID", "duration", "wav", "spk_id", "wrd", "gender"]
    assert_manifest(
        out["train"],
        header,
        [
            {
                "ID": "19-198-0000",
                "duration": 0.5,
                "wav": "$data_root/train-clean-100/19/198/19-198-0000.flac",
                "spk_id": "19",
                "wrd": "NORTHANGER ABBEY",
                "gender": "F",
            },
            {
                "ID": "19-198-0001",
                "duration": 0.25,
                "wav": "$data_root/train-clean-100/19/198/19-198-0001.flac",
                "spk_id": "19",
                "wrd": "CHAPTER ONE",
                "gender": "F",
            },
            {
                "ID": "26-495-0000",
                "duration": 0.2,
                "wav": "$data_root/train-other-500/26/495/26-495-0000.flac",
                "spk_id": "26",
                "wrd": "HELLO THERE",
                "gender": "",  # speaker 26 is not in SPEAKERS.TXT
            },
        ],
    )
    assert_manifest(
        out["test"][1],
        header,
        [
            {
                "ID": "1688-142285-0000",
                "duration": 0.35,
                "wav": "$data_root/test-other/1688/142285/1688-142285-0000.flac",
                "spk_id": "1688",
                "wrd": "THERE WAS NO ONE",
                "gender": "",
            }
        ],
    )
    assert read_ids(out["valid"]) == ["84-121123-0000"]
    assert read_ids(out["test"][0]) == ["61-70968-0000"]
    summaries = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(summaries) == 1
    summary = "skipped 2 rows: 1 missing audio, 0 unreadable audio, 1 empty transcript"
    assert "train.csv" in summaries[0] and summary in summaries[0]
    assert not list(save.glob("*.tmp")) and not list(save.glob(".*"))


def test_librispeech_missing_split_and_transcripts(librispeech, tmp_path):
    with pytest.raises(FileNotFoundError, match="LibriSpeech split 'train-clean-360' not found"):
        prepare_librispeech(librispeech, tmp_path / "a", train_splits=("train-clean-360",))
    (librispeech / "train-clean-360").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \*/\*/\*\.trans\.txt under"):
        prepare_librispeech(librispeech, tmp_path / "b", train_splits=("train-clean-360",))


# -------------------------------------------------------------------- Common Voice

CV_HEADER = [
    "client_id", "path", "sentence", "up_votes", "down_votes",
    "age", "gender", "accents", "variant", "locale", "segment",
]  # fmt: skip


def cv_row(client, clip, sentence, gender="", accents=""):
    return (client, clip, sentence, 2, 0, "twenties", gender, accents, "", "en", "")


@pytest.fixture
def common_voice(tmp_path):
    """A Common Voice release with one missing, one corrupt and one untranscribed clip."""
    root = tmp_path / "cv-corpus" / "en"
    clips = root / "clips"
    write_audio(clips / f"common_voice_en_1.{CV_EXT}", 0.5)
    write_audio(clips / f"common_voice_en_2.{CV_EXT}", 0.25)
    write_audio(clips / f"common_voice_en_4.{CV_EXT}", 0.25)
    (clips / f"common_voice_en_5.{CV_EXT}").write_bytes(b"definitely not audio" * 20)
    write_audio(clips / f"common_voice_en_6.{CV_EXT}", 0.3)
    write_audio(clips / f"common_voice_en_7.{CV_EXT}", 0.4)
    train = [
        cv_row("aa11", f"common_voice_en_1.{CV_EXT}", QUOTED_SENTENCE,
               "female_feminine", "England English"),
        cv_row("bb22", f"common_voice_en_2.{CV_EXT}", "Ça va? Très bien, merci!"),
        cv_row("cc33", f"common_voice_en_3.{CV_EXT}", "No clip was downloaded for this."),
        cv_row("dd44", f"common_voice_en_4.{CV_EXT}", ""),
        cv_row("ee55", f"common_voice_en_5.{CV_EXT}", "A corrupt clip."),
    ]  # fmt: skip
    write_tsv(root / "train.tsv", CV_HEADER, train)
    write_tsv(root / "dev.tsv", CV_HEADER, [cv_row("ff66", f"common_voice_en_6.{CV_EXT}", "Dev.")])
    write_tsv(root / "test.tsv", CV_HEADER, [cv_row("gg77", f"common_voice_en_7.{CV_EXT}", "Hi!")])
    return root


def test_common_voice_manifests(common_voice, tmp_path, caplog):
    save = tmp_path / "save"
    with caplog.at_level(logging.WARNING, logger=data_prep.__name__):
        out = prepare_common_voice(common_voice, save)

    assert out == {
        "train": str(save / "train.csv"),
        "valid": str(save / "valid.csv"),
        "test": [str(save / "test.csv")],
    }
    header = ["ID", "duration", "wav", "spk_id", "wrd", "accent", "gender"]
    assert_manifest(
        out["train"],
        header,
        [
            {
                "ID": "common_voice_en_1",
                "duration": 0.5,
                "wav": f"$data_root/clips/common_voice_en_1.{CV_EXT}",
                "spk_id": "aa11",
                "wrd": QUOTED_SENTENCE,
                "accent": "England English",
                "gender": "female_feminine",
            },
            {
                "ID": "common_voice_en_2",
                "duration": 0.25,
                "wav": f"$data_root/clips/common_voice_en_2.{CV_EXT}",
                "spk_id": "bb22",
                "wrd": "Ça va? Très bien, merci!",
                "accent": "",
                "gender": "",
            },
        ],
    )
    assert read_ids(out["valid"]) == ["common_voice_en_6"]
    assert read_ids(out["test"][0]) == ["common_voice_en_7"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("train.csv" in m and CV_SUMMARY in m for m in messages)
    assert not any("valid.csv: skipped" in m or "test.csv: skipped" in m for m in messages)


def test_common_voice_old_accent_column_without_gender(tmp_path):
    root = tmp_path / "cv"
    write_audio(root / "clips" / f"a.{CV_EXT}", 0.2)
    header = ["client_id", "path", "sentence", "up_votes", "down_votes", "age", "accent"]
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        write_tsv(root / name, header, [("c1", f"a.{CV_EXT}", "Hi.", 1, 0, "", "scotland")])

    out = prepare_common_voice(root, tmp_path / "save")

    with open(out["train"], newline="", encoding="utf-8") as f:
        (row,) = csv.DictReader(f)
    assert (row["accent"], row["gender"]) == ("scotland", "")


def test_common_voice_missing_tsv(common_voice, tmp_path):
    (common_voice / "dev.tsv").unlink()
    with pytest.raises(FileNotFoundError, match=r"Common Voice TSV not found: .*dev\.tsv"):
        prepare_common_voice(common_voice, tmp_path / "save")


def test_manifest_loads_in_speechbrain(common_voice, tmp_path):
    """$data_root is substituted by SpeechBrain and quoted transcripts survive the round trip."""
    from speechbrain.dataio.dataio import load_data_csv

    out = prepare("common_voice", common_voice, tmp_path / "save")

    data = load_data_csv(out["train"], replacements={"data_root": str(common_voice)})
    first = data["common_voice_en_1"]
    assert Path(first["wav"]).is_file()
    assert first["wrd"] == QUOTED_SENTENCE
    assert first["duration"] == pytest.approx(0.5, abs=DURATION_TOLERANCE)


# ---------------------------------------------------------------------- TSV folder


def test_tsv_folder_with_split_column(tmp_path, caplog):
    root = tmp_path / "corpus"
    for name, seconds in [("s1/a", 0.5), ("s1/b", 0.25), ("s2/c", 0.3), ("s3/d", 0.2)]:
        write_audio(root / "audio" / f"{name}.wav", seconds)
    header = ["path", "speaker", "text", "split", "dialect", "note"]
    write_tsv(
        root / "transcripts.tsv",
        header,
        [
            ("audio/s1/a.wav", "s1", "Grüezi mitenand.", "train", "zurich", "x"),
            ("audio/s1/b.wav", "s1", "It costs $5 today.", "train", "zurich", ""),
            ("audio/s1/a.wav", "s1", "Grüezi again.", "train", "zurich", ""),
            ("audio/s2/c.wav", "s2", "Salü zäme!", "dev", "basel", ""),
            ("audio/s3/d.wav", "s3", "Hoi.", "test", "bern", ""),
            ("audio/s3/gone.wav", "s3", "Missing.", "test", "bern", ""),
        ],
    )
    with caplog.at_level(logging.WARNING, logger=data_prep.__name__):
        out = prepare_tsv_folder(root, tmp_path / "save")

    manifest_header = ["ID", "duration", "wav", "spk_id", "wrd", "dialect", "note"]
    assert_manifest(
        out["train"],
        manifest_header,
        [
            {
                "ID": "audio_s1_a",
                "duration": 0.5,
                "wav": "$data_root/audio/s1/a.wav",
                "spk_id": "s1",
                "wrd": "Grüezi mitenand.",
                "dialect": "zurich",
                "note": "x",
            },
            {
                "ID": "audio_s1_b",
                "duration": 0.25,
                "wav": "$data_root/audio/s1/b.wav",
                "spk_id": "s1",
                "wrd": "It costs $5 today.",
                "dialect": "zurich",
                "note": "",
            },
        ],
    )
    # a transcript's $ is text: the recipe loads it as written
    loaded = load_manifest(out["train"], root)
    assert loaded.data["audio_s1_b"]["wrd"] == "It costs $5 today."
    assert loaded.data["audio_s1_b"]["wav"] == f"{root}/audio/s1/b.wav"
    assert_manifest(
        out["valid"],
        manifest_header,
        [
            {
                "ID": "audio_s2_c",
                "duration": 0.3,
                "wav": "$data_root/audio/s2/c.wav",
                "spk_id": "s2",
                "wrd": "Salü zäme!",
                "dialect": "basel",
                "note": "",
            }
        ],
    )
    assert read_ids(out["test"][0]) == ["audio_s3_d"]
    messages = " | ".join(r.getMessage() for r in caplog.records)
    assert "train.csv: skipped 1 rows: 0 missing audio" in messages
    assert "1 duplicate ID, 0 '$name' in audio path" in messages
    assert "test.csv: skipped 1 rows: 1 missing audio" in messages


@pytest.fixture
def speaker_corpus(tmp_path):
    """40 speakers with 2 utterances each and no split column."""
    root = tmp_path / "speakers"
    rows = []
    for spk in range(40):
        for utt in range(2):
            rel = f"wavs/spk{spk:02d}_{utt}.wav"
            write_audio(root / rel, 0.1)
            rows.append((rel, f"spk{spk:02d}", f"Sentence {utt} of speaker {spk}.", "north"))
    write_tsv(root / "transcripts.tsv", ["path", "speaker", "text", "dialect"], rows)
    return root


def test_tsv_folder_hash_split_is_by_speaker_and_deterministic(speaker_corpus, tmp_path):
    first = prepare_tsv_folder(speaker_corpus, tmp_path / "run1")
    second = prepare_tsv_folder(speaker_corpus, tmp_path / "run2")

    paths = {"train": first["train"], "valid": first["valid"], "test": first["test"][0]}
    speakers = {}
    for split, path in paths.items():
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                assert row["dialect"] == "north"
                speakers.setdefault(row["spk_id"], set()).add(split)
    assert len(speakers) == 40
    assert all(len(splits) == 1 for splits in speakers.values())  # speaker-disjoint
    assert {spk: splits.pop() for spk, splits in speakers.items()} == {
        f"spk{i:02d}": hash_split(f"spk{i:02d}") for i in range(40)
    }
    assert all(read_ids(path) for path in paths.values())  # no split is empty
    for one, two in zip(
        [first["train"], first["valid"], *first["test"]],
        [second["train"], second["valid"], *second["test"]],
        strict=True,
    ):
        assert Path(one).read_bytes() == Path(two).read_bytes()


def test_hash_split_is_stable_and_80_10_10():
    # Pinned so that a change of hash (e.g. to the salted built-in hash()) is noticed.
    assert [hash_split(key) for key in ("spk1", "alice", "bob")] == ["train", "valid", "test"]
    counts = Counter(hash_split(f"speaker-{i}") for i in range(2000))
    assert counts["train"] == pytest.approx(1600, abs=80)
    assert counts["valid"] == pytest.approx(200, abs=50)
    assert counts["test"] == pytest.approx(200, abs=50)


def test_tsv_folder_without_speakers_splits_by_utterance(tmp_path):
    root = tmp_path / "nospk"
    rows = []
    for i in range(30):
        write_audio(root / f"{i}.flac", 0.1)
        rows.append((f"{i}.flac", f"Utterance {i}."))
    write_tsv(root / "transcripts.tsv", ["path", "text"], rows)

    out = prepare_tsv_folder(root, tmp_path / "save")

    ids = {path: read_ids(path) for path in [out["train"], out["valid"], *out["test"]]}
    for path, split in zip(ids, ("train", "valid", "test"), strict=True):
        assert all(hash_split(f"{utt_id}.flac") == split for utt_id in ids[path])
    assert sorted(sum(ids.values(), []), key=int) == [str(i) for i in range(30)]


def test_tsv_folder_bad_columns(tmp_path):
    root = tmp_path / "bad"
    write_audio(root / "a.wav", 0.1)
    write_tsv(root / "transcripts.tsv", ["path", "sentence"], [("a.wav", "Hi.")])
    with pytest.raises(ValueError, match="has no 'text' column"):
        prepare_tsv_folder(root, tmp_path / "save")
    write_tsv(root / "transcripts.tsv", ["path", "text", "split"], [("a.wav", "Hi.", "eval")])
    with pytest.raises(ValueError, match="unknown split 'eval'"):
        prepare_tsv_folder(root, tmp_path / "save")


# ----------------------------------------------------------------- shared behaviour


def test_second_run_does_not_rewrite(speaker_corpus, tmp_path, caplog):
    save = tmp_path / "save"
    out = prepare("tsv_folder", speaker_corpus, save)
    manifests = [out["train"], out["valid"], *out["test"]]
    before = {path: (os.stat(path).st_mtime_ns, os.stat(path).st_ino) for path in manifests}
    (speaker_corpus / "wavs" / "spk00_0.wav").unlink()  # would change train.csv if rewritten

    with caplog.at_level(logging.INFO, logger=data_prep.__name__):
        assert prepare("tsv_folder", speaker_corpus, save) == out

    after = {path: (os.stat(path).st_mtime_ns, os.stat(path).st_ino) for path in manifests}
    assert after == before
    assert sum("skipping, already prepared" in r.getMessage() for r in caplog.records) == 3


def test_unknown_dataset():
    with pytest.raises(
        ValueError,
        match="unknown dataset 'timit'; choose one of: librispeech, common_voice, tsv_folder, "
        "accent_corpus",
    ):
        prepare("timit", "/data", "/save")


# The accent corpus generates its data, so only the readers need an existing folder.
@pytest.mark.parametrize("dataset", ["common_voice", "librispeech", "tsv_folder"])
def test_missing_data_folder(dataset, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"data_folder not found: {missing}"):
        prepare(dataset, missing, tmp_path / "save")
    assert not (tmp_path / "save").exists()
