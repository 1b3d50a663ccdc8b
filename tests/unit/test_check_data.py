"""Data checks: planted leakage and bad rows are found with their severity and rows."""

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
from conftest import write_manifest

from whisper_finetuning import check_data as check_data_cli
from whisper_finetuning.data import checks as check_data
from whisper_finetuning.data.checks import run_checks
from whisper_finetuning.data.manifests import DataError, check_format, named_manifests

COLUMNS = ("ID", "duration", "wav", "spk_id", "dialect", "wrd")
CHARS_PER_SECOND = 14.0
SENTENCES = [
    "the train leaves at nine from platform four",
    "could you tell me where the bus stop is",
    "we walked along the river after lunch today",
    "my sister bought a green bicycle last week",
    "please close the window before it starts raining",
    "the library opens early on saturday mornings",
    "he forgot his umbrella at the station again",
    "our neighbours are painting their front door blue",
    "a cup of tea would be lovely right now",
    "the children played football in the park",
    "she wrote a long letter to her grandmother",
    "turn left at the church and keep going",
    "there is a small bakery near the harbour",
    "the meeting was moved to thursday afternoon",
    "i would like a return ticket to glasgow",
    "the dog barked at the postman every morning",
    "they planted tomatoes and beans in the garden",
    "the museum has a new exhibition about ships",
    "can you pass me the salt and pepper please",
    "the last ferry leaves the island at six",
]
# Speaker-disjoint: train a, b; valid c; test d, e. Two dialects in the same proportions.
LAYOUT = {
    "train": [("a", "north"), ("b", "south")] * 6,
    "valid": [("c", "north"), ("c", "south")],
    "test": [("d", "north"), ("e", "south"), ("d", "north"), ("e", "south")],
}


def tone(path, seconds, frequency, rate=16000, channels=1):
    """A tone of its own frequency: every file's content differs."""
    t = np.arange(int(seconds * rate)) / rate
    audio = (0.1 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)
    if channels > 1:
        audio = np.stack([audio] * channels, axis=1)
    sf.write(path, audio, rate)
    return path


class Corpus:
    """A small clean corpus on disk whose rows a test can change before writing manifests."""

    def __init__(self, folder):
        self.folder = folder
        (folder / "wav").mkdir()
        self.rows = {}
        index = 0
        for split, speakers in LAYOUT.items():
            self.rows[split] = []
            for spk, dialect in speakers:
                text = SENTENCES[index]
                # Speaking rates vary by +-10% around 14 characters per second.
                seconds = len(text) / CHARS_PER_SECOND * (0.9 + 0.2 * ((index * 7) % 10) / 9)
                self.add(split, f"{split}{index}", text, seconds, spk=spk, dialect=dialect)
                index += 1

    def add(self, split, utt_id, text, seconds, spk="d", dialect="north", **audio):
        """A row with a new audio file of its own."""
        path = self.folder / "wav" / f"{utt_id}.wav"
        frequency = 200 + 23 * sum(len(r) for r in self.rows.values())
        tone(path, seconds, frequency, **audio)
        row = {
            "ID": utt_id,
            "duration": round(seconds, 3),
            "wav": f"$data_root/wav/{utt_id}.wav",
            "spk_id": spk,
            "dialect": dialect,
            "wrd": text,
        }
        self.rows[split].append(row)
        return row

    def manifests(self, columns=COLUMNS):
        """Write the manifests; split name -> CSV path."""
        return {
            split: str(write_manifest(self.folder / f"{split}.csv", rows, columns))
            for split, rows in self.rows.items()
        }

    def check(self, **kwargs):
        """Run the checks on the corpus as it is now."""
        return run_checks(self.manifests(), str(self.folder), **kwargs)


@pytest.fixture
def corpus(tmp_path):
    return Corpus(tmp_path)


def kinds(findings):
    """(severity, kind) of every finding."""
    return sorted((f["severity"], f["kind"]) for f in findings)


def rows_of(findings, kind, severity):
    """The (split, id) rows of the one finding of this kind and severity."""
    (finding,) = [f for f in findings if f["kind"] == kind and f["severity"] == severity]
    assert finding["n_rows"] == len(finding["rows"])
    return sorted((r["split"], r["id"]) for r in finding["rows"])


def test_a_clean_corpus_raises_nothing_and_writes_both_reports(corpus, tmp_path):
    findings = corpus.check(output_dir=str(tmp_path / "report"))
    assert findings == []
    report = json.loads((tmp_path / "report" / "data_report.json").read_text())
    assert report["findings"] == []
    assert report["counts"] == {"error": 0, "warning": 0, "info": 0}
    assert report["splits"]["train"]["rows"] == 12 and report["splits"]["test"]["speakers"] == 2
    shifts = {(s["split"], s["measure"]): s for s in report["shift"]}
    assert shifts[("valid", "dialect proportions")]["value"] == 0.0
    assert not any(s["shifted"] for s in report["shift"])
    named = corpus.check(output_dir=str(tmp_path), group_columns=["spk_id", "dialect", "accent"])
    shifted = json.loads((tmp_path / "data_report.json").read_text())["shift"]
    assert named == [] and shifted == report["shift"]
    markdown = (tmp_path / "report" / "data_report.md").read_text()
    assert (
        "0 error(s), 0 warning(s), 0 info(s)" in markdown and "\n## Findings\n\nNone." in markdown
    )


def test_same_audio_under_another_name_in_test_is_an_error(corpus):
    source = corpus.folder / "wav" / "train0.wav"
    shutil.copy(source, corpus.folder / "wav" / "copied.wav")
    row = {**corpus.rows["train"][0], "ID": "copied", "wav": "$data_root/wav/copied.wav"}
    row["spk_id"] = "d"
    corpus.rows["test"].append({**row, "wrd": "an entirely different label for the copy"})
    findings = corpus.check()
    assert kinds(findings) == [("error", "audio_leak")]
    assert rows_of(findings, "audio_leak", "error") == [("test", "copied"), ("train", "train0")]


def test_same_transcript_in_two_splits(corpus):
    long_text = corpus.rows["train"][3]["wrd"]
    corpus.add("test", "same_text", long_text.upper() + "!", 3.1)
    corpus.add("valid", "short_a", "Thank you.", 0.7)
    corpus.add("test", "short_b", "thank you", 0.72)
    findings = corpus.check()
    assert kinds(findings) == [("error", "transcript_leak"), ("warning", "transcript_leak")]
    assert rows_of(findings, "transcript_leak", "error") == [
        ("test", "same_text"),
        ("train", "train3"),
    ]
    assert rows_of(findings, "transcript_leak", "warning") == [
        ("test", "short_b"),
        ("valid", "short_a"),
    ]


def test_a_train_speaker_in_a_speaker_disjoint_test_set_is_an_error(corpus):
    corpus.add("test", "leaked", "the swans returned to the lake in spring", 2.9, spk="a")
    findings = corpus.check()
    assert kinds(findings) == [("error", "speaker_overlap")]
    expected = [("test", "leaked")] + [("train", f"train{i}") for i in range(0, 12, 2)]
    assert rows_of(findings, "speaker_overlap", "error") == sorted(expected)
    assert findings[0]["message"].startswith("1 of 3 test speakers are also in train")


def test_the_same_speakers_everywhere_is_a_sentence_split_and_only_info(corpus):
    for split in ("valid", "test"):
        for i, row in enumerate(corpus.rows[split]):
            row["spk_id"] = "ab"[i % 2]
    findings = corpus.check()
    assert kinds(findings) == [("info", "speaker_overlap")] * 2
    assert all("split is by sentence" in f["message"] for f in findings)


def test_nonspeech_rows_have_no_speaker_to_share(corpus):
    for split in ("valid", "test"):
        for i, row in enumerate(corpus.rows[split]):
            row["spk_id"] = "ab"[i % 2]
    for k in range(3):  # more "speakers" than the real ones: would make it look disjoint
        corpus.add("test", f"noise{k}", "", 2.0, spk=f"hum{k}")
    findings = [f for f in corpus.check() if f["kind"] == "speaker_overlap"]
    assert [f["message"].split(":")[0] for f in findings] == [
        "2 of 2 test speakers are also in train",
        "2 of 2 valid speakers are also in train",
    ]
    assert {f["severity"] for f in findings} == {"info"}


def test_duplicate_ids_and_duplicate_rows(corpus):
    corpus.rows["valid"].append(dict(corpus.rows["valid"][0]))
    corpus.rows["train"].append({**corpus.rows["train"][5], "ID": "again"})
    findings = corpus.check()
    assert kinds(findings) == [("error", "duplicate_id"), ("warning", "duplicate_rows")]
    (duplicate_id,) = [f for f in findings if f["kind"] == "duplicate_id"]
    assert duplicate_id["rows"] == [
        {"split": "valid", "id": "valid12", "line": 2},
        {"split": "valid", "id": "valid12", "line": 4},
    ]
    assert rows_of(findings, "duplicate_rows", "warning") == [
        ("train", "again"),
        ("train", "train5"),
    ]


def test_empty_and_over_long_labels(corpus):
    corpus.rows["train"][1]["wrd"] = "   "
    corpus.rows["test"][2]["wrd"] = " ".join(["word"] * 30)  # 149 characters
    # A model tokenizer: one token per word plus five prompt/end positions.
    findings = corpus.check(token_count=lambda text: len(text.split()) + 5, max_tokens=34)
    assert rows_of(findings, "nonspeech_rows", "info") == [("train", "train1")]
    assert rows_of(findings, "label_too_long", "error") == [("test", "test16")]
    (too_long,) = [f for f in findings if f["kind"] == "label_too_long"]
    assert too_long["rows"][0]["value"] == 35
    # The long label on ~3 s of audio is also far too fast to be speech.
    assert rows_of(findings, "speaking_rate_outlier", "warning") == [("test", "test16")]
    assert len(findings) == 3
    # Without a tokenizer the count is an estimate: ceil(149 / 4) + 5 = 43 > 42, a warning.
    estimated = corpus.check(max_tokens=42)
    assert rows_of(estimated, "label_too_long", "warning") == [("test", "test16")]
    assert "ESTIMATED" in [f for f in estimated if f["kind"] == "label_too_long"][0]["message"]
    assert not any(f["kind"] == "label_too_long" for f in corpus.check(max_tokens=43))


def test_unreadable_and_missing_audio_are_errors(corpus):
    (corpus.folder / "wav" / "valid12.wav").write_text("not audio")
    corpus.rows["test"][0]["wav"] = "$data_root/wav/nowhere.wav"
    findings = corpus.check()
    assert kinds(findings) == [("error", "unreadable_audio")]
    assert rows_of(findings, "unreadable_audio", "error") == [
        ("test", "test14"),
        ("valid", "valid12"),
    ]


def test_audio_over_30_seconds_is_an_error(corpus):
    text = " ".join(SENTENCES[:10])  # about 14 characters per second over 31 s
    corpus.add("train", "long", text, 31.0, spk="b")
    findings = corpus.check()
    assert rows_of(findings, "audio_too_long", "error") == [("train", "long")]
    assert findings[0]["rows"][0]["value"] == 31.0
    assert kinds(findings) == [("error", "audio_too_long")]
    assert "training and validation need clips of at most 30 s" in findings[0]["message"]


def test_test_rows_over_30_seconds_are_decoded_long_form_their_labels_unbounded(corpus):
    text = " ".join(SENTENCES[:10])
    corpus.add("valid", "long_valid", text, 31.0, spk="b")
    corpus.add("test", "long_test", text + " " + text, 31.0, spk="b")
    findings = corpus.check(token_count=lambda text: len(text.split()) + 5, max_tokens=100)
    assert rows_of(findings, "audio_too_long", "error") == [("valid", "long_valid")]
    assert rows_of(findings, "longform_test_rows", "info") == [("test", "long_test")]
    # The test row's 160 words (the valid row's 80 fit): over 100 positions, never teacher-forced.
    assert not any(f["kind"] == "label_too_long" for f in findings)


def test_mixed_sample_rates_and_channels(corpus):
    corpus.add("test", "narrowband", "the phone line was very quiet", 2.0, rate=8000)
    corpus.add("test", "stereo", "both channels carry the same tone", 2.4, channels=2)
    findings = corpus.check()
    assert kinds(findings) == [("info", "channel_mix"), ("warning", "sample_rate_mix")]
    (mix,) = [f for f in findings if f["kind"] == "sample_rate_mix"]
    assert mix["rows"] == [{"split": "test", "id": "narrowband", "value": 8000}]
    assert "19 at 16000 Hz, 1 at 8000 Hz" in mix["message"]
    assert rows_of(findings, "channel_mix", "info") == [("test", "stereo")]


def test_speaking_rate_outliers_and_wrong_manifest_durations(corpus):
    corpus.add(
        "train", "rushed", "this transcript is far too long for such short audio", 1.0, spk="a"
    )
    corpus.rows["valid"][1]["duration"] = 9.9
    findings = corpus.check()
    assert kinds(findings) == [
        ("warning", "duration_mismatch"),
        ("warning", "speaking_rate_outlier"),
    ]
    assert rows_of(findings, "speaking_rate_outlier", "warning") == [("train", "rushed")]
    assert rows_of(findings, "duration_mismatch", "warning") == [("valid", "valid13")]


def test_distribution_shift_between_train_and_test(corpus):
    corpus.rows["test"] = []
    for i in range(8):  # every test utterance longer than any training one, all one dialect
        text = f"{SENTENCES[i]} and then {SENTENCES[i + 8]}"
        corpus.add("test", f"shifted{i}", text, len(text) / CHARS_PER_SECOND, spk="d")
    findings = corpus.check()
    assert kinds(findings) == [("warning", "distribution_shift")] * 3
    messages = sorted(f["message"] for f in findings)
    assert messages[0].startswith(
        "test differs from train in dialect proportions: total variation 0.50"
    )
    assert messages[1].startswith("test differs from train in duration (s): KS statistic 1.00")
    assert messages[2].startswith("test differs from train in label length (characters): KS")
    # A set that differs by design (a keep test set, replay rows): the same shifts, as info.
    by_design = corpus.check(expected_shift=("test",))
    assert kinds(by_design) == [("info", "distribution_shift")] * 3
    assert sorted(f["message"] for f in by_design) == [f"{m} (by design)" for m in messages]


def test_cli_exits_non_zero_on_errors_and_reads_the_bundled_tokenizer(corpus, tmp_path, capsys):
    manifests = corpus.manifests()
    argv = ["--train", manifests["train"], "--valid", manifests["valid"], "--test"]
    argv += [manifests["test"], "--data_folder", str(corpus.folder), "--output", str(tmp_path)]
    assert check_data_cli.main(argv) == 0
    assert "0 errors, 0 warnings, 0 infos" in capsys.readouterr().out
    report = json.loads((tmp_path / "data_report.json").read_text())
    assert report["token_count"].endswith("tokenizer.json + 5 prompt/end tokens")
    (corpus.folder / "wav" / "train0.wav").unlink()
    assert check_data_cli.main(argv) == 1
    assert "error: unreadable_audio: 1 rows" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="error: .*tokenizer.json not found"):
        check_data_cli.main([*argv, "--tokenizer", str(tmp_path / "none")])


def test_tokenizer_counts_whisper_decoder_positions():
    count = check_data.tokenizer_counter(check_data.default_tokenizer())
    # " Hello world" is two tokens; up to four prompt tokens and the end token come with it.
    assert count("Hello world") == 2 + check_data.DECODER_OVERHEAD == 7
    assert check_data.estimate_tokens("Hello world") == 3 + 5  # ceil(11 / 4) + 5


def test_a_test_manifest_named_like_another_split_is_refused_before_any_check(tmp_path):
    """Its outputs would overwrite the valid split's: one line, before anything is read."""
    taken = tmp_path / "other" / "valid.csv"
    with pytest.raises(DataError) as refused:
        named_manifests(tmp_path / "train.csv", tmp_path / "valid.csv", [taken])
    assert str(refused.value) == f"test manifest {taken}: its name 'valid' is taken"
    with pytest.raises(SystemExit) as stop:
        check_data_cli.main(["--train", "t.csv", "--valid", "v.csv", "--test", str(taken)])
    assert str(stop.value) == f"error: test manifest {taken}: its name 'valid' is taken"


def test_float_samples_beyond_full_scale_and_control_characters(corpus):
    loud = corpus.folder / "wav" / "train3.wav"
    audio, rate = sf.read(loud, dtype="float32")
    sf.write(loud, audio * 15, rate, subtype="FLOAT")  # the 16-bit peak 3277/32768, x15
    valid = corpus.rows["valid"][0]
    valid["wrd"] = valid["wrd"].replace(" ", "\x00", 1)  # as long: the same speaking rate
    findings = corpus.check()
    assert kinds(findings) == [
        ("warning", "beyond_full_scale"),
        ("warning", "clipped_audio"),
        ("warning", "control_characters"),
    ]
    (beyond,) = [f for f in findings if f["kind"] == "beyond_full_scale"]
    assert beyond["message"] == (
        "1 rows' clips have float samples beyond [-1, 1], clipped when written as integers "
        "(value: peak)"
    )
    assert beyond["rows"] == [{"split": "train", "id": "train3", "value": 1.5001}]
    (control,) = [f for f in findings if f["kind"] == "control_characters"]
    assert control["rows"] == [{"split": "valid", "id": "valid12", "value": "U+0000"}]


def test_a_column_named_twice_is_an_error(corpus):
    columns = ("ID", "duration", "wav", "wrd", "spk_id", "wrd")
    manifests = corpus.manifests(columns)
    with pytest.raises(DataError) as error:
        check_format(manifests["train"])
    assert str(error.value) == (
        f"manifest {manifests['train']}, line 1, column 6: 'wrd' is the name of column 4 too"
    )
