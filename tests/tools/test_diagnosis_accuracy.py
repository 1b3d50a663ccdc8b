"""The accuracy harness's planting and counting (``diagnosis_accuracy``), on small logs."""

import json

from conftest import read_jsonl

from whisper_finetuning import diagnosis_accuracy as harness


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def step(epoch, number, loss):
    return {"epoch": epoch, "step": number, "epoch_step": number, "loss": loss}


def test_a_mean_only_logger_replaces_the_per_step_loss_with_its_cumulative_mean(tmp_path):
    source = tmp_path / "clean"
    write_jsonl(source / "log" / "steps.jsonl", [step(1, 1, 3.0), step(1, 2, 1.0), step(2, 3, 2.0)])
    (source / "mislabelled.json").write_text("[]")
    harness.relog_running_mean(source, tmp_path / "both", keep_step_loss=True)
    harness.relog_running_mean(source, tmp_path / "only", keep_step_loss=False)
    both = read_jsonl(tmp_path / "both" / "log" / "steps.jsonl")
    only = read_jsonl(tmp_path / "only" / "log" / "steps.jsonl")
    assert [(s["loss"], s["logged_loss"]) for s in both] == [(3.0, 3.0), (1.0, 2.0), (2.0, 2.0)]
    assert [s["logged_loss"] for s in only] == [3.0, 2.0, 2.0]
    assert all("loss" not in s for s in only)
    assert read_jsonl(source / "log" / "steps.jsonl")[1]["loss"] == 1.0  # source untouched


def test_the_continued_run_becomes_epoch_two_of_the_first(tmp_path):
    for folder, lr in ((tmp_path, 1e-4), (tmp_path / harness.CONTINUED, 1e-5)):
        wer = 30.0 if lr == 1e-4 else 28.0
        write_jsonl(folder / "epochs.jsonl", [{"epoch": 1, "WER": wer, "optimizer_steps": 2}])
        write_jsonl(folder / "log" / "steps.jsonl", [{**step(1, n, 2.0), "lr": lr} for n in (1, 2)])
        write_jsonl(folder / "log" / "train_utterances.jsonl", [{"epoch": 1, "id": "a"}])
        write_jsonl(folder / "valid" / "utterances_epoch1.jsonl", [{"id": "v", "lr": lr}])
    harness.append_continued_epoch(tmp_path)
    epochs = read_jsonl(tmp_path / "epochs.jsonl")
    assert [(e["epoch"], e["WER"], e["optimizer_steps"]) for e in epochs] == [
        (1, 30.0, 2),
        (2, 28.0, 4),
    ]
    steps = read_jsonl(tmp_path / "log" / "steps.jsonl")
    assert [(s["epoch"], s["step"], s["lr"]) for s in steps] == [
        (1, 1, 1e-4),
        (1, 2, 1e-4),
        (2, 3, 1e-5),
        (2, 4, 1e-5),
    ]
    visits = read_jsonl(tmp_path / "log" / "train_utterances.jsonl")
    assert [u["epoch"] for u in visits] == [1, 2]
    assert read_jsonl(tmp_path / "valid" / "utterances_epoch2.jsonl") == [{"id": "v", "lr": 1e-5}]


def test_claims_are_counted_per_planted_cause():
    outcomes = [
        {"scenario": "clean", "planted": [], "claims": []},
        {"scenario": "clean", "planted": [], "claims": ["memorization"]},
        {"scenario": "ordering", "planted": ["ordering"], "claims": ["ordering"]},
    ]
    for outcome in outcomes:
        outcome.update(mislabelled=0, suspects=0, true_suspects=0)
    lines = harness.table(outcomes).splitlines()
    assert "| ordering | 1/1 (100%) | 0/2 (0%) | 0/2 (0%) |" in lines
    assert "| memorization | - | 1/2 (50%) | 1/3 (33%) |" in lines


def test_the_claims_read_from_a_diagnosis():
    result = {
        "epoch_boundary": {
            "detected": False,
            "tests": [
                {"cause": "running_mean_artifact", "passed": True, "evidence": {}},
                {"cause": "ordering", "passed": False, "evidence": {"order_not_random": False}},
            ],
        },
        "memorization": {"passed": False},
        "label_noise_suspects": [{"id": "x"}],
        "lagging_groups": {"lagging": []},
    }
    assert harness.claims(result) == {"running_mean_artifact", "label_noise"}
    result["epoch_boundary"]["tests"][1]["evidence"]["order_not_random"] = True
    assert harness.claims(result) == {"running_mean_artifact", "label_noise", "ordering"}
