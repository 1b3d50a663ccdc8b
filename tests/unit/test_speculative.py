"""Speculative decoding gives the model's own greedy transcript, whatever the assistant:
the model itself (every draft kept), another model, a 2-layer student; on random models and on
real espeak speech with the real tiny.en."""

import copy

import pytest
import torch
from conftest import make_random_whisper, speak

from whisper_finetuning.data.audio import read_audio
from whisper_finetuning.decoding.search import greedy_search
from whisper_finetuning.decoding.speculative import speculative_greedy
from whisper_finetuning.model.asr import WhisperASR
from whisper_finetuning.model.student import keep_decoder_layers


def _encoded(model, wav):
    with torch.no_grad():
        return model.encode(model.features(wav[None]))


@pytest.mark.parametrize("draft_tokens", [1, 3, 8])
def test_random_models_decode_as_greedy_search(random_whisper_dir, tmp_path, draft_tokens):
    model = WhisperASR(str(random_whisper_dir), freeze=True).eval()
    other = WhisperASR(str(make_random_whisper(tmp_path, random_whisper_dir, seed=1))).eval()
    generator = torch.Generator().manual_seed(0)
    for seconds in (1.0, 2.5):
        out = _encoded(model, 0.1 * torch.randn(int(16000 * seconds), generator=generator))
        (expected,), _ = greedy_search(model, out, max_new_tokens=12)
        for assistant in (model, other):
            hyp, (drafted, accepted) = speculative_greedy(
                model, assistant, out, model.prompt(), draft_tokens, max_new_tokens=12
            )
            assert hyp == expected
            if assistant is model:
                assert accepted == drafted  # the model drafting for itself: all kept


@pytest.mark.slow
def test_a_student_drafting_for_tiny_en_gives_its_transcripts(tiny_en_dir, tmp_path):
    model = WhisperASR(str(tiny_en_dir), freeze=True).eval()
    student = copy.deepcopy(model)
    keep_decoder_layers(student.model, 2)
    sentences = ("The quick brown fox jumps over the lazy dog.", "Please call me at nine.")
    for i, text in enumerate(sentences):
        out = _encoded(model, read_audio(speak(text, tmp_path / f"{i}.wav")))
        (expected,), _ = greedy_search(model, out)
        assert len(expected) > 5
        for assistant in (student, model):
            hyp, _ = speculative_greedy(model, assistant, out, model.prompt(), draft_tokens=4)
            assert hyp == expected
