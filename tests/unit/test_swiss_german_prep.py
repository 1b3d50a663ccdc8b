"""Data preparation of the Swiss German corpora, on tiny folders built in their released layouts:
STT4SG-350, SDS-200, SwissDial; Standard German text, German prompt, dialect kept as a group."""

import csv
import json

from conftest import sine

from whisper_finetuning.data.prepare import prepare


def write_tsv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def clip(folder, relative, seconds=1.5):
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    return sine(path, seconds)


def test_stt4sg350_layout(tmp_path):
    data = tmp_path / "STT4SG-350"
    row = {"path": "", "duration": "1.5", "sentence": "", "client_id": "", "dialect_region": ""}
    row.update(canton="", zipcode="8000", age="thirties", gender="female")
    train = [
        {**row, "path": "spk1/a1.flac", "sentence": "Das ist gut.", "client_id": "spk1"}
        | {"dialect_region": "Zürich", "canton": "ZH"},
        {**row, "path": "spk2/b1.flac", "sentence": "Wir gehen.", "client_id": "spk2"}
        | {"dialect_region": "Bern", "canton": "BE"},
        {**row, "path": "spk2/missing.flac", "sentence": "Fehlt.", "client_id": "spk2"},
    ]
    valid = [{**row, "path": "spk3/c1.flac", "sentence": "Grüezi.", "client_id": "spk3"}]
    test = [
        {**row, "path": "spk4/d1.flac", "sentence": "Test.", "client_id": "spk4"}
        | {"dialect_region": "Wallis", "canton": "VS"}
    ]
    for relative in ("spk1/a1.flac", "spk2/b1.flac", "spk3/c1.flac"):
        clip(data / "clips__train_valid-001", relative)
    clip(data / "clips__test", "spk4/d1.flac")
    write_tsv(data / "train_all.tsv", train)
    write_tsv(data / "valid.tsv", valid)
    write_tsv(data / "test.tsv", test)
    outputs = prepare("stt4sg350", data, tmp_path / "manifests")
    rows = read_rows(outputs["train"])
    assert [r["ID"] for r in rows] == ["spk1_a1", "spk2_b1"]  # the missing clip is skipped
    first = rows[0]
    assert first["wav"] == "$data_root/clips__train_valid-001/spk1/a1.flac"
    assert (first["wrd"], first["spk_id"], first["dialect"], first["canton"]) == (
        "Das ist gut.",
        "spk1",
        "Zürich",
        "ZH",
    )
    assert first["language"] == "german" and float(first["duration"]) == 1.5
    test_rows = read_rows(outputs["test"][0])
    assert test_rows[0]["wav"] == "$data_root/clips__test/spk4/d1.flac"
    assert test_rows[0]["dialect"] == "Wallis"
    assert read_rows(outputs["valid"])[0]["wrd"] == "Grüezi."


def test_sds200_layout(tmp_path):
    data = tmp_path / "SDS-200"
    row = {"clip_id": "", "clip_path": "", "sentence": "", "clip_is_valid": "True"}
    row.update(client_id="", zipcode="3000", canton="", age="twenties", gender="male")
    splits = {
        "train": [
            row
            | {"clip_id": "1", "clip_path": "u1/x.mp3", "sentence": "Eins.", "canton": "BE"}
            | {"client_id": "u1"}
        ],
        "valid": [
            row
            | {"clip_id": "2", "clip_path": "u2/y.mp3", "sentence": "Zwei.", "canton": "SG"}
            | {"client_id": "u2"}
        ],
        "test": [
            row
            | {"clip_id": "3", "clip_path": "u3/z.mp3", "sentence": "Drei.", "canton": "GR"}
            | {"client_id": "u3"}
        ],
    }
    for split, rows in splits.items():
        write_tsv(data / "splits" / f"{split}.tsv", rows)
        clip(data / "export_20211220_clips-001", rows[0]["clip_path"])
    outputs = prepare("sds200", data, tmp_path / "manifests")
    for name, path in (("train", outputs["train"]), ("test", outputs["test"][0])):
        (row_out,) = read_rows(path)
        expected = splits[name][0]
        assert row_out["wav"] == f"$data_root/export_20211220_clips-001/{expected['clip_path']}"
        assert row_out["wrd"] == expected["sentence"] and row_out["spk_id"] == expected["client_id"]
        assert row_out["dialect"] == row_out["canton"] == expected["canton"]
        assert row_out["language"] == "german"


def test_swissdial_layout_splits_by_sentence(tmp_path):
    data = tmp_path / "SwissDial"
    sentences = [
        {"id": i, "de": f"Satz Nummer {i}.", "ch_be": f"Satz Nummere {i}.", "ch_zh": f"Satz {i}."}
        for i in range(1, 21)
    ]
    data.mkdir()
    (data / "sentences_ch_de_transcribed.json").write_text(json.dumps(sentences))
    for sentence in sentences:
        clip(data / "ch_be", f"ch_be_{sentence['id']:04d}.wav", 1.0)
        clip(data / "zh", f"ch_zh_{sentence['id']:04d}.wav", 1.0)  # the short folder name
    outputs = prepare("swissdial", data, tmp_path / "manifests")
    paths = {"train": outputs["train"], "valid": outputs["valid"], "test": outputs["test"][0]}
    by_split = {split: read_rows(path) for split, path in paths.items()}
    assert sum(len(rows) for rows in by_split.values()) == 40
    for rows in by_split.values():
        for row in rows:
            index = int(row["ID"][-4:])
            assert row["wrd"] == f"Satz Nummer {index}."
            assert row["dialect"] == row["spk_id"] == row["ID"][:5]
            folder = "ch_be" if row["dialect"] == "ch_be" else "zh"
            assert row["wav"] == f"$data_root/{folder}/{row['ID']}.wav"
    ids = {split: {r["ID"][-4:] for r in rows} for split, rows in by_split.items()}
    assert not ids["train"] & ids["test"] and not ids["train"] & ids["valid"]
    dialect_text = prepare("swissdial", data, tmp_path / "dialect", text="dialect")
    row = next(r for r in read_rows(dialect_text["train"]) if r["dialect"] == "ch_be")
    assert row["wrd"] == f"Satz Nummere {int(row['ID'][-4:])}."
