"""Checksums on what the recipe reads back: checkpoint files, encoder-cache entries, model
folders; a checkpoint loads only whole and finite. Tiny random Whisper, no training run."""

import hashlib
import logging
import shutil

import numpy as np
import pytest
import torch
import yaml
from conftest import sine, speak, write_manifest
from speechbrain.utils.epoch_loop import EpochCounter

from whisper_finetuning.common.checksums import SUMS_FILE, first_damaged, read_sums, write_sums
from whisper_finetuning.data import manifests as dataio
from whisper_finetuning.data.encoder_cache import EncoderCache
from whisper_finetuning.model.asr import WhisperASR
from whisper_finetuning.training.checkpointing import (
    CHECKSUMS_KEY,
    AtomicCheckpointer,
    CheckpointError,
    DamagedCheckpointFile,
)

ABC_SHA256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
DAMAGED = "is damaged (its SHA-256 differs from the one recorded when it was written)"


def test_sums_file_lists_every_file_as_sha256sum_writes_it(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"abc")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"")
    write_sums(tmp_path)
    assert (tmp_path / SUMS_FILE).read_text() == (
        f"{ABC_SHA256}  a.txt\n{EMPTY_SHA256}  sub/b.bin\n"
    )
    sums = read_sums(tmp_path)
    assert first_damaged(tmp_path, sums) is None
    (tmp_path / "a.txt").write_bytes(b"abd")
    assert first_damaged(tmp_path, sums) == (tmp_path / "a.txt", DAMAGED)
    (tmp_path / "a.txt").unlink()
    assert first_damaged(tmp_path, sums) == (tmp_path / "a.txt", "is missing")


@pytest.fixture(scope="module")
def model(random_whisper_dir):
    return WhisperASR(str(random_whisper_dir), trainable_patterns=["encoder_attn"])


def trainable(model):
    return {n: p.detach().clone() for n, p in model.model.named_parameters() if p.requires_grad}


def test_a_checkpoint_must_hold_every_trainable_parameter_and_only_finite_values(model, tmp_path):
    saved = trainable(model)
    names = list(saved)
    n = len(names)
    with pytest.raises(DamagedCheckpointFile) as empty:
        model.load_trainable({}, "C")
    assert str(empty.value) == (
        f"checkpoint C lacks {n} of the model's {n} trainable parameters (e.g. {names[0]})"
    )
    half = dict(list(saved.items())[: n // 2])
    with pytest.raises(DamagedCheckpointFile) as partial:
        model.load_trainable(half, "C")
    assert str(partial.value) == (
        f"checkpoint C lacks {n - n // 2} of the model's {n} trainable parameters "
        f"(e.g. {names[n // 2]})"
    )
    nan = {**saved, names[3]: torch.full_like(saved[names[3]], float("nan"))}
    with pytest.raises(DamagedCheckpointFile) as nonfinite:
        model.load_trainable(nan, "C")
    assert str(nonfinite.value) == f"checkpoint C holds NaN or inf values (in {names[3]})"
    assert all(torch.equal(v, saved[k]) for k, v in trainable(model).items())  # nothing copied
    (tmp_path / "half.ckpt").write_bytes(b"\x80\x04garbage")
    with pytest.raises(CheckpointError, match=f"cannot read checkpoint {tmp_path}/half.ckpt"):
        model.load_trained(tmp_path / "half.ckpt")


@pytest.fixture
def saved(model, tmp_path):
    """A saved checkpoint of the model and an epoch counter; returns (checkpointer, folder)."""
    counter = EpochCounter(3)
    checkpointer = AtomicCheckpointer(tmp_path / "save", {"whisper": model, "counter": counter})
    checkpoint = checkpointer.save_checkpoint(meta={"WER": 10.0})
    return checkpointer, checkpoint.path


def test_checkpoint_files_carry_their_sha256_and_equal_content_hashes_equally(saved, model):
    checkpointer, folder = saved
    meta = yaml.safe_load((folder / "CKPT.yaml").read_text())
    assert meta[CHECKSUMS_KEY] == {
        name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
        for name in ("counter.ckpt", "whisper.ckpt")
    }
    again = checkpointer.save_checkpoint(meta={"WER": 9.0})  # same weights, same bytes
    assert (again.path / "whisper.ckpt").read_bytes() == (folder / "whisper.ckpt").read_bytes()
    checkpointer.load_checkpoint(checkpointer.find_checkpoint(min_key="WER"))


def damage_cases(model):
    """(file, how to damage it, the refusal after the file's path)."""
    other = {n: v + 1 for n, v in trainable(model).items()}  # well-formed, other contents
    return [
        ("whisper.ckpt", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), DAMAGED),
        ("whisper.ckpt", lambda p: p.write_bytes(b""), "is empty"),
        ("whisper.ckpt", lambda p: p.unlink(), "is missing"),
        ("whisper.ckpt", lambda p: torch.save(other, p), DAMAGED),
        ("whisper.ckpt", lambda p: torch.save({}, p), DAMAGED),
        ("counter.ckpt", lambda p: p.write_text("garbage"), DAMAGED),
    ]


def test_a_damaged_missing_or_replaced_checkpoint_file_is_refused_naming_it(saved, model):
    checkpointer, folder = saved
    pristine = folder.with_name("pristine")
    shutil.copytree(folder, pristine)
    before = trainable(model)
    advice = (
        f"move {folder.name} out of {folder.parent} to resume from the previous kept "
        "checkpoint, or start a new --output_folder (--init_from=EXPERIMENT starts it from "
        "another run's checkpoint)"
    )
    for name, damage, why in damage_cases(model):
        shutil.rmtree(folder)
        shutil.copytree(pristine, folder)
        damage(folder / name)
        (checkpoint,) = checkpointer.list_checkpoints()
        with pytest.raises(CheckpointError) as refused:
            checkpointer.load_checkpoint(checkpoint)
        assert str(refused.value) == f"{folder / name} {why}; {advice}", name
        assert all(torch.equal(v, before[k]) for k, v in trainable(model).items())
    (folder / "CKPT.yaml").write_bytes(b"\x00\xff: [")
    with pytest.raises(CheckpointError) as garbage:
        checkpointer.list_checkpoints()
    assert str(garbage.value) == f"{folder / 'CKPT.yaml'} is not a checkpoint's metadata; {advice}"


@pytest.mark.slow
def test_damaged_cache_entries_are_recomputed_and_counted(random_whisper_dir, tmp_path, caplog):
    texts = ["A cup of tea, please.", "Turn left at the bridge.", "Snow covered the hills."]
    rows = [
        {"ID": f"u{i}", "duration": 1.0, "wav": speak(t, tmp_path / f"u{i}.wav"), "wrd": t}
        for i, t in enumerate(texts)
    ]
    dataset = dataio.load_manifest(write_manifest(tmp_path / "m.csv", rows), tmp_path)
    cache = EncoderCache(tmp_path / "cache", WhisperASR(str(random_whisper_dir)))
    entries = cache.prepare(dataset)
    written = {u: path.read_bytes() for u, path in entries.items()}
    frames = np.load(entries["u0"]).shape[0]
    assert frames == 1500
    np.save(entries["u0"], np.full_like(np.load(entries["u0"]), np.nan))  # NaN, same shape
    np.save(entries["u1"], np.load(entries["u1"])[:10])  # 10 frames instead of 1,500
    entries["u2"].write_bytes(written["u2"][:1000])  # truncated
    with caplog.at_level(logging.INFO):
        again = cache.prepare(dataset)
    assert again == entries
    assert f"encoder cache: 3 damaged entries recomputed (e.g. {entries['u0']})" in caplog.messages
    assert "encoder cache: computing 3 of 3 utterances" in caplog.messages
    assert {u: path.read_bytes() for u, path in again.items()} == written
    caplog.clear()
    with caplog.at_level(logging.INFO):
        cache.prepare(dataset)
    assert not [m for m in caplog.messages if m.startswith("encoder cache")]


def test_a_cache_entry_damaged_during_a_run_is_recomputed_and_counted_never_used(
    random_whisper_dir, tmp_path, caplog
):
    """The start's check passed; then entries are damaged between two reads of the same
    cache (as a loader reads them epoch after epoch): each read checks again."""
    rows = [
        {"ID": f"u{i}", "duration": 1.0, "wav": str(sine(tmp_path / f"u{i}.wav", 0.5 + i / 4))}
        for i in range(3)
    ]
    for row in rows:
        row["wrd"] = "a tone"
    dataset = dataio.load_manifest(write_manifest(tmp_path / "m.csv", rows), tmp_path)
    cache = EncoderCache(tmp_path / "cache", WhisperASR(str(random_whisper_dir)))
    entries = cache.prepare(dataset)
    written = {u: path.read_bytes() for u, path in entries.items()}
    first = {row["ID"]: cache.load(entries[row["ID"]], row["wav"]) for row in rows}
    assert cache.damaged_reads == 0
    np.save(entries["u0"], np.full_like(np.load(entries["u0"]), np.nan))  # NaN, same shape
    entries["u1"].write_bytes(written["u2"])  # another entry: a well-formed, wrong file
    entries["u2"].write_bytes(written["u2"][:1000])  # truncated
    caplog.clear()  # prepare's own lines (logged when an earlier test left the level at INFO)
    with caplog.at_level(logging.WARNING):
        second = {row["ID"]: cache.load(entries[row["ID"]], row["wav"]) for row in rows}
    assert cache.damaged_reads == 3
    assert caplog.messages == [
        f"encoder cache: {entries['u0']} was damaged during the run: recomputed (1 such entry "
        "in this process)",
        f"encoder cache: {entries['u1']} was damaged during the run: recomputed (2 such entries "
        "in this process)",
        f"encoder cache: {entries['u2']} was damaged during the run: recomputed (3 such entries "
        "in this process)",
    ]
    for utt_id, hidden in second.items():  # what an undamaged read gives, bit for bit
        assert torch.isfinite(hidden).all() and torch.equal(hidden, first[utt_id]), utt_id
    assert {u: path.read_bytes() for u, path in entries.items()} == written


def test_a_damaged_mwer_init_checkpoint_is_one_line_naming_it(saved, tmp_path):
    """Checked when the run is set up, before any training: against its recorded SHA-256, or
    (a checkpoint without one) by reading it."""
    from whisper_finetuning.common.errors import RecipeError
    from whisper_finetuning.training.mwer import init_checkpoint

    checkpointer, folder = saved
    model_file = folder / "whisper.ckpt"
    assert init_checkpoint(str(folder), checkpointer) == model_file
    advice = "set mwer_init to another checkpoint folder or kept epoch"
    model_file.write_bytes(b"garbage, not a torch file")
    with pytest.raises(RecipeError) as damaged:
        init_checkpoint(str(folder), checkpointer)
    assert f"error: {damaged.value}" == f"error: mwer_init: {model_file} {DAMAGED}; {advice}"
    meta = yaml.safe_load((folder / "CKPT.yaml").read_text())
    del meta[CHECKSUMS_KEY]  # a checkpoint written before the checksums
    (folder / "CKPT.yaml").write_text(yaml.dump(meta))
    with pytest.raises(RecipeError) as unreadable:
        init_checkpoint(str(folder), checkpointer)
    assert f"error: {unreadable.value}" == (
        f"error: mwer_init: cannot read checkpoint {model_file}: not a torch file of tensors; "
        f"{advice}"
    )
