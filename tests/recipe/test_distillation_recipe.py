"""train.py's loss with a teacher: CE + distill_weight x KL to the teacher's logits on the same
prompts and transcripts; distill_weight 0 gives plain training's loss and gradients and does not
load the teacher."""

import csv
import shutil

import ctranslate2
import numpy as np
import pytest
import speechbrain as sb
import torch
from conftest import make_random_whisper, read_jsonl, sine, write_manifest
from recipe_runs import make_brain, manifest_hparams, prepared, recipe_args, run_forked
from speechbrain.dataio.batch import PaddedBatch
from transformers import WhisperForConditionalGeneration

from whisper_finetuning import pseudo_label
from whisper_finetuning.data.audio import read_audio
from whisper_finetuning.decoding.search import GreedySearch
from whisper_finetuning.decoding.transcribe_rules import TranscribeRules
from whisper_finetuning.export.huggingface import CT2_SUBFOLDER, export
from whisper_finetuning.model.asr import EncoderStates, WhisperASR
from whisper_finetuning.training import distillation
from whisper_finetuning.training.log import TrainingLog

TEXTS = ("a cat sat on the mat", "the dog ran", "birds sing at dawn")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distil")
    rows = [
        {"ID": f"u{i}", "duration": 1 + i / 2, "wav": sine(folder / f"u{i}.wav", 1 + i / 2)}
        | {"spk_id": f"s{i}", "wrd": text}
        for i, text in enumerate(TEXTS)
    ]
    return {s: write_manifest(folder / f"{s}.csv", rows) for s in ("train", "valid", "test")}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, random_whisper_dir):
    return make_random_whisper(tmp_path_factory.mktemp("teacher"), random_whisper_dir, seed=1)


def _loss_and_grads(whisper_dir, corpus, output, **overrides):
    hparams = manifest_hparams(whisper_dir, corpus, output, label_smoothing=0.0, **overrides)
    datasets, _ = prepared(hparams)
    distiller = distillation.from_hparams(hparams)
    brain = make_brain(hparams, checkpointer=None, distiller=distiller)
    brain.training_log = TrainingLog(str(output / "log"), enabled=False, tensorboard=False)
    brain.epoch, brain.step, brain.batches_per_epoch = 1, 1, 1
    batch = PaddedBatch([dict(item) for item in datasets["train"]])
    loss = brain.compute_objectives(
        brain.compute_forward(batch, sb.Stage.TRAIN), batch, sb.Stage.TRAIN
    )
    loss.backward()
    trained = [p for p in hparams["whisper"].parameters() if p.requires_grad]
    return loss.detach(), [p.grad.clone() for p in trained], hparams, batch


def test_distill_weight_zero_is_plain_training(random_whisper_dir, teacher_dir, corpus, tmp_path):
    plain, plain_grads, _, _ = _loss_and_grads(random_whisper_dir, corpus, tmp_path / "a")
    zero, zero_grads, _, _ = _loss_and_grads(
        random_whisper_dir, corpus, tmp_path / "b", teacher=str(teacher_dir), distill_weight=0.0
    )
    assert torch.equal(zero, plain)
    assert all(torch.equal(z, p) for z, p in zip(zero_grads, plain_grads, strict=True))


def test_distill_weight_zero_does_not_load_the_teacher(
    random_whisper_dir, teacher_dir, corpus, tmp_path, monkeypatch
):
    from whisper_finetuning.model import sources

    loaded = []
    load_frozen = sources.load_frozen
    monkeypatch.setattr(sources, "load_frozen", lambda *a: loaded.append(a[0]) or load_frozen(*a))
    hparams = manifest_hparams(
        random_whisper_dir,
        corpus,
        tmp_path,
        teacher=str(teacher_dir),
        distill_weight=0.0,
        student_decoder_layers=1,
    )
    assert distillation.from_hparams(hparams) is None and loaded == []
    assert len(hparams["whisper"].model.model.decoder.layers) == 1  # the cut still happens
    hparams["distill_weight"], hparams["student_decoder_layers"] = 0.5, 0
    assert distillation.from_hparams(hparams).weight == 0.5 and loaded == [str(teacher_dir)]


def test_the_loss_adds_the_kl_to_the_teachers_logits(
    random_whisper_dir, teacher_dir, corpus, tmp_path
):
    plain, _, _, _ = _loss_and_grads(random_whisper_dir, corpus, tmp_path / "a")
    loss, _, hparams, batch = _loss_and_grads(
        random_whisper_dir,
        corpus,
        tmp_path / "b",
        teacher=str(teacher_dir),
        distill_weight=0.5,
        distill_temperature=2.0,
    )
    # the KL by hand from transformers' own forward passes of both models
    student = hparams["whisper"].model
    teacher = WhisperForConditionalGeneration.from_pretrained(teacher_dir).eval()
    wavs, wav_lens = batch.sig
    tokens, token_lens = batch.tokens_bos
    targets, target_lens = batch.tokens_eos
    kl, positions = 0.0, 0
    for row in range(len(batch.id)):
        n_audio = int(round(wav_lens[row].item() * wavs.shape[1]))
        feats = hparams["whisper"].features(wavs[row : row + 1, :n_audio])
        n_targets = int(round(target_lens[row].item() * targets.shape[1]))
        prompt = batch.prompt_len[row]
        inputs = tokens[row : row + 1, : prompt + n_targets - 1]
        with torch.no_grad():
            s = student(input_features=feats, decoder_input_ids=inputs).logits[0, prompt - 1 :]
            t = teacher(input_features=feats, decoder_input_ids=inputs).logits[0, prompt - 1 :]
        p = (t / 2).log_softmax(-1)
        kl += (p.exp() * (p - (s / 2).log_softmax(-1))).sum().item()
        positions += n_targets
    expected = plain.item() + 0.5 * 4 * kl / positions
    assert loss.item() == pytest.approx(expected, rel=1e-4)


@pytest.fixture(scope="module")
def four_layer_dir(tmp_path_factory, random_whisper_dir):
    """A random Whisper with 4 decoder layers (the shared fixture's has 2)."""
    model = WhisperForConditionalGeneration.from_pretrained(random_whisper_dir)
    model.config.decoder_layers = 4
    torch.manual_seed(4)
    folder = tmp_path_factory.mktemp("four_layers")
    WhisperForConditionalGeneration(model.config).save_pretrained(folder)
    for path in random_whisper_dir.iterdir():
        if not (folder / path.name).exists():
            shutil.copy(path, folder / path.name)
    return folder


def test_a_2_layer_student_of_a_4_layer_teacher_trains_and_exports(
    four_layer_dir, corpus, tmp_path, capsys
):
    """train.py with the teacher and the cut; the export (and its CTranslate2 conversion, which
    decodes greedily as the student does) holds the trained 2-layer student,
    whose test transcripts, drafted by the teacher, are its own greedy ones under openai's
    transcribe rules (the run's seed, 1986), as every test search decodes."""
    exp = tmp_path / "exp"
    args = recipe_args(four_layer_dir, corpus, exp, tmp_path / "cache", epochs=1)
    args += [f"--teacher={four_layer_dir}", "--student_decoder_layers=2", "--data_checks=off"]
    args = [a for a in args if not a.startswith("--test_beam_size")]
    args += [f"--assistant={four_layer_dir}", "--test_beam_size=1"]  # the teacher drafts
    code, stderr = run_forked(args)
    assert code == 0, stderr[-3000:]
    dest, _ = export(exp, tmp_path / "hf", ct2=True)
    exported = WhisperForConditionalGeneration.from_pretrained(dest)
    assert exported.config.decoder_layers == 2
    saved = torch.load(next((exp / "save").glob("CKPT+*/whisper.ckpt")), weights_only=True)
    layer = "model.decoder.layers.1.fc1.weight"  # the student's second layer: trained
    assert torch.equal(exported.state_dict()[layer], saved[layer])
    teacher = WhisperForConditionalGeneration.from_pretrained(four_layer_dir)
    assert not torch.equal(saved[layer], teacher.state_dict()["model.decoder.layers.3.fc1.weight"])
    student = WhisperASR(str(dest), freeze=True).eval()
    ct2_student = ctranslate2.models.Whisper(str(dest / CT2_SUBFOLDER))
    ruled = GreedySearch(8, rules=TranscribeRules(seed=1986))
    for utterance in read_jsonl(exp / "utterances_test.jsonl"):
        wav = read_audio(corpus["test"].parent / f"{utterance['id']}.wav")
        with torch.no_grad():
            out = student.encode(student.features(wav[None]))
        (hyp,), _ = ruled(student, EncoderStates([([0], out)]))
        assert utterance["hyp"] == student.decode_text(hyp)
        # The CTranslate2 export decodes as the student does (plain greedy, nothing suppressed;
        # its length limit is its own, so the student's 8 tokens are compared as a prefix).
        (plain,), _ = GreedySearch(8)(student, EncoderStates([([0], out)]))
        features = student.features(wav[None]).numpy()
        (found,) = ct2_student.generate(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(features)),
            [student.prompt()],
            beam_size=1,
            suppress_blank=False,
            suppress_tokens=[],
        )
        expected = [t for t in plain if t != student.eot]
        ended = len(expected) < len(plain)
        assert found.sequences_ids[0][: None if ended else len(expected)] == expected
    # the student run labels audio as a pseudo-label SOURCE (its selected checkpoint)
    labels = tmp_path / "labels.csv"
    args = [str(exp), f"--audio={corpus['test']}", f"--output={labels}", "--max_new_tokens=4"]
    assert pseudo_label.main([*args, "--noprogressbar", "--wer_threshold=100000"]) == 0
    assert "labelling with CKPT+" in capsys.readouterr().out
    assert len(csv_rows(labels.with_name("labels.all.csv"))) == len(TEXTS)


def csv_rows(path):
    """The rows of a CSV file."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
