"""train.py with non-speech rows (empty transcripts) in every split: trained, decoded, scored."""

import json

import numpy as np
import pytest
import soundfile as sf
from conftest import read_jsonl, require_espeak, write_manifest
from recipe_runs import make_corpus, recipe_args, run_forked

from whisper_finetuning.data import manifests as dataio

pytestmark = pytest.mark.slow


def noise(path, seconds, seed):
    """White noise at -20 dBFS RMS."""
    samples = np.random.default_rng(seed).normal(0, 0.1, int(16000 * seconds))
    sf.write(path, samples.astype(np.float32), 16000)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, random_whisper_dir):
    require_espeak()
    root = tmp_path_factory.mktemp("nonspeech")
    corpus = make_corpus(root / "data")
    for seed, split in enumerate(("train", "valid", "test")):
        rows = [
            {"ID": k, **row} for k, row in dataio.load_manifest(corpus[split], root).data.items()
        ]
        for i in range(2):
            wav = noise(root / "data" / f"noise_{split}{i}.wav", 1.5, 10 * seed + i)
            rows.append(
                {"ID": f"noise_{split}{i}", "duration": 1.5, "wav": wav, "spk_id": "n", "wrd": ""}
            )
        corpus[split] = write_manifest(root / "data" / f"{split}.csv", rows)
    args = recipe_args(random_whisper_dir, corpus, root / "exp", root / "cache", epochs=1)
    code, stderr = run_forked(args)
    assert code == 0, stderr[-3000:]
    return root / "exp"


def test_nonspeech_rows_are_trained_decoded_and_scored(run):
    trained = {row["id"] for row in read_jsonl(run / "log" / "train_utterances.jsonl")}
    assert {"noise_train0", "noise_train1"} <= trained
    summary = json.loads((run / "summary_test.json").read_text())
    assert summary["nonspeech"]["n"] == 2
    assert summary["n_utterances"] == 2  # the speech rows alone make the WER
    found = [row["id"] for row in read_jsonl(run / "nonspeech_test.jsonl")]
    assert found == ["noise_test0", "noise_test1"]
    valid = json.loads((run / "valid" / "summary_epoch1.json").read_text())
    assert valid["nonspeech"]["n"] == 2
