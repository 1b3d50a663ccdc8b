"""train.py with ``objective: mwer``: the real tiny.en lowers the expected WER of its training
batches, a kill mid-epoch resumes exactly, ``mwer_init`` starts from a checkpoint or fails in
one line."""

import pytest
from conftest import read_jsonl
from recipe_runs import killed, make_corpus, one_line_error, recipe_args, run_forked
from test_faults import assert_same_final_state, steps_at_latest_checkpoint

from whisper_finetuning.analysis.diagnosis import checks, records
from whisper_finetuning.training import mwer
from whisper_finetuning.training.checkpointing import CRASH_ENV

MWER = ["--objective=mwer", "--mwer_beam_size=2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, random_whisper_dir, corpus):
    """An uninterrupted MWER run with waveform augmentation (it draws random numbers)."""
    exp = tmp_path_factory.mktemp("reference") / "exp"
    cache = tmp_path_factory.mktemp("cache")
    code, stderr = run_forked(
        recipe_args(random_whisper_dir, corpus, exp, cache, augment=True) + MWER
    )
    assert code == 0, stderr[-3000:]
    return exp


def test_mwer_steps_and_epochs_log_expected_and_oracle_wer_and_ce(reference):
    steps = read_jsonl(reference / "log" / "steps.jsonl")
    assert len(steps) == 8
    for step in steps:
        # the expected WER weighs the list by float32 probabilities (summing to 1 +- 1e-7)
        assert 0 <= step["oracle_wer"] <= step["expected_wer"] + 1e-4
        assert step["ce"] > 0
    epochs = read_jsonl(reference / "epochs.jsonl")
    for epoch in epochs:
        in_epoch = [s for s in steps if s["epoch"] == epoch["epoch"]]
        for key in mwer.STEP_KEYS:  # one batch per step: the epoch value is the steps' mean
            mean = sum(s[key] for s in in_epoch) / len(in_epoch)
            assert epoch[f"train_{key}"] == pytest.approx(mean)
    diagnosed = checks.mwer_expected_wer(records.load(reference))
    assert [(row["epoch"], row["train_expected_wer"], row["valid_wer"]) for row in diagnosed] == [
        (e["epoch"], e["train_expected_wer"], e["WER"]) for e in epochs
    ]


def test_kill_mid_epoch_and_rerun_ends_where_an_uninterrupted_mwer_run_ends(
    reference, random_whisper_dir, corpus, tmp_path
):
    args = recipe_args(
        random_whisper_dir, corpus, tmp_path / "exp", tmp_path / "cache", augment=True
    )
    args += MWER
    # Epoch 2, batch 3: batch 7's checkpoint is the one before (every 2 batches, after 6).
    code, stderr = run_forked(args, env={CRASH_ENV: "train_batch:7"})
    assert killed(code), (code, stderr[-3000:])
    done_before = steps_at_latest_checkpoint(tmp_path / "exp")
    code, stderr = run_forked(args)
    assert code == 0, stderr[-3000:]
    assert "Loading a checkpoint" in (tmp_path / "exp" / "log.txt").read_text()
    assert done_before == 6
    assert_same_final_state(tmp_path / "exp", reference)


def test_mwer_init_starts_from_a_checkpoint_folder_or_fails_in_one_line(
    reference, random_whisper_dir, corpus, tmp_path
):
    args = recipe_args(random_whisper_dir, corpus, tmp_path / "exp", tmp_path / "cache", epochs=1)
    code, stderr = run_forked(args + MWER + ["--mwer_init=5"])
    assert code == 1
    assert one_line_error(stderr) == (
        f"error: mwer_init: no kept checkpoint of epoch 5 in {tmp_path / 'exp' / 'save'}"
    )
    (kept,) = (reference / "save").glob("CKPT+*")
    code, stderr = run_forked(args + MWER + [f"--mwer_init={kept}"])
    assert code == 0, stderr[-3000:]
    assert (
        f"mwer_init: starting from {kept / 'whisper.ckpt'}"
        in (tmp_path / "exp" / "log.txt").read_text()
    )


def test_real_tiny_en_mwer_lowers_the_expected_wer_of_its_training_batches(corpus, tmp_path):
    settings = [
        "--objective=mwer",
        "--trainable_patterns=[encoder_attn]",
        "--encoder_window_seconds=10",
        "--decode_max_tokens=24",
        "--batch_size=4",
        "--lr=0.0005",
        "--warmup_steps=2",
        "--zero_shot_eval=False",
        "--diagnose_after_training=False",
    ]
    replaced = {setting.split("=")[0] for setting in settings}
    args = recipe_args("bundled:tiny.en", corpus, tmp_path / "exp", tmp_path / "cache", epochs=4)
    args = [arg for arg in args if arg.split("=")[0] not in replaced] + settings
    code, stderr = run_forked(args)
    assert code == 0, stderr[-3000:]
    epochs = read_jsonl(tmp_path / "exp" / "epochs.jsonl")
    # Each epoch's steps see all 8 training utterances, before each step's update.
    first, last = epochs[0]["train_expected_wer"], epochs[-1]["train_expected_wer"]
    print("train expected WER per epoch:", [round(e["train_expected_wer"], 2) for e in epochs])
    assert last < first
