"""``sharding: fsdp`` on CPU (gloo): FSDP2 over 2 processes trains the weights one process
trains on the same global batch; its consolidated checkpoint loads into a plain model and
resumes exactly. ``tests/fsdp_worker.py`` is the torchrun side."""

import os
import subprocess
import sys
from pathlib import Path

import fsdp_worker as worker
import pytest
import torch

pytestmark = pytest.mark.slow  # torchrun

# FSDP's reduce-scatter sums the two processes' gradients in another order than one process's
# backward over the whole batch: float32 rounding, amplified by AdamW's normalisation over
# 2 steps of lr 1e-2 (measured: 1.1e-5). Training moves every parameter by more than 100x this.
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory, random_whisper_dir):
    """What 2 FSDP processes wrote (see ``fsdp_worker``)."""
    out = tmp_path_factory.mktemp("fsdp")
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        + [str(root / "tests" / "fsdp_worker.py"), str(random_whisper_dir), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(root)},  # this checkout's package
    )
    assert done.returncode == 0, done.stderr[-5000:]
    return out


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_two_fsdp_processes_train_the_weights_of_one_process(sharded_run, random_whisper_dir):
    saved = load(sharded_run / "whisper.ckpt")
    single = worker.model(random_whisper_dir)
    initial = worker.full_parameters(single)
    opt = worker.optimizer(single)
    for step in range(worker.STEPS):
        worker.train_step(single, opt, step, list(range(worker.ROWS)))
    trained = worker.full_parameters(single)
    assert saved.keys() == trained.keys() and len(saved) == 88  # every parameter trains
    differences = [float((saved[name] - trained[name]).abs().max()) for name in saved]
    assert max(differences) < TOLERANCE
    moved = [float((trained[name] - initial[name]).abs().max()) for name in saved]
    assert min(moved) > 100 * TOLERANCE


def test_consolidated_checkpoint_loads_into_a_plain_model(sharded_run, random_whisper_dir):
    reference = load(sharded_run / "reference.pt")
    saved = load(sharded_run / "whisper.ckpt")
    assert saved.keys() == reference["params"].keys()
    plain = worker.model(random_whisper_dir)
    plain.load_trained(sharded_run / "whisper.ckpt")
    params = dict(plain.model.named_parameters())
    for name, value in reference["params"].items():
        assert torch.equal(saved[name], value), name
        assert torch.equal(params[name], value), name
    # The optimizer file is a plain AdamW's state_dict(): numbered parameters, full moments.
    opt = worker.optimizer(plain)
    opt.load_state_dict(load(sharded_run / "optimizer.ckpt"))
    names = {id(p): n for n, p in plain.model.named_parameters()}
    assert len(opt.state) == len(reference["moments"]) == 88
    for param, state in opt.state.items():
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(state[key], reference["moments"][names[id(param)]][key])


def test_a_sharded_model_resumed_from_the_checkpoint_takes_the_same_next_step(sharded_run):
    saved = load(sharded_run / "whisper.ckpt")
    resumed = load(sharded_run / "resumed.pt")
    for name, value in saved.items():
        assert torch.equal(resumed["loaded"][name], value), name
        assert not torch.equal(resumed["went_on"][name], value), name
        assert torch.equal(resumed["resumed"][name], resumed["went_on"][name]), name
