"""A short real fine-tune of tiny.en, exported: the pipeline hears what the recipe decoded."""

import json

import numpy as np
import pytest
import transformers
from conftest import fine_tune_tiny_en, read_jsonl, run_audio

from whisper_finetuning import export_hf
from whisper_finetuning.export.huggingface import CT2_SUBFOLDER


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, tiny_en_dir):
    """One epoch of cross-attention fine-tuning of the real tiny.en on 8 utterances."""
    root = tmp_path_factory.mktemp("export")
    return fine_tune_tiny_en(root, tiny_en_dir, "--test_beam_size=5")


@pytest.mark.slow
def test_exported_pipeline_transcribes_as_the_recipe_decoded(experiment, tmp_path):
    """Greedy valid transcripts and beam-5 test transcripts, as the pipeline gives them."""
    dest, _ = export_hf.export(experiment / "exp", tmp_path / "hf", ct2=True)
    selected = json.loads((dest / "selected_checkpoint.json").read_text())
    assert selected["epoch"] == 1 and selected["encoder_window_seconds"] == 30
    pipe = transformers.pipeline("automatic-speech-recognition", model=str(dest), device="cpu")
    for stage, generate_kwargs in (
        ("valid/utterances_epoch1", {"num_beams": 1}),
        ("utterances_test", {"num_beams": 5}),
    ):
        decoded = read_jsonl(experiment / f"exp/{stage}.jsonl")
        assert len(decoded) >= 2
        for utt in decoded:
            audio = run_audio(experiment, utt["id"])
            heard = pipe({"raw": audio, "sampling_rate": 16000}, generate_kwargs=generate_kwargs)
            # Equal wherever the recipe's loop stop did not end a hypothesis: here, everywhere.
            assert heard["text"].strip() == utt["hyp"] and utt["loop_stopped"] is False

    # The CTranslate2 export decodes greedily as the recipe did (its beam search is its own).
    import ctranslate2

    ct2_model = ctranslate2.models.Whisper(str(dest / CT2_SUBFOLDER))
    prompt = pipe.tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|notimestamps|>"])
    for utt in read_jsonl(experiment / "exp/valid/utterances_epoch1.jsonl"):
        audio = run_audio(experiment, utt["id"])
        features = pipe.feature_extractor(audio, sampling_rate=16000, return_tensors="np")
        result = ct2_model.generate(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(features.input_features)),
            [prompt],
            beam_size=1,
        )
        assert pipe.tokenizer.decode(result[0].sequences_ids[0]).strip() == utt["hyp"]


def test_export_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert export_hf.main([str(tmp_path), str(tmp_path / "out")]) == 1
    assert "hyperparams.yaml not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
