"""Speculative decoding gives the model's own greedy transcript, whatever the assistant:
the model itself (every draft kept), another model, a 2-layer student; on random models and on
real espeak speech with the real tiny.en."""

import copy
import json
from types import SimpleNamespace

import pytest
import soundfile as sf
import torch
from conftest import make_random_whisper, speak

from whisper_finetuning.data.audio import read_audio
from whisper_finetuning.decoding.search import GreedySearch, greedy_attempts, greedy_search
from whisper_finetuning.decoding.speculative import (
    SpeculativeSearch,
    assisted_search,
    speculative_attempt,
    speculative_greedy,
)
from whisper_finetuning.decoding.transcribe_rules import TranscribeRules
from whisper_finetuning.evaluation.scoring import Normalizers
from whisper_finetuning.model.asr import EncoderStates, WhisperASR
from whisper_finetuning.model.student import keep_decoder_layers
from whisper_finetuning.training import runs


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


def _states(model, seconds=(1.0, 2.5)):
    generator = torch.Generator().manual_seed(0)
    wavs = [0.1 * torch.randn(int(16000 * s), generator=generator) for s in seconds]
    outs = [_encoded(model, wav) for wav in wavs]
    return EncoderStates([([i], out) for i, out in enumerate(outs)])


@pytest.mark.parametrize(
    "rules",
    [
        TranscribeRules(),  # openai's: most random-model decodes fall back
        TranscribeRules((0.0, 0.5), None, 0.0, None, best_of=2),  # every row falls back
        TranscribeRules((0.0,), None, None, 0.0),  # everything silent: empty
    ],
)
def test_the_assisted_search_decodes_under_the_rules_as_greedy_search(
    random_whisper_dir, tmp_path, rules
):
    model = WhisperASR(str(random_whisper_dir), freeze=True).eval()
    other = WhisperASR(str(make_random_whisper(tmp_path, random_whisper_dir, seed=1))).eval()
    states = _states(model)
    expected, _ = GreedySearch(12, rules=rules)(model, states)
    assisted = SpeculativeSearch(other, max_new_tokens=12, rules=rules)
    assert assisted(model, states) == (expected, [False, False])
    assert assisted.counts[0] > 0
    # the attempt carries greedy search's log-probability and no-speech probability
    (out,) = [o for _, o in states.groups[:1]]
    (greedy,) = greedy_attempts(model, out, 12)
    drafted, _ = speculative_attempt(model, other, out, model.prompt(), 3, 12)
    assert drafted.tokens == greedy.tokens
    assert drafted.sum_logprob == pytest.approx(greedy.sum_logprob, abs=1e-4)
    assert drafted.no_speech_prob == pytest.approx(greedy.no_speech_prob, abs=1e-6)


def test_a_run_with_an_assistant_decodes_its_long_form_sets(random_whisper_dir, tmp_path):
    """train.py used to put the assisted search in hparams["test_search"], where the long-form
    decode read the rules from: an AttributeError (SpeculativeSearch had no rules)."""
    model = WhisperASR(str(random_whisper_dir), freeze=True).eval()
    silent = TranscribeRules((0.0,), None, None, 0.0)  # every window passed over
    hparams = {
        "assistant": str(random_whisper_dir),
        "test_beam_size": 1,
        "whisper": model,
        "whisper_cache": None,
        "decode_max_tokens": 4,
        "test_search": GreedySearch(4, rules=silent),
    }
    assisted = assisted_search(hparams, hparams["test_search"])
    assert isinstance(assisted, SpeculativeSearch) and assisted.rules == silent
    wav = tmp_path / "long.wav"
    noise = 0.1 * torch.randn(16000 * 35, generator=torch.Generator().manual_seed(0))
    sf.write(wav, noise.numpy(), 16000)
    manifest = tmp_path / "longform_test.csv"
    manifest.write_text(f"ID,duration,wav,wrd\nlong,35.0,{wav},hello there\n")
    hparams.update(
        longform_test_csv=[str(manifest)],
        data_folder=str(tmp_path),
        longform_condition_on_previous_text=False,
        loop_stop=None,
        whisper_hub=str(random_whisper_dir),
        test_batch_size=2,
        test_search=assisted,  # as train.py had it
    )
    brain = SimpleNamespace(
        test_search=assisted, normalize=Normalizers.of("auto", model), group_columns=["language"]
    )
    runs.decode_longform_sets(brain, hparams, str(tmp_path))
    summary = json.loads((tmp_path / "summary_longform_longform_test.json").read_text())
    assert summary["n_utterances"] == 1 and summary["wer"] == 100.0  # silent: nothing kept
