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
    assert distill_benchmark.main([str(random_whisper_dir), f"--audio={manifest}"]) == 1
    assert capsys.readouterr().err == "error: give either --student or --cut\n"
