"""Sanity mode on the real tiny.en: it reproduces a few utterances when the pipeline is right,
and fails loudly when the audio no longer follows its labels."""

import random
import subprocess
import sys

import pytest
from conftest import read_jsonl, require_espeak

SANITY = ["--sanity_utterances=4", "--sanity_max_epochs=6"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_en_dir):
    """Two train sentences in two voices (4 utterances): what sanity mode overfits."""
    require_espeak()
    root = tmp_path_factory.mktemp("sanity")
    args = [
        "hparams/demo_tiny_en.yaml",
        f"--whisper_hub={tiny_en_dir}",
        f"--data_folder={root / 'data'}",
        "--prep_options={n_train_sentences: 2, n_valid_sentences: 1, n_test_sentences: 1, "
        "n_nonspeech_test: 0, "
        "voices: [en-us, en-gb]}",
        "--num_workers=0",
        *SANITY,
    ]
    return root, args


def test_a_correct_pipeline_reproduces_its_utterances(corpus):
    root, args = corpus
    out = root / "correct"
    done = subprocess.run(
        [sys.executable, "train.py", *args, f"--output_folder={out}"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sanity check passed: 4 utterances reproduced" in (out / "log.txt").read_text()
    last = read_jsonl(out / "sanity" / "epochs.jsonl")[-1]
    assert last["wer"] == 0 and last["nll"] <= 0.05
    utterances = read_jsonl(out / "sanity" / "valid" / "utterances_last.jsonl")
    assert len({u["ref"] for u in utterances}) == 2
    assert [u["hyp"] for u in utterances] == [u["ref"] for u in utterances]
    assert not list((out / "save").glob("CKPT+*"))  # the check leaves no checkpoints


def test_sanity_mode_trains_the_rows_own_transcripts_whatever_the_non_speech_share(corpus):
    """Were non-speech replacement on, every row would train as silence and none reproduce."""
    root, args = corpus
    out = root / "nonspeech"
    done = subprocess.run(
        [
            sys.executable,
            "train.py",
            *args,
            "--nonspeech_probability=1.0",
            f"--output_folder={out}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sanity check passed: 4 utterances reproduced" in (out / "log.txt").read_text()


def test_audio_that_does_not_follow_its_labels_fails_loudly(corpus, monkeypatch):
    """The planted bug: every read returns some training utterance's encoder output."""
    import train
    from whisper_finetuning.data import encoder_cache

    root, args = corpus
    draw, load = random.Random(0), encoder_cache.EncoderCache.load
    entries = []

    def misaligned(cache, path, wav_ref):
        entries.append((path, wav_ref))
        return load(cache, *draw.choice(entries))

    monkeypatch.setattr(encoder_cache.EncoderCache, "load", misaligned)
    with pytest.raises(SystemExit) as failure:
        train.main([*args, f"--output_folder={root / 'buggy'}"])
    message = str(failure.value.code)
    assert message.startswith("error: sanity check FAILED: after 6 epochs on 4 utterances")
    assert "\n" not in message
    assert read_jsonl(root / "buggy" / "sanity" / "epochs.jsonl")[-1]["wer"] > 0
