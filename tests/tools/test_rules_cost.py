"""The transcribe rules' cost table (docs/nonspeech.md) on tiny.en and espeak speech."""

import re

import torch
from conftest import sine, speak, write_manifest

from whisper_finetuning.data.audio import read_audio
from whisper_finetuning.decoding.search import GreedySearch, LoopStop
from whisper_finetuning.evaluation.scoring import Normalizers, Scorer
from whisper_finetuning.model.asr import EncoderStates, WhisperASR
from whisper_finetuning.profiling import rules_cost

ROWS = [
    ("a", "the quick brown fox jumps over the lazy dog"),
    ("b", "she sells sea shells by the sea shore"),
    ("quiet", ""),
]


def test_each_setting_gets_a_row_and_the_plain_one_scores_what_greedy_search_gives(
    tiny_en_dir, tmp_path, capsys
):
    for utt_id, text in ROWS:
        if text:
            speak(text, tmp_path / f"{utt_id}.wav", voice="en-gb-scotland")
        else:
            sine(tmp_path / f"{utt_id}.wav", 1.5)
    write_manifest(
        tmp_path / "test.csv",
        [
            {"ID": u, "duration": 2.0, "wav": f"$data_root/{u}.wav", "wrd": text}
            | {"language": "en", "dialect": "x"}
            for u, text in ROWS
        ],
        columns=("ID", "duration", "wav", "wrd", "language", "dialect"),
    )
    rules_cost.main([str(tiny_en_dir), str(tmp_path / "test.csv"), "--limit", "3"])
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0][2:] for row in table[1:]] == list(rules_cost.SETTINGS)
    plain = table[1].split(" | ")

    # the same rows decoded one at a time, without rules, and scored by the recipe's Scorer
    whisper = WhisperASR(str(tiny_en_dir)).eval()
    search = GreedySearch(96, LoopStop(min_repeats=4, min_tokens=16), None)
    scorer = Scorer(Normalizers.of("auto", whisper), ["dialect"])
    for utt_id, text in ROWS:
        wav = read_audio(str(tmp_path / f"{utt_id}.wav"))[None]
        with torch.no_grad():
            out = whisper.encode(whisper.features(wav, torch.ones(1)))
        tokens, _ = search(whisper, EncoderStates([([0], out)]))
        scorer.append([utt_id], [whisper.decode_text(tokens[0])], [text], {"dialect": ["x"]})
    summary = scorer.summary()
    assert plain[1] == f"{summary['wer']:.2f}"
    with_words = summary["nonspeech"]["n_with_words"]
    assert plain[3] == f"{with_words} of 1"
    assert plain[5] == "0"  # the plain setting changes none of its own hypotheses
    assert float(re.sub(r"\s*\|$", "", plain[6])) > 0
