"""Scaling out and surviving faults: a 2-process gloo run, kill-and-resume at several points,
a read-only or full save folder, non-finite losses. Tiny random Whisper, espeak-ng speech."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import speechbrain as sb
import torch
import yaml
from conftest import read_jsonl
from recipe_runs import (
    file_hashes,
    killed,
    make_corpus,
    one_line_error,
    recipe_args,
    run_forked,
)
from transformers import WhisperForConditionalGeneration

from whisper_finetuning.common.errors import RecipeError
from whisper_finetuning.training import checkpointing, resilience, run_lock, stopping
from whisper_finetuning.training.checkpointing import CRASH_ENV, AtomicCheckpointer, CheckpointError

EPOCHS = 2


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("encoder_cache")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, random_whisper_dir, corpus, cache):
    """An uninterrupted single-process run, with waveform augmentation: it draws random numbers."""
    exp = tmp_path_factory.mktemp("reference") / "exp"
    code, stderr = run_forked(recipe_args(random_whisper_dir, corpus, exp, cache, augment=True))
    assert code == 0, stderr[-3000:]
    return exp


def checkpoints(exp):
    return sorted((exp / "save").glob("CKPT+*"))


def final_state(exp):
    """What a finished run leaves: kept checkpoint's meta and weights, logs, test results."""
    (kept,) = checkpoints(exp)
    meta = yaml.safe_load((kept / "CKPT.yaml").read_text())
    del meta["unixtime"]
    # The kept checkpoint is an end-of-epoch one, whose data-loader positions SpeechBrain never
    # reads (``SaveableDataLoader._speechbrain_load`` returns at end of epoch): a run that
    # saves it again after a rerun (the averaged epochs) writes None where the uninterrupted
    # run wrote its exhausted iterator's count. Every other file's checksum must match.
    for name in [n for n in meta.get("sha256", {}) if n.startswith("dataloader-")]:
        del meta["sha256"][name]
    weights = torch.load(kept / "whisper.ckpt", weights_only=True)
    return {
        "meta": meta,
        "weights": weights,
        "epochs": read_jsonl(exp / "epochs.jsonl"),
        "logs": [
            (exp / name).read_text()
            for name in ("train_log.txt", "log/steps.jsonl", "log/train_utterances.jsonl")
        ],
        "test": json.loads((exp / "summary_test.json").read_text()),
    }


def steps_at_latest_checkpoint(exp):
    """Optimizer steps done when the newest checkpoint was taken (0 without one)."""
    saved = checkpoints(exp)
    if not saved:
        return 0
    latest = max(saved, key=lambda c: yaml.safe_load((c / "CKPT.yaml").read_text())["unixtime"])
    return yaml.safe_load((latest / "brain.ckpt").read_text())["optimizer_step"]


def assert_same_final_state(exp, reference):
    ours, theirs = final_state(exp), final_state(reference)
    assert ours["meta"] == theirs["meta"]
    assert ours["epochs"] == theirs["epochs"]
    assert ours["logs"] == theirs["logs"]  # no record lost or repeated by the kill
    assert ours["test"]["wer"] == theirs["test"]["wer"]
    assert ours["weights"].keys() == theirs["weights"].keys()
    for name, value in ours["weights"].items():
        assert torch.equal(value, theirs["weights"][name]), name
    assert not [p for p in (exp / "save").iterdir() if p.name.startswith(".")]


def test_reference_run_keeps_one_min_wer_checkpoint(reference):
    epochs = read_jsonl(reference / "epochs.jsonl")
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert [e["optimizer_steps"] for e in epochs] == [4, 8]
    best = min(epochs, key=lambda e: (e["WER"], e["epoch"]))
    assert final_state(reference)["meta"]["WER"] == best["WER"]


@pytest.mark.parametrize(
    "crash_at",
    [
        "train_batch:8",  # epoch 2, batch 4: batch 3 was logged after the last checkpoint
        "valid_batch:2",  # epoch 1's validation (the last train batch was checkpointed)
        "save:1",  # inside the first save: no checkpoint exists yet
        "save:3",  # inside epoch 1's end-of-epoch save, after writing its first file
    ],
)
def test_kill_and_rerun_ends_where_an_uninterrupted_run_ends(
    crash_at, reference, random_whisper_dir, corpus, cache, tmp_path
):
    args = recipe_args(random_whisper_dir, corpus, tmp_path / "exp", cache, augment=True)
    code, stderr = run_forked(args, env={CRASH_ENV: crash_at})
    assert killed(code), (code, stderr[-3000:])
    if crash_at.startswith("save"):
        (partial,) = [p for p in (tmp_path / "exp" / "save").iterdir() if p.name[0] == "."]
        assert (partial / "whisper.ckpt").exists() and not (partial / "CKPT.yaml").exists()
    done_before = steps_at_latest_checkpoint(tmp_path / "exp")
    code, stderr = run_forked(args)
    assert code == 0, stderr[-3000:]
    total = len(read_jsonl(tmp_path / "exp" / "log" / "steps.jsonl"))
    if crash_at == "save:1":  # nothing to resume from: the rerun starts over
        assert done_before == 0
    else:  # resumed: only the steps after the checkpoint ran again
        assert "Loading a checkpoint" in (tmp_path / "exp" / "log.txt").read_text()
        assert 0 < done_before < total
    assert_same_final_state(tmp_path / "exp", reference)


def test_sigterm_checkpoints_at_the_step_exits_75_and_the_rerun_resumes_exactly(
    reference, random_whisper_dir, corpus, cache, tmp_path
):
    exp = tmp_path / "exp"
    args = recipe_args(random_whisper_dir, corpus, exp, cache, augment=True)
    # SIGTERM arrives at the start of epoch 2's second batch (optimizer step 6).
    code, stderr = run_forked(args, env={CRASH_ENV: "train_batch:6:SIGTERM"})
    assert code == stopping.EXIT_STATUS[signal.SIGTERM] == 75, stderr[-3000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        "stopped by SIGTERM after optimizer step 6, checkpoint saved: rerun the same command "
        "to resume"
    )
    saved = [yaml.safe_load((c / "CKPT.yaml").read_text()) for c in checkpoints(exp)]
    assert [m["intra_epoch"] for m in saved if "intra_epoch" in m] == [True]
    assert len(read_jsonl(exp / "log" / "steps.jsonl")) == 6
    code, stderr = run_forked(args)
    assert code == 0, stderr[-3000:]
    assert "Loading a checkpoint" in (exp / "log.txt").read_text()
    assert_same_final_state(exp, reference)


def test_a_finished_run_given_more_epochs_ends_where_an_uninterrupted_run_ends(
    reference, random_whisper_dir, corpus, cache, tmp_path
):
    """One epoch, finished (test decoded, diagnosed), then the same command with two: every
    log is cut back to the kept checkpoint and the run ends as the two-epoch reference."""
    exp = tmp_path / "exp"
    args = recipe_args(random_whisper_dir, corpus, exp, cache, augment=True)
    code, stderr = run_forked(with_values(args, number_of_epochs=1))
    assert code == 0, stderr[-3000:]
    assert [e["epoch"] for e in read_jsonl(exp / "epochs.jsonl")] == [1]
    assert "test set" in (exp / "train_log.txt").read_text()  # written after the checkpoint
    code, stderr = run_forked(args)
    assert code == 0, stderr[-3000:]
    assert_same_final_state(exp, reference)


def test_a_second_run_into_a_locked_folder_fails_at_once_and_changes_no_file(
    reference, random_whisper_dir, corpus, cache
):
    lock = reference / run_lock.LOCK_FILE
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    before = file_hashes(reference)
    try:
        code, stderr = run_forked(recipe_args(random_whisper_dir, corpus, reference, cache))
    finally:
        after = file_hashes(reference)
        lock.unlink()
    assert code == 1
    assert one_line_error(stderr) == (
        f"error: {reference} is in use by another run (pid {os.getpid()} on "
        f"{socket.gethostname()}); wait for it, stop it, or pick another output_folder"
    )
    assert after == before


def test_a_dead_process_lock_is_taken_over(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    lock = tmp_path / run_lock.LOCK_FILE
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    with run_lock.holding(tmp_path):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(run_lock.FolderLocked):  # now held by a live process: this one
            run_lock.acquire(tmp_path)
    assert not lock.exists()


def test_read_only_save_folder_is_one_line_error_and_keeps_the_last_checkpoint(
    random_whisper_dir, corpus, cache, tmp_path
):
    exp = tmp_path / "exp"
    args = recipe_args(random_whisper_dir, corpus, exp, cache)
    code, _ = run_forked(args, env={CRASH_ENV: "train_batch:5"})  # epoch 2's first batch
    assert killed(code)
    before = file_hashes(exp / "save")
    (last_good,) = checkpoints(exp)
    os.chmod(exp / "save", 0o555)
    try:
        done = subprocess.run(
            [*_without_root_override(), sys.executable, "train.py", *args],
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        os.chmod(exp / "save", 0o755)
    assert done.returncode == 1
    message = one_line_error(done.stderr)
    assert message == (
        f"error: cannot save a checkpoint in {exp / 'save'}: Permission denied; "
        f"the last good checkpoint {last_good.name} is kept"
    )
    assert file_hashes(exp / "save") == before


def _without_root_override():
    """As root, permissions do not bind: drop the override capabilities (setpriv)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]


def test_two_process_gloo_run_writes_once_and_scores_the_whole_valid_set(
    random_whisper_dir, corpus, cache, tmp_path
):
    exp = tmp_path / "exp"
    args = recipe_args(random_whisper_dir, corpus, exp, cache)
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        + ["train.py", *args, "--distributed_launch", "--distributed_backend=gloo"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    epochs = read_jsonl(exp / "epochs.jsonl")
    assert [e["epoch"] for e in epochs] == [1, 2]
    # 8 utterances over 2 processes in batches of 2: 2 optimizer steps per epoch.
    assert [e["optimizer_steps"] for e in epochs] == [2, 4]
    log = (exp / "train_log.txt").read_text().splitlines()
    assert [line.split(",")[0] for line in log] == ["epoch: 1", "epoch: 2", "test set: test"]
    # Each step and utterance log holds both processes' share of the training data.
    train_ids = sorted(line.split(",")[0] for line in corpus["train"].read_text().splitlines()[1:])
    steps = read_jsonl(exp / "log" / "steps.jsonl")
    assert [(s["epoch"], s["utterances"]) for s in steps] == [(1, 4), (1, 4), (2, 4), (2, 4)]
    visits = read_jsonl(exp / "log" / "train_utterances.jsonl")
    for epoch in (1, 2):
        assert sorted(v["id"] for v in visits if v["epoch"] == epoch) == train_ids
        assert {v["seen"] for v in visits if v["epoch"] == epoch} == {epoch}
    (kept,) = checkpoints(exp)
    meta = yaml.safe_load((kept / "CKPT.yaml").read_text())
    valid_ids = [line.split(",")[0] for line in corpus["valid"].read_text().splitlines()[1:]]
    for epoch in (1, 2):
        utterances = read_jsonl(exp / "valid" / f"utterances_epoch{epoch}.jsonl")
        assert [u["id"] for u in utterances] == valid_ids  # each once, in manifest order
    brain = _single_process_valid(exp, random_whisper_dir, corpus, cache)
    single = brain.scorer
    written = read_jsonl(exp / "valid" / f"utterances_epoch{meta['epoch']}.jsonl")
    assert [u["hyp"] for u in single.utterances] == [u["hyp"] for u in written]
    assert meta["WER"] == single.summary()["wer"]
    summary = json.loads((exp / "valid" / f"summary_epoch{meta['epoch']}.json").read_text())
    assert summary == {**single.summary(meta["epoch"]), "model": None}
    # Token statistics are sums over the same utterances, added in another order.
    best = epochs[meta["epoch"] - 1]
    assert best["n_valid"] == len(valid_ids)
    for key, value in brain.valid_token_stats.summary().items():
        assert best[key] == pytest.approx(value, rel=1e-6), key


def with_values(args, **values):
    """``args`` with ``--key=value`` replaced (or added) for each of ``values``."""
    kept = [a for a in args if a.split("=", 1)[0][2:] not in values]
    return kept + [f"--{key}={value}" for key, value in values.items()]


def test_two_nodes_train_the_weights_of_one_process_with_the_same_global_batch(
    random_whisper_dir, corpus, cache, tmp_path
):
    """DDP averages gradients during backward: 2 nodes x 1 process x batches of 1 make the
    same optimizer steps as 1 process x batches of 1 x accumulation 2 (same utterances per
    step in sorted order)."""
    settings = {"number_of_epochs": 1, "batch_size": 1, "sorting": "ascending"}
    single = with_values(
        recipe_args(random_whisper_dir, corpus, tmp_path / "single", cache),
        grad_accumulation_factor=2,
        **settings,
    )
    code, stderr = run_forked(single)
    assert code == 0, stderr[-3000:]
    nodes_args = with_values(
        recipe_args(random_whisper_dir, corpus, tmp_path / "nodes", cache),
        grad_accumulation_factor=1,
        distributed_backend="gloo",
        **settings,
    )
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}"]
            + ["--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}"]
            + ["train.py", *nodes_args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    for node in nodes:
        _, stderr = node.communicate(timeout=900)
        assert node.returncode == 0, stderr[-3000:]
    ours = final_state(tmp_path / "nodes")
    reference = final_state(tmp_path / "single")
    assert [e["optimizer_steps"] for e in ours["epochs"]] == [4]
    assert [e["optimizer_steps"] for e in reference["epochs"]] == [4]
    initial = WhisperForConditionalGeneration.from_pretrained(random_whisper_dir).state_dict()
    assert ours["weights"].keys() == reference["weights"].keys()
    for name, value in ours["weights"].items():
        assert not torch.equal(value, initial[name]), f"{name} did not train"
        # Tolerance: float sums in another order (DDP's all-reduce vs accumulation).
        torch.testing.assert_close(value, reference["weights"][name], rtol=0, atol=1e-5)


def test_kill_under_torchrun_and_rerun_ends_where_an_uninterrupted_run_ends(
    random_whisper_dir, corpus, cache, tmp_path
):
    """Augmentation draws different random numbers on each process: each must get its own back."""

    def torchrun(exp, env=None):
        args = recipe_args(random_whisper_dir, corpus, exp, cache, augment=True)
        return subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
            + ["train.py", *args, "--ckpt_interval_steps=1", "--distributed_backend=gloo"],
            capture_output=True,
            text=True,
            timeout=900,
            env={**os.environ, **(env or {})},
        )

    done = torchrun(tmp_path / "reference")
    assert done.returncode == 0, done.stderr[-5000:]
    # Each process has 2 batches per epoch: killed in epoch 2, after its first batch's checkpoint.
    done = torchrun(tmp_path / "exp", {CRASH_ENV: "train_batch:4"})
    assert done.returncode != 0 and "Signal 9 (SIGKILL)" in done.stderr, done.stderr[-3000:]
    assert checkpoints(tmp_path / "exp")
    done = torchrun(tmp_path / "exp")
    assert done.returncode == 0, done.stderr[-5000:]
    assert "Loading a checkpoint" in (tmp_path / "exp" / "log.txt").read_text()
    assert_same_final_state(tmp_path / "exp", tmp_path / "reference")


def _single_process_valid(exp, whisper_dir, corpus, cache):
    """Score the valid set with the kept checkpoint in this (single) process."""
    from recipe_runs import make_brain, prepared

    from whisper_finetuning.evaluation import selection
    from whisper_finetuning.training.config import load_hparams

    overrides = {
        a[2:].split("=", 1)[0]: yaml.safe_load(a.split("=", 1)[1])
        for a in recipe_args(whisper_dir, corpus, exp, cache)[1:]
        if a.split("=", 1)[0][2:] not in ("ckpt_interval_steps", "noprogressbar")
    }
    hparams, _ = load_hparams("hparams/whisper_small.yaml", overrides)
    datasets, _ = prepared(hparams)
    run_opts = {"device": "cpu", "noprogressbar": True}
    brain = make_brain({**hparams, "output_folder": str(exp)}, run_opts)
    brain.checkpointer.recover_if_possible(importance_key=selection.min_wer_earliest)
    brain.on_stage_start(sb.Stage.VALID)
    brain.modules.eval()
    loader = brain.make_dataloader(
        datasets["valid"], sb.Stage.VALID, ckpt_prefix=None, **hparams["valid_loader_kwargs"]
    )
    for batch in loader:
        brain.evaluate_batch(batch, sb.Stage.VALID)
    return brain


# ----------------------------------------------------------------- units ------


class _Toy(resilience.ResilientBrain, sb.Brain):
    """A linear regression whose loss is NaN on the batches marked so."""

    def compute_forward(self, batch, stage):
        return self.modules.linear(batch[0])

    def compute_objectives(self, predictions, batch, stage):
        loss = ((predictions - batch[1]) ** 2).mean()
        return loss * torch.where(batch[2].any(), torch.nan, 1.0)


def _toy_fit(x, nan_marks, tmp_path, patience):
    """Fit one epoch in batches of one; returns the trained weight."""
    data = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True), torch.tensor(nan_marks))
    counter = sb.utils.epoch_loop.EpochCounter(1)
    torch.manual_seed(1)
    brain = _Toy(
        modules={"linear": torch.nn.Linear(3, 1)},
        opt_class=lambda params: torch.optim.SGD(params, lr=0.1),
        hparams={"epoch_counter": counter, "output_folder": str(tmp_path)},
        run_opts={"device": "cpu", "noprogressbar": True, "nonfinite_patience": patience},
    )
    brain.fit(counter, torch.utils.data.DataLoader(data, batch_size=1))
    return brain.modules.linear.weight.detach().clone()


def test_nonfinite_batches_are_skipped_and_counted_then_stop_the_run(tmp_path, caplog):
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    with caplog.at_level("WARNING"):
        skipping = _toy_fit(x, [False, True, False, True, False], tmp_path, patience=2)
    assert "the step is skipped (2 in epoch 1, nonfinite_patience=2)" in caplog.text
    assert "epoch 1: 2 batch(es) skipped for a non-finite loss" in caplog.text
    # Skipping a batch is exactly not having it: the finite batches alone give the same weights.
    assert torch.equal(skipping, _toy_fit(x[[0, 2, 4]], [False] * 3, tmp_path, patience=2))
    with pytest.raises(resilience.NonFiniteLossError) as stop:
        _toy_fit(x[:4], [True, True, True, False], tmp_path, patience=2)
    assert str(stop.value) == (
        "the training loss was NaN or infinite in 3 batches of epoch 1 (nonfinite_patience=2);"
        " lower lr or check the data"
    )


def test_failed_save_keeps_the_last_checkpoint_and_leaves_no_partial(tmp_path, monkeypatch):
    module = torch.nn.Linear(2, 2)
    checkpointer = AtomicCheckpointer(tmp_path / "save", recoverables={"model": module})
    good = checkpointer.save_checkpoint(meta={"WER": 1.0})
    before = file_hashes(tmp_path / "save")

    def full_disk(obj, path):
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sb.utils.checkpoints, "torch_save", full_disk)
    monkeypatch.setitem(sb.utils.checkpoints.DEFAULT_SAVE_HOOKS, torch.nn.Module, full_disk)
    with pytest.raises(CheckpointError) as failure:
        checkpointer.save_checkpoint(meta={"WER": 0.5})
    assert str(failure.value) == (
        f"cannot save a checkpoint in {tmp_path / 'save'}: No space left on device; "
        f"the last good checkpoint {good.path.name} is kept"
    )
    assert file_hashes(tmp_path / "save") == before


def test_leftovers_of_an_interrupted_save_are_ignored_and_removed(tmp_path):
    module = torch.nn.Linear(2, 2)
    checkpointer = AtomicCheckpointer(tmp_path / "save", recoverables={"model": module})
    good = checkpointer.save_checkpoint(meta={"WER": 1.0})
    partial = tmp_path / "save" / f"{checkpointing.TMP_PREFIX}CKPT+partial"
    partial.mkdir()
    (partial / "model.ckpt").write_bytes(b"half")
    assert [c.path for c in checkpointer.list_checkpoints()] == [good.path]
    AtomicCheckpointer(tmp_path / "save", recoverables={"model": module})
    assert sorted(p.name for p in (tmp_path / "save").iterdir()) == [good.path.name]


def test_launch_flag_is_implied_by_torchrun_and_refused_without_it(monkeypatch):
    from whisper_finetuning.training import distributed

    monkeypatch.setenv("RANK", "0")
    assert distributed.accept_launch_flag(["h.yaml", "--distributed_launch", "--lr=1"]) == [
        "h.yaml",
        "--lr=1",
    ]
    monkeypatch.delenv("RANK")
    with pytest.raises(RecipeError) as stop:
        distributed.accept_launch_flag(["h.yaml", "--distributed_launch"])
    assert str(stop.value).startswith("--distributed_launch needs torchrun: torchrun ")


def test_shards_interleave_back_into_set_order(monkeypatch):
    from whisper_finetuning.training import distributed

    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 3)
    shares = []
    for rank in range(3):
        monkeypatch.setattr(torch.distributed, "get_rank", lambda rank=rank: rank)
        shares.append(list(distributed.ShardSampler(range(7))))
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]  # each item once, none padded
    assert distributed.interleave_unique(shares, key=int) == list(range(7))
    # A sampler that pads with a repeat (as DistributedSampler does) is scored once per item.
    assert distributed.interleave_unique([[0, 2], [1, 0]], key=int) == [0, 1, 2]


def test_review_keeps_three_distinct_checkpoints_and_selection_keeps_one(tmp_path):
    """Min-WER, min-loss and last are different epochs here: all three survive for review."""
    from speechbrain.utils.checkpoints import ckpt_recency

    from whisper_finetuning.evaluation import selection

    checkpointer = AtomicCheckpointer(tmp_path)
    metas = [
        {"epoch": 1, "loss": 1.0, "WER": 30.0},  # lowest loss
        {"epoch": 2, "loss": 1.2, "WER": 20.0},  # lowest WER
        {"epoch": 3, "loss": 1.4, "WER": 25.0},  # last
    ]
    for meta in metas:
        checkpointer.save_checkpoint(meta=meta)

    def kept_epochs():
        return sorted(c.meta["epoch"] for c in checkpointer.list_checkpoints())

    review = [selection.min_wer_earliest, selection.min_loss_earliest, ckpt_recency]
    checkpointer.delete_checkpoints(num_to_keep=1, importance_keys=review)
    assert kept_epochs() == [1, 2, 3]
    checkpointer.delete_checkpoints(num_to_keep=1, importance_keys=[selection.min_wer_earliest])
    assert kept_epochs() == [2]
