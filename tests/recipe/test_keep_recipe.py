"""Issue 33 in train.py: non-speech replacements and replay rows in the training batches,
L2-SP's exact penalty and gradient, and the keep test set's forgetting summary."""

import hashlib
import json

import pytest
import speechbrain as sb
import torch
from conftest import read_jsonl, sine, write_manifest
from recipe_runs import make_brain, make_corpus, manifest_hparams, prepared, recipe_args, run_forked

from whisper_finetuning.training.log import TrainingLog

TEXTS = ("a cat sat on the mat", "the dog ran", "birds sing at dawn", "rain again today")
KEEP = ("keep this line", "and this one")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keep")

    def rows(texts, prefix, seconds=1.0):
        return [
            {
                "ID": f"{prefix}{i}",
                "duration": seconds + i / 4,
                "wav": sine(folder / f"{prefix}{i}.wav", seconds + i / 4),
                "spk_id": f"s{i}",
                "wrd": text,
            }
            for i, text in enumerate(texts)
        ]

    manifests = {
        s: write_manifest(folder / f"{s}.csv", rows(TEXTS, "u")) for s in ("valid", "test")
    }
    manifests["train"] = write_manifest(folder / "train.csv", rows(TEXTS * 4, "u"))
    manifests["replay"] = write_manifest(folder / "replay.csv", rows(KEEP, "r"))
    manifests["keep"] = write_manifest(folder / "keep.csv", rows(KEEP, "k"))
    manifests["nonspeech"] = write_manifest(folder / "noise.csv", rows(("", ""), "n", 5.0))
    return manifests


def _hparams(whisper_dir, corpus, output, **values):
    return manifest_hparams(whisper_dir, corpus, output, decode_max_tokens=4, **values)


def test_replay_rows_and_nonspeech_clips_reach_the_training_set(
    random_whisper_dir, corpus, tmp_path
):
    hparams = _hparams(
        random_whisper_dir,
        corpus,
        tmp_path,
        replay_csv=str(corpus["replay"]),
        replay_ratio=0.2,
        nonspeech_probability=0.5,
        nonspeech_csv=str(corpus["nonspeech"]),
        keep_test_csv=str(corpus["keep"]),
    )
    datasets, _ = prepared(hparams)
    assert sorted(datasets) == ["keep", "test", "train", "valid"]  # the keep set: a test set
    train = datasets["train"]
    assert len(train) == 16 + 4  # round(16 * 0.2 / 0.8) replay slots
    whisper = hparams["whisper"]
    items = {item["id"]: item for item in train}  # epoch 0's examples
    nospeech = [whisper.no_speech, whisper.eot]
    replayed = [items[f"replay:{k}"] for k in range(4)]
    assert sorted(item["target_text"] for item in replayed) == sorted(KEEP * 2)
    for item in replayed:
        expected = whisper.encode_text(item["target_text"]) + [whisper.eot]
        assert item["tokens_eos"].tolist() == expected
    replaced = [item for item in items.values() if item["tokens_eos"].tolist() == nospeech]
    # the rows whose (seed, epoch 0, ID) hash falls under nonspeech_probability 0.5
    drawn = [u for u in items if not u.startswith("replay:") and _draw(hparams["seed"], 0, u) < 0.5]
    assert sorted(item["id"] for item in replaced) == sorted(drawn) and 0 < len(drawn) < 16
    for item in replaced:
        assert item["target_text"] == "" and item["tokens_bos"].tolist()[1] == whisper.no_speech
        # a clip of the 5 s noise manifest, cut to the row it replaces
        assert len(item["sig"]) == round(16000 * float(item["duration"]))


def test_l2sp_adds_exactly_its_penalty_and_its_gradient(random_whisper_dir, corpus, tmp_path):
    weight = 0.5
    hparams = _hparams(random_whisper_dir, corpus, tmp_path, l2sp_weight=weight, label_smoothing=0)
    datasets, _ = prepared(hparams)
    brain = make_brain(hparams, checkpointer=None)
    brain.training_log = TrainingLog(str(tmp_path / "log"), enabled=True, tensorboard=False)
    brain.epoch, brain.step, brain.batches_per_epoch = 1, 1, 1
    parameters = list(brain.modules.parameters())
    trained = [p for p in parameters if p.requires_grad]
    assert len(brain.l2sp.pairs) == len(trained) < len(parameters)  # trained ones only
    torch.manual_seed(0)
    deltas = [1e-3 * torch.randn_like(p) for p in trained]
    with torch.no_grad():
        for p, delta in zip(trained, deltas, strict=True):
            p.add_(delta)
    from speechbrain.dataio.batch import PaddedBatch

    batch = PaddedBatch([dict(item) for item in list(datasets["train"])[:4]])

    def loss_and_gradients(l2sp):
        brain.l2sp = l2sp
        brain.modules.zero_grad()
        loss = brain.compute_objectives(
            brain.compute_forward(batch, sb.Stage.TRAIN), batch, sb.Stage.TRAIN
        )
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in trained]

    l2sp = brain.l2sp
    with_penalty, gradients = loss_and_gradients(l2sp)
    without, plain = loss_and_gradients(None)
    # the perturbation as the parameters hold it (float32 rounding of theta0 + delta)
    held = [p.detach() - p0 for p, p0 in l2sp.pairs]
    expected = weight * sum((d.double() ** 2).sum() for d in held)
    assert torch.allclose((with_penalty - without).double(), expected, rtol=1e-4, atol=0)
    assert expected.item() == pytest.approx(
        weight * sum((d.double() ** 2).sum().item() for d in deltas), rel=1e-3
    )
    for g, g0, d in zip(gradients, plain, held, strict=True):
        assert torch.allclose(g - g0, 2 * weight * d, rtol=1e-3, atol=1e-7)


@pytest.mark.slow
def test_keep_test_csv_is_decoded_zero_shot_and_fine_tuned(tmp_path, random_whisper_dir):
    from conftest import require_espeak, speak

    require_espeak()
    spoken = make_corpus(tmp_path / "data")
    extra = {}
    for name, texts in (("keep", KEEP), ("replay", ("look at the moon", "close the door"))):
        rows = [
            {
                "ID": f"{name}{i}",
                "duration": 2.0,
                "wav": speak(text, tmp_path / "data" / f"{name}{i}.wav"),
                "spk_id": f"{name}{i}",
                "wrd": text,
            }
            for i, text in enumerate(texts)
        ]
        extra[name] = write_manifest(tmp_path / "data" / f"{name}.csv", rows)
    args = recipe_args(random_whisper_dir, spoken, tmp_path / "exp", tmp_path / "cache", epochs=1)
    args += [
        f"--keep_test_csv={extra['keep']}",
        f"--replay_csv={extra['replay']}",
        "--replay_ratio=0.2",
        "--nonspeech_probability=0.25",
        "--l2sp_weight=0.01",
    ]
    code, stderr = run_forked(args)
    assert code == 0, stderr[-3000:]
    exp = tmp_path / "exp"
    zero_shot = json.loads((exp / "zero_shot" / "summary_keep.json").read_text())
    fine_tuned = json.loads((exp / "summary_keep.json").read_text())
    result = json.loads((exp / "forgetting_keep.json").read_text())
    assert result["n_utterances"] == 2 and result["block"] == "spk_id"
    assert result["wer"]["zero_shot"] == zero_shot["wer"]
    assert result["wer"]["fine_tuned"] == fine_tuned["wer"]
    assert result["wer"]["difference"] == pytest.approx(fine_tuned["wer"] - zero_shot["wer"])
    assert (exp / "forgetting_keep.md").read_text().startswith("# Forgetting on keep\n")
    trained = [row["id"] for row in read_jsonl(exp / "log" / "train_utterances.jsonl")]
    assert sorted(u for u in trained if u.startswith("replay:")) == ["replay:0", "replay:1"]
    assert len(trained) == 8 + 2


def _draw(seed, epoch, utt_id):
    key = f"{seed}:{epoch}:{utt_id}:nonspeech".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8]) / 2**64
