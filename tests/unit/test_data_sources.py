"""Hugging Face datasets, Lhotse cuts and tar shards give the CSV path's manifest rows and
waveforms; their bad input gets one-line errors or counted skips."""

import csv
import hashlib
import http.client
import io
import json
import logging
import shutil
import tarfile
import threading

import numpy as np
import pytest
import soundfile as sf
import torch
from data_sources import SOURCES, build_sources, hf_splits, make_corpus, write_lhotse

from whisper_finetuning import write_shards as write_shards_tool
from whisper_finetuning.analysis.review.server import ReviewSession, Utterance, make_server
from whisper_finetuning.analysis.review.store import JudgmentLog
from whisper_finetuning.common.errors import RecipeError
from whisper_finetuning.data import audio_sources
from whisper_finetuning.data import checks as data_checks
from whisper_finetuning.data.audio import SAMPLE_RATE, audio_info, read_audio
from whisper_finetuning.data.encoder_cache import EncoderCache, load_entry
from whisper_finetuning.data.manifests import load_manifest
from whisper_finetuning.data.prepare import prepare, shards
from whisper_finetuning.data.prepare.corpora import DATA_ROOT, resolve
from whisper_finetuning.model.asr import WhisperASR

MANIFESTS = ("train", "valid", "test")
REFERENCE_KIND = {
    "hf_saved": "hf://",
    "hf_parquet": "hf://",
    "audiofolder": DATA_ROOT,
    "lhotse": "lhotse://",
    "shards": DATA_ROOT,
}


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The corpus, its CSV-path manifests, and every other source prepared into manifests."""
    root = tmp_path_factory.mktemp("sources")
    audio = root / "audio"
    rows = make_corpus(audio)
    csv_outputs = prepare("tsv_folder", audio, root / "manifests_csv")
    csv_manifests = [csv_outputs["train"], csv_outputs["valid"], *csv_outputs["test"]]
    sources = build_sources(root, rows, audio, csv_manifests)
    prepared = {}
    for source, (dataset, folder) in sources.items():
        outputs = prepare(dataset, folder, root / f"manifests_{source}")
        prepared[source] = (folder, [outputs["train"], outputs["valid"], *outputs["test"]])
    return {"audio": audio, "rows": rows, "csv": csv_manifests, "sources": prepared}


@pytest.mark.parametrize("source", SOURCES)
def test_every_source_gives_the_rows_of_the_csv_path(corpus, source):
    folder, manifests = corpus["sources"][source]
    for ours, theirs in zip(manifests, corpus["csv"], strict=True):
        ours, theirs = read_csv(ours), read_csv(theirs)
        assert len(ours) == len(theirs) > 0
        assert list(ours[0]) == ["ID", "duration", "wav", "spk_id", "wrd", "gender", "language"]
        for mine, reference in zip(ours, theirs, strict=True):
            assert mine["wav"].startswith(REFERENCE_KIND[source])
            assert {**mine, "wav": None} == {**reference, "wav": None}


@pytest.mark.parametrize("source", SOURCES)
def test_every_source_reads_the_waveforms_of_the_csv_path(corpus, source):
    """Bit-identical waveforms (44.1 kHz stereo and 8 kHz clips resampled alike); where the
    source keeps the file's bytes, the same encoder-cache key as the file."""
    folder, manifests = corpus["sources"][source]
    for ours, theirs in zip(manifests, corpus["csv"], strict=True):
        for mine, reference in zip(read_csv(ours), read_csv(theirs), strict=True):
            ref = resolve(mine["wav"], folder)
            path = resolve(reference["wav"], corpus["audio"])
            wav = read_audio(ref)
            assert wav.shape[0] > 0 and torch.equal(wav, read_audio(path))
            info, file_info = audio_info(ref), audio_info(path)
            assert (info.samplerate, info.channels, info.frames) == (
                file_info.samplerate,
                file_info.channels,
                file_info.frames,
            )
            same_bytes = audio_sources.read_bytes(ref) == (corpus["audio"] / path).read_bytes()
            assert same_bytes == (source != "lhotse")  # Lhotse hands on decoded samples


@pytest.mark.parametrize("source", SOURCES)
def test_data_checks_find_what_they_find_on_the_csv_path(corpus, source):
    """Rates, channels, durations and hashes scanned through the references: the same
    findings (mixed sample rates, a stereo clip, ...) for the same rows."""
    folder, manifests = corpus["sources"][source]
    ours = data_checks.run_checks(dict(zip(MANIFESTS, manifests, strict=True)), folder)
    theirs = data_checks.run_checks(
        dict(zip(MANIFESTS, corpus["csv"], strict=True)), corpus["audio"]
    )
    assert {f["kind"] for f in theirs} >= {"sample_rate_mix", "channel_mix"}
    assert ours == theirs


def test_the_encoder_cache_serves_every_source(corpus, random_whisper_dir, tmp_path):
    """A clip in a dataset or shard has the cache entry of the file it came from (same bytes);
    Lhotse's re-encoded clips get their own entries, with the same encoder outputs."""
    cache = EncoderCache(tmp_path / "cache", WhisperASR(str(random_whisper_dir)))
    reference = cache.prepare(load_manifest(corpus["csv"][0], corpus["audio"]))
    for source in SOURCES:
        folder, manifests = corpus["sources"][source]
        entries = cache.prepare(load_manifest(manifests[0], folder))
        assert entries.keys() == reference.keys()
        assert (entries == reference) == (source != "lhotse"), source
        for utt_id, entry in entries.items():
            assert torch.equal(load_entry(entry), load_entry(reference[utt_id])), source


def test_hf_copy_audio_writes_wavs_that_read_the_same(corpus, tmp_path):
    folder, _ = corpus["sources"]["hf_saved"]
    outputs = prepare("hf", folder, tmp_path, copy_audio=True)
    rows = read_csv(outputs["train"])
    reference = read_csv(corpus["csv"][0])
    assert [r["ID"] for r in rows] == [r["ID"] for r in reference]
    for mine, theirs in zip(rows, reference, strict=True):
        assert mine["wav"].startswith(str(tmp_path / "audio" / "train"))
        assert sf.info(mine["wav"]).samplerate == SAMPLE_RATE
        assert torch.equal(
            read_audio(mine["wav"]), read_audio(resolve(theirs["wav"], corpus["audio"]))
        )


def test_audiofolder_with_one_metadata_jsonl_is_split_train(corpus, tmp_path):
    train = [r for r in corpus["rows"] if r["split"] == "train"]
    with open(tmp_path / "metadata.jsonl", "w") as f:
        for r in train:
            (tmp_path / r["path"]).write_bytes((corpus["audio"] / r["path"]).read_bytes())
            f.write(json.dumps({"file_name": r["path"], "text": r["text"], "gender": r["gender"]}))
            f.write("\n")
    outputs = prepare("hf", tmp_path, tmp_path / "out", valid_splits="train", test_splits=[])
    rows = read_csv(outputs["train"])
    reference = read_csv(corpus["csv"][0])
    assert [(r["ID"], r["wav"], r["wrd"], r["gender"], r["duration"]) for r in rows] == [
        (r["ID"], r["wav"], r["wrd"], r["gender"], r["duration"]) for r in reference
    ]
    with pytest.raises(ValueError, match=r"has no split 'validation' \(splits: train\)"):
        prepare("hf", tmp_path, tmp_path / "other")


def test_hf_options_name_the_columns(corpus, tmp_path):
    """Set columns replace the detected ones; an ID column replaces the file names."""
    folder, _ = corpus["sources"]["hf_saved"]
    outputs = prepare(
        "hf",
        folder,
        tmp_path,
        id_column="sentence",
        text_column="speaker_id",
        speaker_column="gender",
        group_columns=[],
        train_splits=["test"],
        valid_splits=["validation"],
        test_splits=["train"],
    )
    rows = read_csv(outputs["train"])
    reference = [r for r in corpus["rows"] if r["split"] == "test"]
    assert list(rows[0]) == ["ID", "duration", "wav", "spk_id", "wrd", "language"]
    assert [(r["ID"], r["wrd"], r["spk_id"]) for r in rows] == [
        (r["text"], r["speaker"], r["gender"]) for r in reference
    ]
    assert [r["wav"] for r in rows] == [f"hf://{DATA_ROOT}#test/audio/{i}" for i in range(2)]


@pytest.mark.parametrize(
    ("source", "options", "message"),
    [
        ("hf_saved", {"text_column": "words"}, "has no text column 'words' (columns: audio, "),
        ("hf_saved", {"audio_column": "speech"}, "has no audio column 'speech'"),
        ("hf_saved", {"valid_splits": ["dev"]}, "has no split 'dev' (splits: train, validation"),
        ("hf_parquet", {"test_splits": ["eval"]}, "has no split 'eval' (splits: train, "),
        ("hf_saved", {"group_columns": ["accent"]}, "has no group column 'accent'"),
        ("audiofolder", {"speaker_column": "client_id"}, "has no speaker column 'client_id'"),
        ("audiofolder", {"valid_splits": ["dev"]}, "has no split 'dev' (splits: test, train, "),
        ("lhotse", {"valid_splits": ["valid"]}, "has no *cuts_valid.jsonl.gz (cut files: "),
        ("shards", {"test_splits": ["eval"]}, "no shards for split 'eval'"),
        ("shards", {"text_field": "sentence"}, "has the text field 'sentence' (fields: text, "),
    ],
)
def test_wrong_columns_and_missing_splits_are_one_line_errors(
    corpus, source, options, message, tmp_path
):
    dataset = "hf" if source in ("hf_saved", "hf_parquet", "audiofolder") else source
    folder, _ = corpus["sources"][source]
    with pytest.raises(ValueError) as error:
        prepare(dataset, folder, tmp_path, **options)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not list(tmp_path.iterdir())  # checked before any manifest is written


def test_a_folder_without_a_readable_dataset_is_a_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken" / "data").mkdir(parents=True)
    (tmp_path / "broken" / "data" / "train-00000-of-00001.parquet").write_bytes(b"junk")
    with pytest.raises(ValueError) as empty:
        prepare("hf", tmp_path / "empty", tmp_path / "manifests")
    with pytest.raises(ValueError) as broken:
        prepare("hf", tmp_path / "broken", tmp_path / "manifests")
    assert str(empty.value) == (
        f"no Hugging Face dataset in {tmp_path / 'empty'}: no save_to_disk files, parquet/arrow "
        "files or audiofolder metadata.csv/metadata.jsonl"
    )
    assert str(broken.value).startswith(
        f"cannot load the Hugging Face dataset in {tmp_path / 'broken'}: "
    )
    assert "\n" not in str(broken.value)


def _small_hf_dataset(folder, parquet):
    """A three-split dataset of silent clips: ``save_to_disk`` or Hub-style parquet files."""
    from datasets import Audio, Dataset, DatasetDict

    clip = io.BytesIO()
    sf.write(clip, np.zeros(1600, "float32"), SAMPLE_RATE, format="WAV")

    def split(n):
        audio = [{"bytes": clip.getvalue(), "path": f"u{i}.wav"} for i in range(n)]
        rows = {"audio": audio, "text": [f"row {i}" for i in range(n)]}
        return Dataset.from_dict(rows).cast_column("audio", Audio())

    splits = DatasetDict({"train": split(4), "validation": split(2), "test": split(2)})
    if not parquet:
        splits.save_to_disk(str(folder))
        return folder / "train" / "data-00000-of-00001.arrow"
    (folder / "data").mkdir(parents=True)
    for name, rows in splits.items():
        rows.to_parquet(str(folder / "data" / f"{name}-00000-of-00001.parquet"))
    return folder / "data" / "train-00000-of-00001.parquet"


def _arrow_reason(path):
    import pyarrow as pa

    with pytest.raises((OSError, pa.ArrowInvalid)) as error, pa.memory_map(str(path)) as source:
        pa.ipc.open_stream(source).read_all()
    return str(error.value)


NOT_PARQUET = (
    "Parquet magic bytes not found in footer. Either the file is corrupted or this is not a "
    "parquet file."
)


@pytest.mark.parametrize("form", ["arrow", "parquet"])
@pytest.mark.parametrize("damage", ["cut", "garbage"])
def test_a_damaged_hf_data_file_is_one_line_naming_it(tmp_path, form, damage):
    from whisper_finetuning.data.prepare import prepare_or_fail

    folder = tmp_path / "hf"
    data_file = _small_hf_dataset(folder, parquet=form == "parquet")
    if damage == "cut":
        data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 2])
    else:
        data_file.write_bytes(b"junk" * 100)
    before = hashlib.sha256(data_file.read_bytes()).hexdigest()
    audio_sources.hf_split.cache_clear()
    with pytest.raises(RecipeError) as error:
        prepare_or_fail("hf", folder, tmp_path / "manifests")
    if form == "parquet":
        reason = NOT_PARQUET
    elif damage == "garbage":
        reason = "Expected to read 1802401130 metadata bytes, but only read 396"
    else:
        reason = _arrow_reason(data_file)  # pyarrow's bytes expected and found
        assert reason.startswith("Expected to be able to read ")
    assert f"error: {error.value}" == (
        f"error: data preparation failed: cannot load the Hugging Face dataset in {folder}: "
        f"{data_file} is damaged ({reason}); write or download it again"
    )
    assert hashlib.sha256(data_file.read_bytes()).hexdigest() == before
    assert not (tmp_path / "manifests").exists() or not list((tmp_path / "manifests").iterdir())


def skip_summaries(caplog):
    return [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]


def test_undecodable_hf_audio_is_a_counted_skip(corpus, tmp_path, caplog):
    from datasets import Audio, Dataset, DatasetDict

    train = hf_splits(corpus["rows"], corpus["audio"])["train"].cast_column(
        "audio", Audio(decode=False)
    )
    broken = train.to_dict()
    broken["audio"][1] = {"bytes": b"not audio at all", "path": "broken.wav"}
    broken["audio"][2] = None  # a row without audio
    splits = DatasetDict({"train": Dataset.from_dict(broken).cast_column("audio", Audio())})
    splits["validation"] = splits["test"] = splits["train"]
    splits.save_to_disk(str(tmp_path / "hf"))
    with caplog.at_level(logging.WARNING):
        outputs = prepare("hf", tmp_path / "hf", tmp_path / "manifests")
    assert [r["ID"] for r in read_csv(outputs["train"])] == ["u0", "u3", "u4", "u5"]
    assert "skipped 2 rows: 0 missing audio, 2 unreadable audio" in skip_summaries(caplog)[0]


def test_undecodable_and_missing_shard_audio_are_counted_skips(corpus, tmp_path, caplog):
    members = [
        ("a.flac", b"not flac"),
        ("a.json", b'{"text": "one"}'),
        ("b.json", b'{"text": "two"}'),
    ]
    members += [("c.wav", (corpus["audio"] / "u0.wav").read_bytes()), ("c.txt", b"three")]
    for split in ("train", "valid", "test"):
        with tarfile.open(tmp_path / f"{split}-000000.tar", "w") as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    with caplog.at_level(logging.WARNING):
        outputs = prepare("shards", tmp_path, tmp_path / "manifests")
    (row,) = read_csv(outputs["train"])
    assert (row["ID"], row["wrd"], row["duration"]) == ("c", "three", "1.200")
    assert torch.equal(
        read_audio(resolve(row["wav"], tmp_path)), read_audio(corpus["audio"] / "u0.wav")
    )
    assert "skipped 2 rows: 1 missing audio, 1 unreadable audio" in skip_summaries(caplog)[0]


def test_compressed_shards_are_refused_with_a_hint(tmp_path):
    (tmp_path / "train-000000.tar.gz").write_bytes(b"")
    with pytest.raises(ValueError, match="train-000000.tar.gz is compressed: decompress it"):
        prepare("shards", tmp_path, tmp_path / "manifests")


def test_lhotse_cut_over_30_s_is_split_by_its_supervisions(tmp_path, caplog):
    from lhotse import CutSet, MonoCut, Recording, SupervisionSegment

    noise = np.random.default_rng(1).standard_normal(40 * SAMPLE_RATE) * 0.1
    sf.write(tmp_path / "long.wav", noise.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
    recording = Recording.from_file(tmp_path / "long.wav", recording_id="long")
    spans = [("first", 1.0, 9.5, "part one"), ("second", 12.0, 4.25, "part two")]
    supervisions = [
        SupervisionSegment(id=i, recording_id="long", start=s, duration=d, text=t, speaker="x")
        for i, s, d, t in spans
    ]
    cut = MonoCut(id="long", start=0, duration=40.0, channel=0, recording=recording)
    cut.supervisions = supervisions
    for split in ("train", "dev", "test"):
        CutSet.from_cuts([cut]).to_file(tmp_path / f"cuts_{split}.jsonl.gz")
    outputs = prepare("lhotse", tmp_path, tmp_path / "manifests")
    rows = read_csv(outputs["train"])
    assert [(r["ID"], r["duration"], r["spk_id"], r["wrd"]) for r in rows] == [
        ("first", "9.500", "x", "part one"),
        ("second", "4.250", "x", "part two"),
    ]
    assert rows[0]["wav"] == f"lhotse://{DATA_ROOT}/cuts_train.jsonl.gz#long/first"
    whole = read_audio(tmp_path / "long.wav")
    for row, (_, start, duration, _) in zip(rows, spans, strict=True):
        first = round(start * SAMPLE_RATE)
        expected = whole[first : first + round(duration * SAMPLE_RATE)]
        assert torch.equal(read_audio(resolve(row["wav"], tmp_path)), expected)


def test_unreadable_lhotse_recording_is_a_counted_skip(corpus, tmp_path, caplog):
    copied = tmp_path / "audio"
    copied.mkdir()
    for path in corpus["audio"].glob("*.wav"):
        copied.joinpath(path.name).write_bytes(path.read_bytes())
    write_lhotse(corpus["rows"], copied, tmp_path / "cuts")
    (copied / "u3.wav").write_bytes(b"RIFF broken")
    with caplog.at_level(logging.WARNING):
        outputs = prepare("lhotse", tmp_path / "cuts", tmp_path / "manifests")
    assert [r["ID"] for r in read_csv(outputs["train"])] == ["u0", "u1", "u2", "u4", "u5"]
    assert "skipped 1 rows: 0 missing audio, 1 unreadable audio" in skip_summaries(caplog)[0]


def test_write_shards_is_deterministic_splits_by_size_and_never_overwrites(corpus, tmp_path):
    train = corpus["csv"][0]
    first = shards.write_shards([train], corpus["audio"], tmp_path / "a", shard_mb=0)
    again = shards.write_shards([train], corpus["audio"], tmp_path / "b", shard_mb=0)
    assert first == again == {"train": {"shards": 6, "utterances": 6, "skipped": {}}}
    for path in sorted((tmp_path / "a").iterdir()):
        assert (
            hashlib.sha256(path.read_bytes()).digest()
            == hashlib.sha256((tmp_path / "b" / path.name).read_bytes()).digest()
        )
    with tarfile.open(tmp_path / "a" / "train-000000.tar") as tar:
        assert tar.getnames() == ["u0.wav", "u0.json"]
        metadata = tar.extractfile("u0.json").read().decode()
    assert (
        metadata
        == '{"text": "open the window", "speaker": "spk0", "gender": "male", "language": "en"}'
    )
    with pytest.raises(ValueError, match="train-000000.tar exists: choose an empty"):
        shards.write_shards([train], corpus["audio"], tmp_path / "a")


def test_write_shards_tool_prints_counts_and_one_line_errors(corpus, tmp_path, capsys):
    write_shards_tool.main(
        [str(m) for m in corpus["csv"]]
        + ["--data_folder", str(corpus["audio"]), "--output", str(tmp_path / "out")]
    )
    assert capsys.readouterr().out.splitlines() == [
        "train: 6 utterances in 1 shards",
        "valid: 2 utterances in 1 shards",
        "test: 2 utterances in 1 shards",
    ]
    dotted = tmp_path / "dotted.csv"
    dotted.write_text("ID,duration,wav,wrd\nu.1,1.0,$data_root/u0.wav,hello\n")
    with pytest.raises(SystemExit) as stop:
        write_shards_tool.main([str(dotted), "--output", str(tmp_path / "other")])
    assert str(stop.value.code).startswith("error: manifest ") and "ID 'u.1' has a '.'" in str(
        stop.value.code
    )


@pytest.fixture
def review_server(corpus, tmp_path):
    """The review server over the first test clip of each source."""
    utterances = []
    for source in SOURCES:
        folder, manifests = corpus["sources"][source]
        row = read_csv(manifests[2])[0]
        utterances.append(
            Utterance(source, row["wrd"], {1: "", 2: ""}, {}, resolve(row["wav"], folder))
        )
    session = ReviewSession(utterances, [1, 2], JudgmentLog(tmp_path / "judgments.jsonl"), "exp")
    httpd = make_server(session, 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_review_page_serves_the_audio_of_every_source(corpus, review_server):
    expected = read_audio(corpus["audio"] / "u8.wav")
    for source in SOURCES:
        connection = http.client.HTTPConnection("127.0.0.1", review_server, timeout=10)
        connection.request("GET", f"/audio/{source}")
        response = connection.getresponse()
        body = response.read()
        connection.close()
        assert (response.status, response.getheader("Content-Type")) == (200, "audio/wav"), source
        audio, rate = sf.read(io.BytesIO(body), dtype="float32")
        assert rate == SAMPLE_RATE and torch.equal(torch.from_numpy(audio), expected), source


def test_a_truncated_shard_is_one_line_naming_it(corpus, tmp_path):
    wav = (corpus["audio"] / "u0.wav").read_bytes()
    shard = tmp_path / "train-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in (("a.wav", wav), ("a.txt", b"one")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    shard.write_bytes(shard.read_bytes()[:2000])  # a's header (512 bytes) and 1,488 of its data
    with pytest.raises(ValueError) as refused:
        prepare("shards", tmp_path, tmp_path / "manifests")
    assert str(refused.value) == (
        f"{shard} is truncated: a.wav ends at byte {512 + len(wav)}, the file has 2000 bytes; "
        "write it again (write_shards)"
    )


def test_a_truncated_lhotse_cut_file_is_one_line_naming_it(corpus, tmp_path):
    folder = shutil.copytree(corpus["sources"]["lhotse"][0], tmp_path / "lhotse")
    (cuts,) = folder.glob("*cuts_train.jsonl.gz")
    cuts.write_bytes(cuts.read_bytes()[:100])
    with pytest.raises(ValueError) as refused:
        prepare("lhotse", folder, tmp_path / "manifests")
    assert str(refused.value) == (
        f"{cuts} is not a readable Lhotse CutSet: Compressed file ended before the "
        "end-of-stream marker was reached"
    )
