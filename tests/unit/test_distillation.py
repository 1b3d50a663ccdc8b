"""Distillation: the KL term on scripted logits equals its hand-computed value (the fused
loss against it: ``test_fast_loss.py``), maximally spaced student layers equal the teacher's
chosen layers at initialisation, and only a teacher with the student's frozen encoder reads the
student's encoder states (distill_weight 0: ``tests/recipe/test_distillation_recipe.py``)."""

import math
import shutil

import pytest
import torch
from conftest import make_random_whisper
from transformers import WhisperForConditionalGeneration

from whisper_finetuning.decoding.search import greedy_search
from whisper_finetuning.model import student as students
from whisper_finetuning.model.asr import WhisperASR
from whisper_finetuning.model.fast_loss import distillation_kl
from whisper_finetuning.training import distillation


def test_kl_equals_the_hand_computed_value():
    # teacher: softmax([0, ln 3]) = (1/4, 3/4); student: (1/2, 1/2)
    teacher = torch.tensor([[0.0, math.log(3)]])
    student = torch.tensor([[0.0, 0.0]])
    at_1 = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert distillation_kl(student, teacher, 1.0).item() == pytest.approx(at_1, rel=1e-6)
    # at temperature 2 the teacher is softmax([0, ln 3 / 2]) = (1, sqrt 3) / (1 + sqrt 3),
    # and the KL is scaled by 2 ** 2
    p = 1 / (1 + math.sqrt(3))
    at_2 = 4 * (p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5))
    assert distillation_kl(student, teacher, 2.0).item() == pytest.approx(at_2, rel=1e-6)
    assert distillation_kl(teacher, teacher, 2.0).item() == 0.0


def test_maximally_spaced_layers():
    assert students.spaced_layers(32, 2) == [0, 31]  # distil-large-v3
    assert students.spaced_layers(4, 2) == [0, 3]
    assert students.spaced_layers(12, 4) == [0, 3, 7, 11]
    assert students.spaced_layers(4, 4) == [0, 1, 2, 3]
    with pytest.raises(students.DistillationError, match="between 1 and the model's 4, not 5"):
        students.spaced_layers(4, 5)


@pytest.fixture(scope="module")
def four_layer_dir(tmp_path_factory, random_whisper_dir):
    """A random Whisper with 4 decoder layers (the fixture's has 2)."""
    model = WhisperForConditionalGeneration.from_pretrained(random_whisper_dir)
    config = model.config
    config.decoder_layers = 4
    torch.manual_seed(4)
    folder = tmp_path_factory.mktemp("four_layers")
    WhisperForConditionalGeneration(config).save_pretrained(folder)
    for path in random_whisper_dir.iterdir():
        if not (folder / path.name).exists():
            shutil.copy(path, folder / path.name)
    return folder


def test_a_student_starts_as_the_teachers_chosen_layers(four_layer_dir, tmp_path):
    teacher = WhisperASR(str(four_layer_dir), freeze=True)
    student = WhisperASR(str(four_layer_dir))
    assert students.keep_decoder_layers(student.model, 2) == [0, 3]
    layers = student.model.model.decoder.layers
    assert len(layers) == 2 and student.model.config.decoder_layers == 2
    for kept, chosen in zip(layers, [0, 3], strict=True):
        theirs = teacher.model.model.decoder.layers[chosen].state_dict()
        assert kept.state_dict().keys() == theirs.keys()
        assert all(torch.equal(value, theirs[name]) for name, value in kept.state_dict().items())
    ours = {k: v for k, v in student.model.state_dict().items() if ".decoder.layers." not in k}
    theirs = teacher.model.state_dict()
    assert all(torch.equal(value, theirs[name]) for name, value in ours.items())
    # the student searches with its key/value cache and saves as a 2-layer Whisper
    encoder_out = student.encode(student.features(torch.randn(1, 16000) * 0.1))
    hyps, _ = greedy_search(student, encoder_out, max_new_tokens=5)
    student.model.save_pretrained(tmp_path / "student")
    saved = WhisperForConditionalGeneration.from_pretrained(tmp_path / "student")
    assert saved.config.decoder_layers == 2
    tokens = torch.tensor([student.prompt() + hyps[0]])
    with torch.no_grad():
        ours = student.forward_decoder(tokens, encoder_out)
        reloaded = saved.proj_out(
            saved.model.decoder(input_ids=tokens, encoder_hidden_states=encoder_out)[0]
        )
    torch.testing.assert_close(ours, reloaded, rtol=1e-5, atol=1e-5)


def test_only_a_teacher_with_the_students_frozen_encoder_reads_its_states(
    random_whisper_dir, tmp_path
):
    student = WhisperASR(str(random_whisper_dir))  # frozen encoder by default
    teacher = WhisperASR(str(random_whisper_dir), freeze=True)
    assert distillation.Distiller(teacher, 1.0, 2.0, student).shares_encoder
    other = WhisperASR(str(make_random_whisper(tmp_path, random_whisper_dir, seed=1)))
    assert not distillation.Distiller(other, 1.0, 2.0, student).shares_encoder
    trained_encoder = WhisperASR(str(random_whisper_dir), freeze_encoder=False)
    assert not distillation.Distiller(teacher, 1.0, 2.0, trained_encoder).shares_encoder
