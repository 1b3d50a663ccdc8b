"""A short multilingual fine-tune of the bundled base, exported: given each utterance's language,
transformers' pipeline hears what the recipe decoded."""

import csv
import subprocess
import sys

import pytest
import soundfile as sf
import transformers
from conftest import read_jsonl, require_espeak

from whisper_finetuning import export_hf


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """One epoch of the Swiss demo's settings on one sentence per language and split, kept by
    BLEU."""
    require_espeak()
    root = tmp_path_factory.mktemp("export_multilingual")
    done = subprocess.run(
        [
            sys.executable,
            "train.py",
            "hparams/demo_swiss_base.yaml",
            f"--data_folder={root / 'data'}",
            f"--output_folder={root / 'exp'}",
            "--prep_options={n_train_sentences: 1, n_valid_sentences: 1, n_test_sentences: 1, "
            "voices: {german: [de], french: [fr-ch], italian: [it]}, n_keep_sentences: 0, "
            "n_replay_sentences: 0, n_nonspeech_keep: 0}",  # merged into the yaml's: all set
            "--keep_test_csv=null",
            "--number_of_epochs=1",
            "--selection_metric=BLEU",
            "--encoder_window_seconds=30",  # what transformers pads to
            "--zero_shot_eval=False",
            "--diagnose_after_training=False",
            "--num_workers=0",
            # plain greedy, as a pipeline decodes by default: no temperature fallback (after one
            # epoch on one sentence, a low mean log-probability would sample again)
            "--logprob_threshold=null",
            "--no_speech_threshold=null",
            "--compression_ratio_threshold=null",
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return root


@pytest.mark.slow
def test_exported_multilingual_pipeline_transcribes_as_the_recipe_decoded(experiment, tmp_path):
    dest, _ = export_hf.export(experiment / "exp", tmp_path / "hf")
    pipe = transformers.pipeline("automatic-speech-recognition", model=str(dest), device="cpu")
    with open(experiment / "exp" / "manifests" / "valid.csv", newline="") as f:
        wavs = {row["ID"]: row["wav"] for row in csv.DictReader(f)}
    decoded = read_jsonl(experiment / "exp" / "valid" / "utterances_epoch1.jsonl")
    assert sorted(u["language"] for u in decoded) == ["french", "german", "italian"]
    for utt in decoded:
        path = wavs[utt["id"]].replace("$data_root", str(experiment / "data"))
        audio, rate = sf.read(path, dtype="float32")
        heard = pipe(
            {"raw": audio, "sampling_rate": rate},
            generate_kwargs={"language": utt["language"], "task": "transcribe", "num_beams": 1},
        )
        assert heard["text"].strip() == utt["hyp"] and utt["loop_stopped"] is False
