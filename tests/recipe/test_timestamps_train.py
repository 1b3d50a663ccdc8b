"""train.py with timestamp, long-form and previous-text examples: what it trains on, a kill and
resume ending where an uninterrupted run ends, and the long-form test sets decoded zero-shot
and fine-tuned. Tiny random Whisper, espeak-ng speech."""

import json

import numpy as np
import pytest
import soundfile as sf
from conftest import read_jsonl, write_manifest
from recipe_runs import SENTENCES, killed, make_corpus, recipe_args, run_forked
from test_faults import assert_same_final_state, steps_at_latest_checkpoint

from whisper_finetuning.data.audio import read_audio
from whisper_finetuning.training.checkpointing import CRASH_ENV

WHISPER_FORMATS = [
    "--timestamp_probability=0.5",
    "--longform_probability=0.5",
    "--condition_on_prev_probability=0.5",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The recipe corpus, plus a long-form set: one 37 s recording of all its sentences."""
    folder = tmp_path_factory.mktemp("corpus")
    manifests = make_corpus(folder)
    clips = [read_audio(folder / f"u{i}.wav").numpy() for i in range(len(SENTENCES))]
    gap = np.zeros(16000, dtype=np.float32)
    audio = np.concatenate([part for clip in clips for part in (clip, gap)])
    sf.write(folder / "long.wav", audio, 16000)
    manifests["longform"] = write_manifest(
        folder / "longform.csv",
        [
            {
                "ID": "long",
                "duration": f"{len(audio) / 16000:.3f}",
                "wav": folder / "long.wav",
                "wrd": " ".join(SENTENCES),
            }
        ],
    )
    return manifests


def arguments(random_whisper_dir, corpus, exp, cache):
    args = recipe_args(random_whisper_dir, corpus, exp, cache) + WHISPER_FORMATS
    return args + [f"--longform_test_csv=[{corpus['longform']}]", "--zero_shot_eval=True"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, random_whisper_dir, corpus):
    exp = tmp_path_factory.mktemp("reference") / "exp"
    cache = tmp_path_factory.mktemp("cache")
    code, stderr = run_forked(arguments(random_whisper_dir, corpus, exp, cache))
    assert code == 0, stderr[-3000:]
    return exp


def test_training_sees_joined_utterances_and_the_long_form_set_is_scored(reference):
    visits = read_jsonl(reference / "log" / "train_utterances.jsonl")
    joined = [v for v in visits if v["ref"] not in SENTENCES]
    assert joined
    for visit in joined:
        # Train rows u0-u7 of speakers s0, s1, s2 in turn (2 s each): a long-form example
        # from u<k> joins every later one of its speaker, in manifest order.
        k = int(visit["id"][1:])
        assert visit["ref"] == " ".join(SENTENCES[j] for j in range(k, 8, 3))
    for folder in (reference / "zero_shot", reference):
        summary = json.loads((folder / "summary_longform_longform.json").read_text())
        assert summary["n_utterances"] == 1 and summary["wer"] >= 0
        (utterance,) = read_jsonl(folder / "utterances_longform_longform.jsonl")
        assert utterance["windows"] >= 2  # 37 s: at least two 30 s windows
    results = json.loads((reference / "longform_results.json").read_text())
    assert set(results["longform"]) == {"zero_shot", "fine_tuned"}


def test_kill_and_rerun_builds_the_same_examples_and_ends_where_an_uninterrupted_run_ends(
    reference, random_whisper_dir, corpus, tmp_path
):
    args = arguments(random_whisper_dir, corpus, tmp_path / "exp", tmp_path / "cache")
    code, stderr = run_forked(args, env={CRASH_ENV: "train_batch:7"})
    assert killed(code), (code, stderr[-3000:])
    assert steps_at_latest_checkpoint(tmp_path / "exp") > 0
    code, stderr = run_forked(args)
    assert code == 0, stderr[-3000:]
    assert "Loading a checkpoint" in (tmp_path / "exp" / "log.txt").read_text()
    assert_same_final_state(tmp_path / "exp", reference)
