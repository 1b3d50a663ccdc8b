"""local/diagnose.py on synthetic runs with planted causes, foreign logs and a simulation of
the paired bootstrap's coverage."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import read_jsonl, require_espeak

from whisper_finetuning import diagnose
from whisper_finetuning.analysis.diagnosis import checks, records, stats
from whisper_finetuning.analysis.diagnosis.records import parse_train_log_line

EPOCHS, N_TRAIN, BATCH = 3, 240, 4
STEPS_PER_EPOCH = N_TRAIN // BATCH
SPEAKERS, PER_SPEAKER = 8, 8
DIALECTS = ("north", "south", "east", "west")
VOCABULARY = [f"w{i}" for i in range(300)]
MISLABELLED = [f"train_{i:03d}" for i in (5, 50, 77, 120, 160, 201, 230, 239)]
LENGTH_EFFECT = 0.1  # loss per second of audio above the mean
MEMORIZATION_DROP = 0.6  # loss lost per earlier visit when memorising
VALID_RISE = 0.05  # valid NLL added per epoch after the first when memorising
SHIFT = 0.8  # valid NLL added when the valid set is planted off the training distribution
LEAKED = 10  # valid utterances given a training transcript when leakage is planted
CAUSES = ("running_mean_artifact", "ordering", "memorization", "schedule")
MISLABEL_EFFECT = 5.0  # loss added by a wrong label (a per-token NLL near 5, as on real runs)
HARD_DIALECT_EFFECT = 4.0  # loss added to every training utterance of a hard dialect


def _level(step):
    """The loss a generalising model reaches after ``step`` optimizer steps."""
    return 1.0 + 1.5 * np.exp(-step / 60)


def _noisy_copy(words, error_rate, rng):
    return [rng.choice(VOCABULARY) if rng.random() < error_rate else w for w in words]


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_run(folder, plant=(), seed=0, mislabelled=MISLABELLED):
    """A synthetic experiment folder in the CONTRACTS layout with the named causes planted.

    ``plant`` may hold: running_mean_artifact, ordering, memorization, schedule_lr,
    schedule_augment, overconfidence, hard_dialect (the first dialect's training utterances
    are all harder). ``mislabelled`` training utterances get a random label.
    """
    rng = np.random.default_rng(seed)
    durations = rng.uniform(1, 10, N_TRAIN)
    difficulty = rng.normal(0, 0.3, N_TRAIN)
    truths = [list(rng.choice(VOCABULARY, max(2, int(2 * d)))) for d in durations]
    ids = [f"train_{i:03d}" for i in range(N_TRAIN)]
    labels = [
        list(rng.choice(VOCABULARY, len(t))) if ids[i] in mislabelled else t
        for i, t in enumerate(truths)
    ]
    visits = np.zeros(N_TRAIN, int)
    steps, utterances, epochs, step = [], [], [], 0
    for epoch in range(1, EPOCHS + 1):
        order = np.argsort(durations) if "ordering" in plant else rng.permutation(N_TRAIN)
        for s in range(STEPS_PER_EPOCH):
            step += 1
            level = _level(step)
            lr = 1e-3 / np.sqrt(step + 100)
            if "schedule_lr" in plant:
                lr, level = 1e-3 * 0.3 ** (epoch - 1), level - 0.5 * (epoch - 1)
            augmented = "schedule_augment" in plant and epoch == 1
            batch = order[s * BATCH : (s + 1) * BATCH]
            losses = []
            for i in batch:
                loss = (
                    level
                    + difficulty[i]
                    + LENGTH_EFFECT * (durations[i] - 5.5)
                    + 0.8 * augmented
                    + MISLABEL_EFFECT * (ids[i] in mislabelled)
                    + HARD_DIALECT_EFFECT * ("hard_dialect" in plant and i % len(DIALECTS) == 0)
                    - MEMORIZATION_DROP * visits[i] * ("memorization" in plant)
                    + rng.normal(0, 0.1)
                )
                loss = max(loss, 0.05)
                losses.append(loss)
                hyp = _noisy_copy(truths[i], min(0.05 * loss, 0.5), rng)
                utterances.append(
                    {
                        "epoch": epoch,
                        "id": ids[i],
                        "loss": loss,
                        "token_accuracy": float(np.exp(-loss)),
                        "tokens": len(labels[i]) + 2,
                        "seen": int(visits[i] == 0),
                        "position": (s + 1) / STEPS_PER_EPOCH,
                        "hyp": " ".join(hyp),
                        "ref": " ".join(labels[i]),
                        "dialect": DIALECTS[i % len(DIALECTS)],
                    }
                )
            visits[batch] += 1
            steps.append(
                {
                    "epoch": epoch,
                    "step": step,
                    "epoch_step": s + 1,
                    "position": (s + 1) / STEPS_PER_EPOCH,
                    "loss": float(np.mean(losses)),
                    "lr": lr,
                    "tokens": int(sum(len(labels[i]) + 2 for i in batch)),
                    "audio_seconds": float(durations[batch].sum()),
                    "utterances": BATCH,
                    "augmented": augmented,
                }
            )
        epochs.append(_valid_epoch(folder, epoch, level, step, plant, steps, rng))
        epochs[-1]["lr"] = steps[-1]["lr"]
    if "running_mean_artifact" in plant:
        for epoch in range(1, EPOCHS + 1):
            mine = [s for s in steps if s["epoch"] == epoch]
            running = np.cumsum([s["loss"] for s in mine]) / np.arange(1, len(mine) + 1)
            for s, value in zip(mine, running, strict=True):
                s["logged_loss"] = float(value)
    if "leakage" in plant:
        for path in (folder / "valid").glob("utterances_epoch*.jsonl"):
            rows = read_jsonl(path)
            for row, label in zip(rows[:LEAKED], labels, strict=False):
                row["ref"] = " ".join(label).upper() + "."  # normalisation must not hide it
            write_jsonl(path, rows)
    write_jsonl(folder / "log" / "steps.jsonl", steps)
    write_jsonl(folder / "log" / "train_utterances.jsonl", utterances)
    write_jsonl(folder / "epochs.jsonl", epochs)
    sorting = "ascending" if "ordering" in plant else "random"
    run = {"sorting": sorting, "augment": "schedule_augment" in plant, "batch_size": BATCH}
    run["group_columns"] = ["spk_id", "dialect"]
    (folder / "run.json").write_text(json.dumps(run))
    return folder


VALID_RNG_SEED = 123


def _valid_epoch(folder, epoch, level, step, plant, steps, rng):
    """Valid utterances of one epoch (errors and NLL per utterance) and its epochs.jsonl row."""
    valid_rng = np.random.default_rng(VALID_RNG_SEED)  # same utterances every epoch
    errors_rng = np.random.default_rng(VALID_RNG_SEED + epoch)  # independent of training draws
    speaker_effect = valid_rng.normal(0, 0.4, SPEAKERS)
    base_wer = {1: 0.20, 2: 0.16, 3: 0.13}[epoch]
    if "memorization" in plant:  # ... in WER too
        base_wer = {1: 0.20, 2: 0.30, 3: 0.40}[epoch]
    overconfident = "overconfidence" in plant and epoch == EPOCHS
    if "memorization" in plant:  # data never trained on stops improving after epoch 1
        level = _level(STEPS_PER_EPOCH) + VALID_RISE * (epoch - 1)
    rows = []
    for spk in range(SPEAKERS):
        for j in range(PER_SPEAKER):
            words = int(valid_rng.integers(6, 14))
            hardness = valid_rng.normal(0, 0.2)
            rate = base_wer
            if "lagging" in plant:  # the first dialect gets worse while the others improve
                lagging = DIALECTS[spk % len(DIALECTS)] == DIALECTS[0]
                rate = {1: 0.20, 2: 0.28, 3: 0.35}[epoch] if lagging else rate**1.3 / 0.2**0.3
            p = min(rate * np.exp(speaker_effect[spk] + hardness), 0.9)
            errors = int(errors_rng.binomial(words, p))
            nll = level + speaker_effect[spk] + hardness + rng.normal(0, 0.05)
            nll += 0.8 * overconfident + SHIFT * ("shift" in plant)
            rows.append(
                {
                    "id": f"valid_{spk}_{j}",
                    "ref": " ".join(valid_rng.choice(VOCABULARY, words)),
                    "hyp": "synthetic",
                    "word_errors": errors,
                    "words": words,
                    "char_errors": 2 * errors,
                    "chars": 5 * words,
                    "dialect": DIALECTS[spk % len(DIALECTS)],
                    "spk_id": f"spk{spk}",
                    "loss": float(nll),
                }
            )
    write_jsonl(folder / "valid" / f"utterances_epoch{epoch}.jsonl", rows)
    nll = float(np.mean([r["loss"] for r in rows]))
    wer = 100 * sum(r["word_errors"] for r in rows) / sum(r["words"] for r in rows)
    mine = [s["loss"] for s in steps if s["epoch"] == epoch]
    return {
        "epoch": epoch,
        "optimizer_steps": step,
        "train_loss": float(np.mean(mine)),
        "loss": nll + 0.3,
        "WER": wer,
        "CER": wer / 2,
        "nll": nll,
        "token_accuracy": float(np.exp(-nll)),
        "entropy": 0.6 if overconfident else 1.0 - 0.05 * epoch,
        "ece": 0.09 if overconfident else 0.05 - 0.005 * epoch,
        "n_valid": len(rows),
    }


PLANTED = {
    "clean": ((), []),
    "running_mean": (("running_mean_artifact",), ["running_mean_artifact"]),
    "ordering": (("ordering",), ["ordering"]),
    "memorization": (("memorization",), ["memorization"]),
    "lr_schedule": (("schedule_lr",), ["schedule"]),
    "augmentation_schedule": (("schedule_augment",), ["schedule"]),
    "running_mean_and_ordering": (
        ("running_mean_artifact", "ordering"),
        ["running_mean_artifact", "ordering"],
    ),
    "ordering_and_lr_schedule": (("ordering", "schedule_lr"), ["ordering", "schedule"]),
}


WITH_LABEL_NOISE = {"clean", "ordering", "running_mean_and_ordering"}


@pytest.fixture(scope="module")
def diagnosed(tmp_path_factory):
    """Every planted scenario generated and diagnosed once: name -> (folder, diagnostics)."""
    results = {}
    for name, (plant, _) in PLANTED.items():
        mislabelled = MISLABELLED if name in WITH_LABEL_NOISE else []
        folder = make_run(tmp_path_factory.mktemp(name), plant, mislabelled=mislabelled)
        results[name] = (folder, diagnose.run(folder))
    return results


@pytest.mark.parametrize("name", PLANTED)
def test_planted_causes_are_attributed_and_nothing_else(diagnosed, name):
    _, result = diagnosed[name]
    expected = PLANTED[name][1]
    boundary = result["epoch_boundary"]
    assert boundary["detected"] == bool(expected)
    assert [c["cause"] for c in boundary["causes"]] == expected
    tested = {t["cause"] for t in boundary["tests"]}
    assert tested == set(CAUSES)  # every cause had its data, so every cause was tested
    for test in boundary["tests"]:
        assert test["passed"] == (test["cause"] in expected), (test["cause"], test["evidence"])


@pytest.mark.parametrize("name", PLANTED)
def test_every_claimed_cause_carries_numbers_that_pass_its_threshold(diagnosed, name):
    _, result = diagnosed[name]
    from whisper_finetuning.analysis.diagnosis import boundary as b

    for cause in result["epoch_boundary"]["causes"]:
        evidence = cause["evidence"]
        assert cause["threshold"] and evidence
        if cause["cause"] == "running_mean_artifact":
            deviation = evidence["max_deviation_from_cumulative_mean_of_loss"]
            assert deviation <= b.RUNNING_MEAN_TOLERANCE
        elif cause["cause"] == "ordering":
            assert abs(evidence["loss_vs_length_rho"]) >= b.LENGTH_RHO
            assert evidence["explained_fraction"] >= b.EXPLAINED_FRACTION
            assert evidence["sorting"] == "ascending"
        elif cause["cause"] == "memorization":
            assert evidence["p_value"] < b.ALPHA
            assert evidence["never_seen_drop_mean"] < 0.5 * evidence["train_drop_mean"]
        elif cause["cause"] == "schedule":
            assert evidence["lr_jump"] or evidence["augmentation_switch"]
    report = (result_folder := diagnosed[name][0]) / "diagnostics" / "report.md"
    text = report.read_text()
    for cause in result["epoch_boundary"]["causes"]:
        assert f"**{cause['cause']}**: claimed" in text
    assert json.loads((result_folder / "diagnostics" / "diagnostics.json").read_text()) == result


def test_drop_and_memorization_numbers_match_a_recomputation(diagnosed):
    folder, result = diagnosed["memorization"]
    steps = read_jsonl(folder / "log" / "steps.jsonl")
    boundary = result["epoch_boundary"]
    k = boundary["k"]
    assert k == STEPS_PER_EPOCH // 4
    drops = []
    for epoch in range(1, EPOCHS):
        before = [s["loss"] for s in steps if s["epoch"] == epoch][-k:]
        after = [s["loss"] for s in steps if s["epoch"] == epoch + 1][:k]
        drops.append(np.mean(before) - np.mean(after))
    assert boundary["drop"] == pytest.approx(np.mean(drops), abs=1e-12)
    visits = read_jsonl(folder / "log" / "train_utterances.jsonl")
    loss = {(u["epoch"], u["id"]): u["loss"] for u in visits}
    train_drops = [
        loss[(e, i)] - loss[(e + 1, i)] for (e, i) in loss if e < EPOCHS and (e + 1, i) in loss
    ]
    evidence = result["memorization"]["evidence"]
    assert evidence["n_train_pairs"] == N_TRAIN * (EPOCHS - 1)
    assert evidence["train_drop_mean"] == pytest.approx(np.mean(train_drops), abs=1e-12)
    # Memorising adds MEMORIZATION_DROP per visit while valid data gets worse.
    assert evidence["train_drop_mean"] > MEMORIZATION_DROP
    assert evidence["never_seen_drop_mean"] == pytest.approx(-VALID_RISE, abs=0.03)
    assert evidence["never_seen_stalled_after"] == [1, 2]


def test_without_the_logs_a_cause_needs_it_is_not_claimed(tmp_path):
    folder = make_run(tmp_path, ("memorization",), mislabelled=[])
    (folder / "log" / "train_utterances.jsonl").unlink()
    result = diagnose.run(folder)
    boundary = result["epoch_boundary"]
    assert boundary["detected"] and boundary["causes"] == []
    assert [m["cause"] for m in boundary["not_tested"]] == ["memorization"]
    assert "train_utterances.jsonl" in result["skipped"]["memorization"]
    assert "label_noise_suspects" in result["skipped"]
    assert any("No tested cause explains it" in s for s in result["verdict"])


def test_wer_difference_is_the_paired_difference_blocked_by_speaker(diagnosed):
    folder, result = diagnosed["clean"]
    assert (result["best_loss_epoch"], result["best_wer_epoch"]) == (3, 3)
    assert result["wer_difference"]["point"] == 0.0


def test_overconfidence_and_the_checkpoint_verdict(tmp_path):
    folder = make_run(tmp_path, ("overconfidence",))
    result = diagnose.run(folder)
    assert [r["flagged"] for r in result["overconfidence"]] == [False, False, True]
    assert (result["best_loss_epoch"], result["best_wer_epoch"]) == (2, 3)
    epochs = read_jsonl(folder / "epochs.jsonl")
    rho = stats.spearman([e["loss"] for e in epochs], [e["WER"] for e in epochs])[0]
    assert result["loss_wer_spearman"] == rho == -0.5  # loss ranks 2, 1, 3; WER ranks 3, 2, 1
    first = read_jsonl(folder / "valid" / "utterances_epoch2.jsonl")
    second = read_jsonl(folder / "valid" / "utterances_epoch3.jsonl")
    words = sum(u["words"] for u in first)
    expected = 100 * (sum(u["word_errors"] for u in first) - sum(u["word_errors"] for u in second))
    difference = result["wer_difference"]
    assert difference["point"] == pytest.approx(expected / words, abs=1e-9)
    lo, hi = difference["ci95"]
    assert lo < difference["point"] < hi
    assert f"{SPEAKERS} speakers" in difference["method"]
    assert result["verdict"][0].startswith("Trust the min-WER checkpoint (epoch 3")
    assert any("epoch(s) 3 the model grew overconfident" in s for s in result["verdict"])
    for plot in ("step_loss.png", "valid_loss_wer.png", "calibration.png"):
        assert (folder / "diagnostics" / plot).read_bytes()[:4] == b"\x89PNG"


def test_planted_label_noise_is_named_and_nothing_else(diagnosed):
    folder, result = diagnosed["clean"]
    noise = result["label_noise"]
    assert {s["id"] for s in noise["suspects"]} == set(MISLABELLED)
    assert result["label_noise_suspects"] == noise["suspects"] and noise["hardest"] == []
    assert noise["group_column"] == "dialect" and noise["fdr"] == 0.05
    last = {u["id"]: u for u in read_jsonl(folder / "log" / "train_utterances.jsonl")}
    for dialect in DIALECTS:  # the null of each dialect: median and MAD of its log losses
        members = [np.log(u["loss"]) for u in last.values() if u["dialect"] == dialect]
        centre = np.median(members)
        assert noise["null"][dialect]["median_log_loss"] == pytest.approx(centre)
        scale = 1.4826 * np.median(np.abs(np.array(members) - centre))
        assert noise["null"][dialect]["scale"] == pytest.approx(scale)
    for suspect in noise["suspects"]:
        utterance = last[suspect["id"]]
        null = noise["null"][utterance["dialect"]]
        z = (np.log(utterance["loss"]) - null["median_log_loss"]) / null["scale"]
        assert suspect["robust_z"] == pytest.approx(z) and suspect["loss"] == utterance["loss"]
        errors, words = stats.word_errors(suspect["hyp"], suspect["ref"])
        assert suspect["wer"] == pytest.approx(100 * errors / words)
    # Benjamini-Hochberg: the k-th smallest p-value of the named is under 5% x k / n.
    p_values = sorted(s["p_value"] for s in noise["suspects"])
    assert all(p <= 0.05 * k / N_TRAIN for k, p in enumerate(p_values, 1))
    assert any(
        f"{len(MISLABELLED)} of {N_TRAIN} training utterances are label-noise" in s
        for s in result["verdict"]
    )


def test_three_causes_planted_together_are_all_found(diagnosed):
    """A running-mean logger, sorted batches and wrong labels in one run: each is claimed."""
    _, result = diagnosed["running_mean_and_ordering"]
    causes = [c["cause"] for c in result["epoch_boundary"]["causes"]]
    assert causes == ["running_mean_artifact", "ordering"]
    assert {s["id"] for s in result["label_noise_suspects"]} == set(MISLABELLED)
    verdict = " ".join(result["verdict"])
    assert "cumulative mean reset every epoch" in verdict and "sorted or fixed order" in verdict
    assert "label-noise suspects" in verdict


@pytest.mark.parametrize("plant", [(), ("hard_dialect",)])
def test_a_clean_run_names_no_label_noise_suspects(tmp_path, plant):
    """No wrong labels: nobody is named, not even the utterances of a dialect that is harder
    as a whole (compared within dialects); the hardest are listed as hard."""
    for seed in range(3):
        folder = make_run(tmp_path / str(seed), plant, seed=seed, mislabelled=[])
        result = diagnose.run(folder)
        noise = result["label_noise"]
        assert noise["suspects"] == [] and result["label_noise_suspects"] == []
        assert len(noise["hardest"]) == 10
        zs = [h["robust_z"] for h in noise["hardest"]]
        assert zs == sorted(zs, reverse=True)
        assert any(s.startswith("No evidence of label noise") for s in result["verdict"])
        report = (folder / "diagnostics" / "report.md").read_text()
        assert "## Hardest training utterances" in report
    if plant:  # pooled over dialects (and without the transcript check), they stand out
        named = []
        for seed in range(3):
            loaded = records.load(tmp_path / str(seed))
            for utterance in loaded.train_utterances:
                del utterance["dialect"], utterance["hyp"]
            named += [s["id"] for s in checks.label_noise(loaded)["suspects"]]
        assert len(named) > 20
        assert all(int(i.split("_")[1]) % len(DIALECTS) == 0 for i in named)


def test_paired_bootstrap_interval_covers_the_true_difference_at_its_rate():
    """200 simulated valid sets (20 speakers x 5 utterances, correlated within speakers):
    the 95% interval of WER(a) - WER(b) covers the population difference ~95% of the time."""
    rng = np.random.default_rng(7)
    speakers, per_speaker, words, trials = 20, 5, 10, 200

    def sample(n_speakers):
        speaker = np.repeat(rng.normal(0, 0.6, n_speakers), per_speaker)
        logit = -1.5 + speaker + rng.normal(0, 0.3, speaker.shape)
        p_a, p_b = 1 / (1 + np.exp(-logit)), 1 / (1 + np.exp(-(logit - 0.4)))
        uniform = rng.random((len(logit), words))  # the same words fail for both when p allows
        return (uniform < p_a[:, None]).sum(1), (uniform < p_b[:, None]).sum(1)

    big_a, big_b = sample(200_000)
    truth = 100 * (big_a.sum() - big_b.sum()) / (len(big_a) * words)
    covered = 0
    for trial in range(trials):
        errors_a, errors_b = sample(speakers)
        blocks = np.repeat(np.arange(speakers), per_speaker)
        _, lo, hi, n_blocks = stats.paired_bootstrap_difference(
            errors_a, errors_b, np.full(len(errors_a), words), blocks, samples=1000, seed=trial
        )
        assert n_blocks == speakers
        covered += lo <= truth <= hi
    # Binomial(200, 0.95) has sd 1.5%: 3 sd either side.
    assert 0.90 <= covered / trials <= 0.995


EVALS = {1: (0.91, 30.5), 2: (0.88, 27.25), 3: (0.93, 25.0)}  # eval_loss, eval_wer
LOGS_PER_EPOCH = 40


def write_trainer_state(folder, losses_of_epoch):
    """A Trainer ``checkpoint-120/trainer_state.json``: 3 epochs of 40 logged losses each
    (``losses_of_epoch(epoch, rng)``), an evaluation after each epoch, the final summary."""
    rng = np.random.default_rng(3)
    history = []
    for epoch in range(1, 4):
        for j, value in enumerate(losses_of_epoch(epoch, rng), 1):
            history.append(
                {
                    "epoch": round(epoch - 1 + j / LOGS_PER_EPOCH, 4),
                    "step": (epoch - 1) * LOGS_PER_EPOCH + j,
                    "loss": float(value),
                    "learning_rate": 1e-5,
                }
            )
        eval_loss, eval_wer = EVALS[epoch]
        history.append(
            {
                "epoch": float(epoch),
                "step": epoch * LOGS_PER_EPOCH,
                "eval_loss": eval_loss,
                "eval_wer": eval_wer,
            }
        )
    history.append({"epoch": 3.0, "step": 120, "train_loss": 1.5, "train_runtime": 10.0})
    state = {
        "log_history": history,
        "logging_steps": 1,
        "best_model_checkpoint": "out/checkpoint-120",
        "best_metric": 25.0,
    }
    (folder / "checkpoint-120").mkdir()
    (folder / "checkpoint-120" / "trainer_state.json").write_text(json.dumps(state))
    return history


def running_mean_of_a_smooth_loss(epoch, rng):
    """A loss falling smoothly over the run, logged as its cumulative mean within the epoch."""
    steps = (epoch - 1) * LOGS_PER_EPOCH + np.arange(1, LOGS_PER_EPOCH + 1)
    raw = 2.5 - 0.01 * steps + rng.normal(0, 0.3, LOGS_PER_EPOCH)
    return np.round(np.cumsum(raw) / np.arange(1, LOGS_PER_EPOCH + 1), 4)


def test_trainer_state_is_parsed_exactly_and_its_running_mean_found(tmp_path):
    history = write_trainer_state(tmp_path, running_mean_of_a_smooth_loss)
    result = diagnose.run(tmp_path)
    assert result["source"] == "trainer_state"
    assert [(e["epoch"], e["loss"], e["WER"]) for e in result["epochs"]] == [
        (1, 0.91, 30.5),
        (2, 0.88, 27.25),
        (3, 0.93, 25.0),
    ]
    assert (result["best_loss_epoch"], result["best_wer_epoch"]) == (2, 3)
    assert result["kept_checkpoint"] == {"checkpoint": "out/checkpoint-120", "best_metric": 25.0}
    assert any(s.startswith("The Trainer kept out/checkpoint-120") for s in result["verdict"])
    assert result["loss_wer_spearman"] == stats.spearman([0.91, 0.88, 0.93], [30.5, 27.25, 25.0])[0]
    boundary = result["epoch_boundary"]
    assert boundary["detected"]
    assert [c["cause"] for c in boundary["causes"]] == ["running_mean_artifact"]
    last = [h["loss"] for h in history if "loss" in h and h["epoch"] <= 1][-boundary["k"] :]
    first = [h["loss"] for h in history if "loss" in h and 1 < h["epoch"] <= 2][: boundary["k"]]
    assert boundary["boundaries"][0]["drop"] == pytest.approx(np.mean(last) - np.mean(first))
    for name in ("wer_difference", "label_noise_suspects", "overconfidence", "memorization"):
        assert name in result["skipped"]
    assert set(result["skipped"]).isdisjoint(result["available_analyses"])
    text = (tmp_path / "diagnostics" / "report.md").read_text()
    assert "## Not analysed" in text and "wer_difference" in text


def test_a_real_drop_without_testable_causes_is_reported_unexplained(tmp_path):
    """Per-interval losses that step down each epoch: a drop, but no cause has its data."""
    write_trainer_state(tmp_path, lambda epoch, rng: 2.5 - 0.4 * epoch + rng.normal(0, 0.1, 40))
    result = diagnose.run(tmp_path)
    boundary = result["epoch_boundary"]
    assert boundary["detected"] and boundary["causes"] == []
    assert {t["cause"]: t["passed"] for t in boundary["tests"]} == {
        "running_mean_artifact": False,
        "schedule": False,
    }
    assert {m["cause"] for m in boundary["not_tested"]} == {"ordering", "memorization"}
    assert any(s.startswith("No tested cause explains it") for s in result["verdict"])


TRAIN_LOG = """\
epoch: 1, lr: 1.00e-05 - train loss: 2.45 - valid loss: 1.23, valid CER: 10.20, valid WER: 20.10
epoch: 2, lr: 8.00e-06 - train loss: 1.87 - valid loss: 1.19, valid CER: 9.50, valid WER: 19.40
epoch: 3, lr: 6.00e-06 - train loss: 1.90 - valid loss: 1.31, valid CER: 9.10, valid WER: 18.80
epoch: 3, lr: 6.00e-06 - train loss: 1.41 - valid loss: 1.21, valid CER: 9.00, valid WER: 18.70
test set: test, epoch: 3 - test loss: 1.30, test WER: 19.00, test CER: 9.40
"""


def test_speechbrain_train_log_is_parsed_exactly_and_the_gaps_are_explained(tmp_path):
    (tmp_path / "train_log.txt").write_text(TRAIN_LOG)
    result = diagnose.run(tmp_path)
    assert result["source"] == "train_log"
    rows = [(e["epoch"], e["lr"], e["train_loss"], e["loss"], e["WER"]) for e in result["epochs"]]
    # A resumed epoch logged twice: the later line wins.
    assert rows == [
        (1, 1e-5, 2.45, 1.23, 20.10),
        (2, 8e-6, 1.87, 1.19, 19.40),
        (3, 6e-6, 1.41, 1.21, 18.70),
    ]
    assert (result["best_loss_epoch"], result["best_wer_epoch"]) == (2, 3)
    assert result["available_analyses"] == ["best_epochs", "best_metric_epoch", "loss_wer_spearman"]
    assert "per-step" in result["skipped"]["epoch_boundary"]
    assert "valid/utterances_epochN.jsonl" in result["skipped"]["wer_difference"]
    assert any("epoch mean" in note for note in result["notes"])
    text = (tmp_path / "diagnostics" / "report.md").read_text()
    for reason in result["skipped"].values():
        assert reason in text
    assert parse_train_log_line("test set: test, epoch: 3 - test loss: 1.30") is None


def test_demo_like_folder_without_step_logs_degrades_gracefully(tmp_path):
    """epochs.jsonl and valid files only (the demo's shape): checkpoints and noise, no more."""
    full = make_run(tmp_path / "full", ("overconfidence",))
    folder = tmp_path / "demo"
    (folder / "valid").mkdir(parents=True)
    for name in ("utterances_epoch1.jsonl", "utterances_epoch2.jsonl"):
        (folder / "valid" / name).write_text((full / "valid" / name).read_text())
    epochs = read_jsonl(full / "epochs.jsonl")[:2]
    keep = ("epoch", "lr", "optimizer_steps", "train_loss", "loss", "WER", "CER")
    write_jsonl(folder / "epochs.jsonl", [{k: e[k] for k in keep} for e in epochs])
    result = diagnose.run(folder)
    assert result["epoch_boundary"] is None and result["label_noise_suspects"] is None
    assert {"best_epochs", "wer_difference", "lagging_groups", "valid_set"} <= set(
        result["available_analyses"]
    )
    assert result["skipped"]["overconfidence"].startswith("epochs.jsonl has no ece/entropy")
    for cause in ("running_mean_artifact", "ordering", "schedule"):
        assert "no per-step training losses" in result["skipped"][cause]
    assert "train_utterances.jsonl" in result["skipped"]["memorization"]
    assert result["plots"] == ["valid_loss_wer.png"]


def test_cli_writes_the_outputs_and_gives_one_line_errors(tmp_path, diagnosed):
    done = subprocess.run(
        [sys.executable, "-m", "whisper_finetuning.diagnose", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: {tmp_path} has no epochs.jsonl, trainer_state.json or train_log.txt: "
        "nothing to diagnose"
    ]
    folder, _ = diagnosed["ordering"]
    done = subprocess.run(
        [sys.executable, "-m", "whisper_finetuning.diagnose", str(folder)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "Batches come in a sorted or fixed order" in done.stdout


MISLABELS = {
    "en-gb-scotland_s0011": "The committee postponed its decision until next spring.",
    "en-us_s0155": "Fresh bread and cheese were sold out by noon.",
}


@pytest.mark.slow
def test_train_py_logs_let_the_real_mislabelled_utterances_surface(tmp_path, tiny_en_dir):
    """train.py with the real tiny.en on espeak-ng speech, two training labels replaced by
    sentences never spoken: the diagnosis ranks exactly those two as the top suspects."""
    import csv

    from whisper_finetuning.data.prepare import accent_corpus

    require_espeak()
    manifests = accent_corpus.prepare_accent_corpus(
        tmp_path / "data",
        tmp_path / "manifests",
        n_valid_sentences=2,
        n_test_sentences=1,
        n_train_sentences=8,
        voices=("en-us", "en-gb-scotland"),
    )
    with open(manifests["train"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert set(MISLABELS) <= {r["ID"] for r in rows}
    for row in rows:
        row["wrd"] = MISLABELS.get(row["ID"], row["wrd"])
    train_csv = tmp_path / "train_mislabelled.csv"
    with open(train_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    exp = tmp_path / "exp"
    done = subprocess.run(
        [
            sys.executable,
            "train.py",
            "hparams/whisper_small.yaml",
            f"--whisper_hub={tiny_en_dir}",
            f"--data_folder={tmp_path / 'data'}",
            f"--output_folder={exp}",
            "--skip_prep=True",
            f"--train_csv={train_csv}",
            f"--valid_csv={manifests['valid']}",
            f"--test_csv=[{manifests['test']}]",
            "--number_of_epochs=2",
            "--batch_size=4",
            "--grad_accumulation_factor=1",
            "--lr=1e-5",
            "--warmup_steps=4",
            "--trainable_patterns=[encoder_attn]",
            "--decode_max_tokens=32",
            "--test_beam_size=1",
            "--num_workers=0",
            "--ckpt_interval_minutes=0",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = diagnose.run(exp)
    suspects = result["label_noise_suspects"]
    assert {s["id"] for s in suspects[:2]} == set(MISLABELS)
    last = {
        u["id"]: u for u in read_jsonl(exp / "log" / "train_utterances.jsonl") if u["epoch"] == 2
    }
    for suspect in suspects[:2]:
        assert suspect["ref"] == MISLABELS[suspect["id"]]
        assert suspect["loss"] == last[suspect["id"]]["loss"]
    # Both are far outside the loss range of the correctly labelled utterances.
    clean = [u["loss"] for i, u in last.items() if i not in MISLABELS]
    assert min(s["loss"] for s in suspects[:2]) > 2 * max(clean)
    epochs = read_jsonl(exp / "epochs.jsonl")
    assert result["best_loss_epoch"] == min(epochs, key=lambda e: (e["loss"], e["epoch"]))["epoch"]
    assert result["best_wer_epoch"] == min(epochs, key=lambda e: (e["WER"], e["epoch"]))["epoch"]
    assert {"memorization", "overconfidence", "label_noise_suspects", "leakage"} <= set(
        result["available_analyses"]
    )
    assert result["leakage"]["same_transcript"] == 0  # the corpus splits by sentence
    assert "logged steps" in result["skipped"]["epoch_boundary"]  # 4 steps per epoch
    report = (exp / "diagnostics" / "report.md").read_text()
    assert all(utt_id in report for utt_id in MISLABELS)


def test_lagging_group_shift_and_leakage_are_found_only_when_planted(tmp_path, diagnosed):
    _, clean = diagnosed["clean"]
    assert not clean["distribution_shift"]["flagged"] and not clean["leakage"]["flagged"]
    assert ("dialect", DIALECTS[0]) not in {
        (g["column"], g["value"]) for g in clean["lagging_groups"]["lagging"]
    }
    result = diagnose.run(make_run(tmp_path, ("lagging", "shift", "leakage")))
    lagging = result["lagging_groups"]
    flagged_dialects = [g["value"] for g in lagging["lagging"] if g["column"] == "dialect"]
    assert flagged_dialects == [DIALECTS[0]]
    north = lagging["groups"]["dialect"][DIALECTS[0]]
    assert north["gain"] == pytest.approx(north["wer_by_epoch"]["1"] - north["wer_by_epoch"]["3"])
    assert north["gain"] < 0
    assert north["gain_ci95"][1] < lagging["overall_gain"]
    shift = result["distribution_shift"]
    assert shift["flagged"] and shift["valid_nll"] - shift["train_unseen_nll"] > SHIFT / 2
    leak = result["leakage"]
    assert (leak["same_transcript"], leak["same_id"], leak["flagged"]) == (LEAKED, 0, True)
    verdict = " ".join(result["verdict"])
    assert f"{LEAKED} of {SPEAKERS * PER_SPEAKER} valid transcripts" in verdict
    assert "Valid utterances are harder" in verdict and "dialect=north" in verdict


def test_a_resumed_epoch_s_re_logged_records_replace_the_first_ones(tmp_path):
    folder = make_run(tmp_path)
    steps_path = folder / "log" / "steps.jsonl"
    steps = read_jsonl(steps_path)
    replayed = [{**s, "loss": s["loss"] + 1.0} for s in steps[70:80]]  # resumed mid-epoch 2
    write_jsonl(steps_path, steps[:80] + replayed + steps[80:])
    loaded = records.load(folder)
    assert [s["step"] for s in loaded.steps] == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    assert [s["loss"] for s in loaded.steps[70:80]] == [s["loss"] for s in replayed]


def test_memorization_falls_back_to_the_epoch_valid_nll(tmp_path):
    folder = make_run(tmp_path, ("memorization",))
    for path in (folder / "valid").glob("utterances_epoch*.jsonl"):
        write_jsonl(path, [{k: v for k, v in u.items() if k != "loss"} for u in read_jsonl(path)])
    evidence = diagnose.run(folder)["memorization"]["evidence"]
    nll = [e["nll"] for e in read_jsonl(folder / "epochs.jsonl")]
    assert evidence["never_seen_source"] == "valid NLL per epoch (epochs.jsonl nll)"
    assert evidence["never_seen_drop_mean"] == pytest.approx(np.mean(-np.diff(nll)))
    assert evidence["test"].startswith("one-sided Wilcoxon")


def test_a_rising_valid_nll_with_a_falling_wer_is_no_memorization(tmp_path):
    """The clean demo's pattern: re-exposed training loss falls and the valid NLL rises, but
    the valid WER of data never trained on still falls, so more epochs still help."""
    folder = make_run(tmp_path, ("memorization",), mislabelled=[])
    wer = {}
    for epoch in range(1, EPOCHS + 1):
        path = folder / "valid" / f"utterances_epoch{epoch}.jsonl"
        rows = [{**u, "word_errors": u["words"] // (epoch + 1)} for u in read_jsonl(path)]
        write_jsonl(path, rows)
        wer[epoch] = 100 * sum(u["word_errors"] for u in rows) / sum(u["words"] for u in rows)
    result = diagnose.run(folder)
    evidence = result["memorization"]["evidence"]
    assert evidence["never_seen_drop_mean"] < 0 < evidence["train_drop_mean"]
    rises = [b["never_seen_wer_rise"] for b in evidence["boundaries"]]
    assert [r["point"] for r in rises] == pytest.approx([wer[2] - wer[1], wer[3] - wer[2]])
    assert all(r["ci95"][1] < 0 for r in rises)
    assert evidence["never_seen_stalled_after"] == [] and not result["memorization"]["passed"]
    assert not any("memorises" in sentence for sentence in result["verdict"])
    assert evidence["reexposure_beyond_never_seen"] and result["epoch_boundary"]["detected"]
    assert any(s.startswith("Re-exposure explains it") for s in result["verdict"])


def test_a_loss_outlier_transcribed_as_labelled_is_hard_not_a_suspect(tmp_path):
    folder = make_run(tmp_path, mislabelled=[])
    path = folder / "log" / "train_utterances.jsonl"
    rows = read_jsonl(path)
    last = [u for u in rows if u["epoch"] == EPOCHS]
    last[0]["loss"] += MISLABEL_EFFECT  # an outlier loss ...
    last[0]["hyp"] = last[0]["ref"]  # ... on an utterance the model transcribes as labelled
    last[1]["loss"] += MISLABEL_EFFECT  # an outlier labelled otherwise than heard: a suspect
    last[1]["ref"] = " ".join("mislabelled" for _ in last[1]["ref"].split())
    write_jsonl(path, rows)
    result = diagnose.run(folder)
    noise = result["label_noise"]
    assert [s["id"] for s in noise["suspects"]] == [last[1]["id"]]
    assert noise["suspects"][0]["wer"] >= checks.NOISE_MIN_WER
    assert noise["outliers_heard_as_labelled"] == 1 and noise["transcripts_checked"]


def test_a_sorted_order_the_loss_does_not_follow_is_reported_not_blamed(tmp_path):
    """Sorted batches whose loss does not depend on length: the order is no cause of the drop,
    but the verdict still says the batches come sorted."""
    folder = make_run(tmp_path, ("ordering",), mislabelled=[])
    path = folder / "log" / "steps.jsonl"
    steps = read_jsonl(path)
    flat = [{**s, "loss": float(_level(s["step"]))} for s in steps]  # no length effect
    write_jsonl(path, flat)
    result = diagnose.run(folder)
    ordering = result["epoch_boundary"]["tests"][1]
    assert ordering["cause"] == "ordering" and not ordering["passed"]
    assert ordering["evidence"]["order_not_random"]
    assert ordering["evidence"]["length_vs_position_rho"] == pytest.approx(1.0)
    order = [s for s in result["verdict"] if s.startswith("Batches come in a sorted")]
    assert len(order) == 1 and "does not explain the loss curve" in order[0]
    assert "sorting: ascending" in order[0]


def test_a_learning_rate_jump_is_told_from_a_warmup_schedule(tmp_path):
    """Noam warmup moves the learning rate at every step, boundaries included: no jump. A
    restart at a tenth of the rate is one, although the warmup's step changes are larger."""
    folder = make_run(tmp_path, mislabelled=[])
    path = folder / "log" / "steps.jsonl"
    steps = read_jsonl(path)
    warmup = [{**s, "lr": 1e-4 * min(s["step"] / 400, 1.0)} for s in steps]
    write_jsonl(path, warmup)
    assert diagnose.run(folder)["epoch_boundary"]["tests"][3]["passed"] is False
    restarted = [
        {**s, "lr": s["lr"] / 10 / (s["epoch_step"] ** 0.5) if s["epoch"] == 2 else s["lr"]}
        for s in warmup
    ]
    write_jsonl(path, restarted)
    schedule = diagnose.run(folder)["epoch_boundary"]["tests"][3]
    assert schedule["cause"] == "schedule" and schedule["passed"]
    jump = schedule["evidence"]["boundaries"][0]
    assert jump["lr_before"] == pytest.approx(1e-4 * STEPS_PER_EPOCH / 400)
    assert jump["lr_after"] == pytest.approx(1e-4 * (STEPS_PER_EPOCH + 1) / 400 / 10)


def test_degenerate_logs_are_reported_not_crashed_on(tmp_path):
    """One epoch, non-finite and constant losses, a cut-off last line: every analysis either
    runs or says why not."""
    write_jsonl(tmp_path / "epochs.jsonl", [{"epoch": 1, "loss": float("nan"), "WER": 12.5}])
    steps = [{"epoch": 1, "step": i, "loss": None if i % 2 else 1.0, "lr": 0.0} for i in range(9)]
    write_jsonl(tmp_path / "log" / "steps.jsonl", steps)
    with open(tmp_path / "log" / "steps.jsonl", "a") as f:
        f.write('{"epoch": 1, "st')
    result = diagnose.run(tmp_path)
    assert (result["best_loss_epoch"], result["best_wer_epoch"]) == (None, 1)
    assert result["epochs"][0]["loss"] is None  # NaN is written as null: strict JSON
    assert "per-step losses of at least two epochs" in result["skipped"]["epoch_boundary"]
    assert "needs both a min-loss and a min-WER epoch" in result["skipped"]["wer_difference"]
    assert any("line 10 is not JSON" in note for note in result["notes"])
    assert set(result["available_analyses"]) == {"best_epochs", "best_metric_epoch"}


def test_repetition_loops_are_found_with_their_share_of_the_wer(tmp_path, diagnosed):
    _, clean = diagnosed["clean"]
    assert clean["repetition_loops"]["flagged"] is False
    folder = make_run(tmp_path)
    path = folder / "valid" / "utterances_epoch2.jsonl"
    rows = read_jsonl(path)
    rows[0]["hyp"] = "turn left " + "at the bridge " * 5  # 4+ copies over 8+ words
    rows[0]["word_errors"] = 12
    rows[1].update(loop_stopped=True, word_errors=3)  # ended by the recipe's loop stop
    rows[2]["hyp"] = "no no no no"  # speech, not a loop
    write_jsonl(path, rows)
    result = diagnose.run(folder)
    loops = result["repetition_loops"]
    assert loops["flagged"]
    by_epoch = {e["epoch"]: e for e in loops["epochs"]}
    assert [e["looping"] for e in loops["epochs"]] == [[], [rows[0]["id"], rows[1]["id"]], []]
    errors = sum(r["word_errors"] for r in rows)
    assert by_epoch[2]["word_error_share"] == pytest.approx(15 / errors)
    assert by_epoch[2]["wer"] == pytest.approx(100 * errors / sum(r["words"] for r in rows))
    rest = rows[2:]
    assert by_epoch[2]["wer_without_loops"] == pytest.approx(
        100 * sum(r["word_errors"] for r in rest) / sum(r["words"] for r in rest)
    )
    assert "Valid transcripts with repetition loops: epoch 2: 2 (" in " ".join(result["verdict"])
    report = (folder / "diagnostics" / "report.md").read_text()
    assert "## Repetition loops in the valid transcripts" in report


TEXT_GAIN = 0.5  # loss a sentence loses once trained on in another voice
SHIFT_BATCH = 4


def make_shift_run(
    folder, sentences, voices, valid_voices, valid_shift=0.0, shared_text=True, seed=0
):
    """One epoch on ``sentences`` x ``voices`` (spk_id = voice) in random order, validated on
    20 other sentences spoken by ``valid_voices``; ``valid_shift`` is added to the valid NLL.
    Without ``shared_text`` every voice speaks its own sentences.

    A first visit's loss falls with the model's progress and by TEXT_GAIN when its sentence was
    already trained on in another voice: the demo corpus's confound.
    """
    rng = np.random.default_rng(seed)
    rows = [
        (s if shared_text else s * len(voices) + j, v)
        for s in range(sentences)
        for j, v in enumerate(voices)
    ]
    order = rng.permutation(len(rows))
    voice_effect = {v: rng.normal(0, 0.1) for v in sorted({*voices, *valid_voices})}
    trained_texts, utterances, steps = set(), [], []
    n_steps = -(-len(rows) // SHIFT_BATCH)
    for step in range(n_steps):
        batch = [rows[i] for i in order[step * SHIFT_BATCH : (step + 1) * SHIFT_BATCH]]
        position = (step + 1) / n_steps
        for sentence, voice in batch:
            loss = 1.0 + 0.5 * (1 - position) + voice_effect[voice] + rng.normal(0, 0.1)
            loss -= TEXT_GAIN * (sentence in trained_texts)
            utterances.append(
                {
                    "epoch": 1,
                    "id": f"{voice}_s{sentence:04d}",
                    "loss": float(loss),
                    "seen": 1,
                    "position": position,
                    "hyp": f"sentence {sentence}",
                    "ref": f"Sentence {sentence}.",
                    "spk_id": voice,
                }
            )
        trained_texts |= {sentence for sentence, _ in batch}
        steps.append({"epoch": 1, "step": step + 1, "loss": 1.0, "position": position})
    valid = [
        {
            "id": f"{voice}_v{sentence}",
            "ref": f"valid sentence {sentence}",
            "hyp": f"valid sentence {sentence}",
            "word_errors": 0,
            "words": 3,
            "char_errors": 0,
            "chars": 15,
            "spk_id": voice,
            "loss": float(1.0 + voice_effect[voice] + valid_shift + rng.normal(0, 0.1)),
        }
        for sentence in range(20)
        for voice in valid_voices
    ]
    write_jsonl(folder / "log" / "train_utterances.jsonl", utterances)
    write_jsonl(folder / "log" / "steps.jsonl", steps)
    write_jsonl(folder / "valid" / "utterances_epoch1.jsonl", valid)
    write_jsonl(folder / "epochs.jsonl", [{"epoch": 1, "loss": 1.0, "WER": 10.0}])
    return folder


DEMO_VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp")
OTHER_VOICES = tuple(f"other{i}" for i in range(5))


def test_shared_sentences_in_several_voices_make_no_shift_claim(tmp_path):
    """The demo's shape: every sentence in five voices, valid from the same generator. Late
    first visits are easier only because their sentence was trained on in another voice; the
    naive comparison would call that a shift, the clean one finds too few unconfounded."""
    result = diagnose.run(make_shift_run(tmp_path, 60, DEMO_VOICES, DEMO_VOICES))
    shift = result["distribution_shift"]
    assert not shift["flagged"] and not shift["clean_comparison"]
    assert shift["confounded_ratio"] > 1.25 and shift["confounded_p_value"] < 1e-6
    late = [
        u for u in read_jsonl(tmp_path / "log" / "train_utterances.jsonl") if u["position"] >= 0.75
    ]
    assert shift["n_late_first_visits"] == len(late)
    assert shift["n_late_text_seen"] >= len(late) - 4
    assert "transcript trained on before" in shift["confound"]
    verdict = " ".join(result["verdict"])
    assert "No distribution-shift claim" in verdict and "harder" not in verdict


@pytest.mark.parametrize(
    ("voices", "valid_voices", "comparison"),
    [
        # Another sentence style, same voices: unique sentences leave a clean baseline.
        (("en-us",), ("en-us",), "valid speakers also in training"),
        # Another voice set: 150 training voices, so late visits of new voices exist.
        (tuple(f"spk{i}" for i in range(150)), OTHER_VOICES, "valid speakers new to training"),
    ],
)
def test_a_planted_shift_is_claimed_from_a_clean_comparison(
    tmp_path, voices, valid_voices, comparison
):
    sentences = 300 // len(voices)
    same = diagnose.run(
        make_shift_run(tmp_path / "same", sentences, voices, valid_voices, shared_text=False)
    )
    assert not same["distribution_shift"]["flagged"]
    assert same["distribution_shift"]["clean_comparison"]
    shifted = diagnose.run(
        make_shift_run(
            tmp_path / "shifted", sentences, voices, valid_voices, 0.5, shared_text=False
        )
    )
    shift = shifted["distribution_shift"]
    assert shift["flagged"] and shift["comparison"] == comparison
    assert [c["comparison"] for c in shift["comparisons"]] == [comparison]
    assert shift["valid_nll"] - shift["train_unseen_nll"] > 0.25  # half the planted 0.5
    assert "Valid utterances are harder" in " ".join(shifted["verdict"])


def test_mislabelled_late_visits_are_no_evidence_of_shift(tmp_path):
    """Wrong labels are new text, so late mislabelled visits join the clean baseline; their
    high loss would make a same-generator valid set look easier. Named suspects are left out."""
    folder = make_shift_run(tmp_path, 300, ("en-us",), ("en-us",), shared_text=False)
    path = folder / "log" / "train_utterances.jsonl"
    rows = read_jsonl(path)
    late = [u for u in rows if u["position"] >= 0.75]
    for u in late[::3]:
        u["loss"] += MISLABEL_EFFECT
    write_jsonl(path, rows)
    loaded = records.load(folder)
    assert checks.distribution_shift(loaded)["flagged"]
    named = [u["id"] for u in late[::3]]
    shift = checks.distribution_shift(loaded, named)
    assert not shift["flagged"] and shift["n_label_noise_suspects_left_out"] == len(named)
    assert shift["n_late_first_visits"] == len(late) - len(named)


def test_the_run_selection_metric_picks_the_reported_epoch(tmp_path):
    folder = make_run(tmp_path)
    epochs = read_jsonl(folder / "epochs.jsonl")
    bleus = [50.0, 61.5, 61.5][: len(epochs)]  # a tie: the earlier epoch is kept
    (folder / "epochs.jsonl").write_text(
        "".join(json.dumps({**e, "BLEU": b}) + "\n" for e, b in zip(epochs, bleus, strict=True))
    )
    run = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**run, "selection_metric": "BLEU"}))
    result = diagnose.run(folder)
    assert (result["selection_metric"], result["best_metric_epoch"]) == ("BLEU", 2)
    assert [r.get("BLEU") for r in result["epochs"]] == bleus
    sentence = (
        f"selection_metric is BLEU: train.py keeps epoch 2 (valid BLEU 61.50); the min-WER "
        f"epoch is {result['best_wer_epoch']}."
    )
    assert sentence in result["verdict"]
