"""python -m whisper_finetuning.sweep: trials in their folders, the test set decoded for the
chosen trial only, the winner's curse and the warning signs, a killed sweep resumed, two
processes sharing one SQLite study, and the spec's one-line errors.

The fast tests run a stand-in for train.py (``sweep_stub.py``, what a finished run leaves, in
a second); the slow one runs train.py with a tiny random Whisper.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import require_espeak
from recipe_runs import make_corpus

from whisper_finetuning import sweep
from whisper_finetuning.sweeps import trials

STUB = Path(__file__).with_name("sweep_stub.py")
HEARTBEAT = 1  # seconds; a killed trial is stale after twice this


def write_spec(root, lrs, recipe=STUB, **extra):
    spec = {
        "hparams": "hparams/whisper_small.yaml",
        "output_folder": str(root / "sweep"),
        "sampler": "grid",
        "heartbeat_seconds": HEARTBEAT,
        "recipe": str(recipe),
        "space": {"lr": lrs},
        **extra,
    }
    path = root / "spec.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def start_sweep(spec, seconds, seed=None):
    argv = [sys.executable, "-m", "whisper_finetuning.sweep", str(spec)]
    env = {**os.environ, "STUB_SECONDS": str(seconds), "PYTHONPATH": os.getcwd()}
    return subprocess.Popen(
        argv + ([] if seed is None else ["--seed", str(seed)]),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def starts(folder):
    path = Path(folder) / "starts.txt"
    return path.read_text().splitlines() if path.exists() else []


def trainings(folder):
    return [s for s in starts(folder) if s.endswith("decode_test_sets=False")]


def stored_trials(root):
    storage = f"sqlite:///{root / 'sweep' / 'study.db'}"
    return optuna.load_study(study_name="sweep", storage=storage).get_trials()


def test_two_processes_share_one_sqlite_study_and_run_distinct_trials(tmp_path):
    spec = write_spec(tmp_path, [0.2, 0.4, 0.6, 0.8])
    first, second = start_sweep(spec, 1, seed=1), start_sweep(spec, 1, seed=2)
    for process in (first, second):
        assert process.wait(timeout=120) == 0, process.stderr.read()[-2000:]
    trials = stored_trials(tmp_path)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert sorted(t.params["lr"] for t in trials) == [0.2, 0.4, 0.6, 0.8]  # distinct values
    folders = [Path(t.user_attrs["folder"]) for t in trials]
    assert [f.name for f in folders] == ["trial_000", "trial_001", "trial_002", "trial_003"]
    assert {len(trainings(f)) for f in folders} == {1}  # each trial trained once
    pids = {trainings(f)[0].split()[0] for f in folders}
    assert len(pids) == 4
    result = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    best = result["best"]
    assert best["params"] == {"lr": 0.2} and best["value"] == 10.0
    assert best["selected_epoch"] == 2 and best["test"] == {
        "test": {"wer": 5.0, "wer_ci95": [1.0, 9.0], "n_utterances": 20}
    }
    decoded = [f for f in folders if (f / "summary_test.json").exists()]
    assert decoded == [Path(best["folder"])]  # the test set: the chosen trial's alone
    # Chosen minus others on valid WER: -10 and -20 points (one and two speakers' error
    # more) are within noise, -70 points (lr 0.8 at its epoch 1) is not.
    curse = sorted((row["difference"], row["within_noise"]) for row in result["winners_curse"])
    assert curse == [(pytest.approx(-70.0), False), (pytest.approx(-20.0), True)] + [
        (pytest.approx(-10.0), True)
    ]
    assert result["n_within_noise"] == 2
    warnings = {tuple(r["params"].values()): r["warning"] for r in result["trials"]}
    assert warnings[(0.8,)] == (
        "valid loss kept falling until epoch 2 while WER was best at epoch 1: loss and "
        "metric disagree (python -m whisper_finetuning.diagnose)"
    )
    assert [warnings[(lr,)] for lr in (0.2, 0.4, 0.6)] == [None] * 3
    markdown = (tmp_path / "sweep" / "sweep.md").read_text()
    assert "2 of 3 other finished trials are within noise of the chosen one" in markdown


def test_a_killed_sweep_resumes_without_repeating_finished_trials(tmp_path):
    spec = write_spec(tmp_path, [0.2, 0.4])
    running = start_sweep(spec, 3)
    second_trial = tmp_path / "sweep" / "trial_001"
    deadline = time.monotonic() + 60
    while not starts(second_trial) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert starts(second_trial), running.stderr.read() if running.poll() is not None else ""
    os.killpg(running.pid, signal.SIGKILL)  # the sweep and its trial's train.py
    running.wait()
    time.sleep(2 * HEARTBEAT + 1)  # the killed trial's heartbeat is stale
    resumed = start_sweep(spec, 0)
    assert resumed.wait(timeout=60) == 0, resumed.stderr.read()[-2000:]
    assert len(trainings(tmp_path / "sweep" / "trial_000")) == 1  # not repeated
    assert len(trainings(second_trial)) == 2  # killed, then rerun in its own folder
    trials = stored_trials(tmp_path)
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials[2].params == trials[1].params
    assert trials[2].user_attrs["folder"] == str(second_trial)
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text())["best"]["number"] == 0


@pytest.mark.parametrize("pruning", [{"n_startup_trials": 2}, False], ids=["on", "off"])
def test_a_trial_worse_than_the_others_at_an_epoch_is_pruned_with_pruning_on(
    tmp_path, monkeypatch, pruning
):
    monkeypatch.setattr(trials, "POLL_SECONDS", 0.1)
    monkeypatch.setenv("STUB_EPOCH_SECONDS", "1")  # epoch 1 is seen before epoch 2 is logged
    spec = write_spec(tmp_path, [0.2, 0.4, 0.6], pruning=pruning)
    assert sweep.main([str(spec)]) == 0
    first, second, third = stored_trials(tmp_path)
    # Every epoch's valid WER is reported, the last ones too: 100 x lr, then half of it.
    assert first.intermediate_values == {1: 20.0, 2: 10.0}
    assert second.intermediate_values == {1: 40.0, 2: 20.0}
    logged = [record["epoch"] for record in trials.valid_epochs(third.user_attrs["folder"])]
    report = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    states = [row["state"] for row in report["trials"]]
    if pruning:
        # Its epoch 1 (60) is worse than the median of the two finished trials' (20, 40):
        # pruned, and its train.py stopped before epoch 2.
        assert third.state.name == "PRUNED" and third.intermediate_values == {1: 60.0}
        assert logged == [1]
        assert states == ["COMPLETE", "COMPLETE", "PRUNED"]
    else:
        assert third.state.name == "COMPLETE" and third.intermediate_values == {1: 60.0, 2: 30.0}
        assert logged == [1, 2]
        assert states == ["COMPLETE"] * 3


REFUSED = "trial {} failed (train.py exit status 1): error: lr must be a number > 0, not {}"


@pytest.mark.slow  # the stub hands the refused learning rates to train.py
def test_a_trial_train_py_refuses_fails_alone_and_the_sweep_goes_on(tmp_path):
    spec = write_spec(tmp_path, [0.2, -1.0, 0.4], overrides={"data_folder": str(tmp_path)})
    running = start_sweep(spec, 0)
    assert running.wait(timeout=300) == 0, running.stderr.read()[-2000:]
    trials = stored_trials(tmp_path)
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    refusal = REFUSED.format(1, -1)
    assert trials[1].user_attrs["error"] == refusal
    assert "error" not in trials[0].user_attrs and "error" not in trials[2].user_attrs
    assert len(trainings(tmp_path / "sweep" / "trial_002")) == 1  # the next trial ran
    result = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    failed = result["trials"][1]
    assert (failed["state"], failed["value"], failed["error"]) == ("FAIL", None, refusal)
    assert [row["error"] for row in result["trials"]] == [None, refusal, None]
    assert result["best"]["params"] == {"lr": 0.2}
    markdown = (tmp_path / "sweep" / "sweep.md").read_text()
    assert f"| 1 | FAIL | -1.0 | - | - | {refusal} |" in markdown


@pytest.mark.slow
def test_a_sweep_whose_every_trial_failed_ends_in_one_error_line(tmp_path):
    spec = write_spec(tmp_path, [-1.0, 0.0], overrides={"data_folder": str(tmp_path)})
    with pytest.raises(SystemExit) as stop:
        sweep.main([str(spec)])
    assert stop.value.code == f"error: every trial failed (2); the last: {REFUSED.format(1, 0)}"
    trials = stored_trials(tmp_path)
    assert [t.user_attrs["error"] for t in trials] == [
        REFUSED.format(0, -1),
        REFUSED.format(1, 0),
    ]
    assert not (tmp_path / "sweep" / "sweep.json").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"sampler": "bayes"}, "sampler 'bayes'; choose one of grid, random, tpe"),
        ({"space": {"lr": {"low": 0.1, "high": 1}}}, "space.lr: a grid needs a list of values"),
        ({"sampler": "random"}, "'n_trials' is required for sampler random"),
        ({"budget": 3}, "unknown key(s) budget; known: "),
        ({"pruning": "yes"}, "pruning is true, false or the median pruner's arguments"),
        (
            {"pruning": {"patience": 2}},
            "pruning: MedianPruner.__init__() got an unexpected keyword argument 'patience'",
        ),
        ({"pruning": {"n_startup_trials": -1}}, "pruning: Number of startup trials cannot be"),
    ],
)
def test_a_bad_spec_is_one_line(tmp_path, capsys, extra, message):
    spec = write_spec(tmp_path, [0.1])
    spec.write_text(json.dumps({**json.loads(spec.read_text()), **extra}))
    with pytest.raises(SystemExit) as stop:
        sweep.main([str(spec)])
    assert stop.value.code.startswith(f"error: {spec}: {message}")
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_a_two_trial_sweep_of_train_py_decodes_the_test_set_for_the_chosen_trial(
    tmp_path, random_whisper_dir
):
    require_espeak()
    manifests = make_corpus(tmp_path / "data")
    overrides = {
        "whisper_hub": str(random_whisper_dir),
        "data_folder": str(tmp_path / "data"),
        "skip_prep": True,
        "train_csv": str(manifests["train"]),
        "valid_csv": str(manifests["valid"]),
        "test_csv": [str(manifests["test"])],
        "number_of_epochs": 1,
        "batch_size": 4,
        "decode_max_tokens": 4,
        "test_beam_size": 1,
        "num_workers": 0,
        "noprogressbar": None,
    }
    spec = write_spec(tmp_path, [0.002, 0.0001], recipe="train.py", overrides=overrides)
    done = subprocess.run(
        [sys.executable, "-m", "whisper_finetuning.sweep", str(spec)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    chosen = Path(result["best"]["folder"])
    values = {}
    for name in ("trial_000", "trial_001"):
        folder = tmp_path / "sweep" / name
        (epoch,) = [json.loads(line) for line in (folder / "epochs.jsonl").read_text().splitlines()]
        values[name] = epoch["WER"]
        assert (folder / "utterances_test.jsonl").exists() == (folder == chosen)
        assert json.loads((folder / "run.json").read_text())["selection_metric"] == "WER"
    assert result["best"]["value"] == min(values.values()) == values[chosen.name]
    assert result["best"]["test"]["test"]["n_utterances"] == 2
    assert len(result["winners_curse"]) == 1
