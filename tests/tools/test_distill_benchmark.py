"""python -m whisper_finetuning.distill_benchmark: the numbers' shape, and speculative
decoding's transcripts are the teacher's."""

import json

import pytest
from conftest import sine, write_manifest

from whisper_finetuning import distill_benchmark


def test_teacher_student_and_speculative_side_by_side(random_whisper_dir, tmp_path, capsys):
    rows = [
        {"ID": f"u{i}", "duration": 1, "wav": sine(tmp_path / f"u{i}.wav", 0.5 + i), "wrd": "hi"}
        for i in range(3)
    ]
    manifest = write_manifest(tmp_path / "m.csv", rows, ("ID", "duration", "wav", "wrd"))
    output = tmp_path / "numbers.json"
    args = [str(random_whisper_dir), "--cut=1", f"--audio={manifest}", f"--output={output}"]
    args.append("--max_new_tokens=8")  # a random model never ends by itself
    assert distill_benchmark.main(args) == 0
    numbers = json.loads(output.read_text())
    assert json.loads(capsys.readouterr().out) == numbers
    assert numbers["utterances"] == 3 and numbers["speculative_identical"] == 3
    assert numbers["speculative"]["wer"] == numbers["teacher"]["wer"]
    assert 0 <= numbers["draft_acceptance"] <= 1
    for system in ("teacher", "student", "speculative"):
        assert numbers[system]["utterances_per_s"] > 0
        assert numbers[system]["tokens_per_utterance"] == 8  # the limit: no EOT
        assert numbers[system]["decoder_ms_per_token"] > 0
        assert 0 < numbers[system]["encoder_share"] < 1
    assert numbers["student_speedup_per_token"] == pytest.approx(
        numbers["teacher"]["decoder_ms_per_token"] / numbers["student"]["decoder_ms_per_token"]
    )
    # both write 8 tokens an utterance: at the teacher's token count the student is as fast as
    # it was, and the figure follows from the per-system ones
    assert numbers["student_speedup_at_teacher_tokens"] == pytest.approx(numbers["student_speedup"])
    teacher, student = numbers["teacher"], numbers["student"]
    student_seconds = student["encoder_share"] * 3 / student["utterances_per_s"]
    student_seconds += 3 * teacher["tokens_per_utterance"] * student["decoder_ms_per_token"] / 1000
    assert numbers["student_speedup_at_teacher_tokens"] == pytest.approx(
        3 / teacher["utterances_per_s"] / student_seconds
    )
    assert distill_benchmark.main([str(random_whisper_dir), f"--audio={manifest}"]) == 1
    assert capsys.readouterr().err == "error: give either --student or --cut\n"


def test_a_multilingual_teacher_prompts_in_the_language_given(
    random_multilingual_dir, tmp_path, capsys
):
    from whisper_finetuning.model.sources import load_frozen

    wav = sine(tmp_path / "u.wav", 1.0)
    rows = [{"ID": "u", "duration": 1, "wav": wav, "wrd": "hallo"}]
    manifest = write_manifest(tmp_path / "m.csv", rows, ("ID", "duration", "wav", "wrd"))
    args = [str(random_multilingual_dir), "--cut=1", f"--audio={manifest}", "--max_new_tokens=4"]
    assert distill_benchmark.main(args) == 1
    assert "error: a multilingual Whisper needs a language" in capsys.readouterr().err
    assert distill_benchmark.main([*args, "--language=german"]) == 0
    teacher, _ = load_frozen(str(random_multilingual_dir), language="german")
    tokenizer = teacher.tokenizer
    assert teacher.prefix_tokens[:3] == tokenizer.convert_tokens_to_ids(
        ["<|startoftranscript|>", "<|de|>", "<|transcribe|>"]
    )
