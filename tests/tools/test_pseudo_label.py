"""python -m whisper_finetuning.pseudo_label: confidence as transformers computes it, the
filters on a scripted teacher whose WER is known, a rerun identical, a kill resumed."""

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import sine, write_manifest

from whisper_finetuning import pseudo_label
from whisper_finetuning.data import pseudo_labels
from whisper_finetuning.data.audio import read_audio
from whisper_finetuning.decoding.confidence import transcript_confidence
from whisper_finetuning.decoding.pseudo_labelling import label_rows
from whisper_finetuning.decoding.transcribe_rules import compression_ratio
from whisper_finetuning.evaluation.scoring import Normalizers
from whisper_finetuning.model.asr import EncoderStates, WhisperASR

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def whisper(random_whisper_dir):
    return WhisperASR(str(random_whisper_dir), freeze=True).eval()


@pytest.fixture
def audio_folder(tmp_path):
    folder = tmp_path / "audio"
    folder.mkdir()
    for i, seconds in enumerate([1.0, 1.5, 0.5, 2.0, 1.2, 0.8]):
        sine(folder / f"clip{i}.wav", seconds)
    return folder


def test_confidence_equals_transformers_on_the_same_tokens(whisper, tmp_path):
    """Mean log-probability (EOT included, suppressed tokens masked) and the no-speech
    probability at the start of transcript, from transformers' own forward pass."""
    wav = read_audio(sine(tmp_path / "a.wav", 1.0))[None]
    hyp = whisper.encode_text("hello there world")
    prompt = whisper.prompt()
    with torch.no_grad():
        out = whisper.encode(whisper.features(wav))
        (mean_logprob, no_speech), = transcript_confidence(
            whisper, EncoderStates([([0], out)]), [prompt], [hyp]
        )  # fmt: skip
        logits = (
            whisper.model(
                input_features=whisper.features(wav),
                decoder_input_ids=torch.tensor([prompt + hyp]),
            )
            .logits[0]
            .float()
        )
    config = whisper.generation_config
    logits[:, config.suppress_tokens] = -torch.inf
    first = len(prompt) - 1
    logits[first, config.begin_suppress_tokens] = -torch.inf
    targets = hyp + [whisper.eot]
    log_probs = logits[first:].log_softmax(-1)
    expected = sum(log_probs[i, t].item() for i, t in enumerate(targets)) / len(targets)
    raw = whisper.model(
        input_features=whisper.features(wav), decoder_input_ids=torch.tensor([prompt])
    ).logits[0, 0]
    nospeech_id = whisper.tokenizer.convert_tokens_to_ids("<|nocaptions|>")
    assert mean_logprob == pytest.approx(expected, abs=1e-4)
    assert no_speech == pytest.approx(raw.softmax(-1)[nospeech_id].item(), abs=1e-6)


def test_compression_ratio():
    assert compression_ratio("") == 0.0
    assert compression_ratio("the quick brown fox jumps over the lazy dog") < 1.2
    assert compression_ratio("no no no no " * 20) > 2.4  # openai's loop threshold


class ScriptedSearch:
    """A teacher that says the given texts, one per row in input order."""

    def __init__(self, whisper, texts):
        self.tokens = [whisper.encode_text(t) if t else [] for t in texts]

    def __call__(self, model, states, prompts):
        said, self.tokens = self.tokens[: len(prompts)], self.tokens[len(prompts) :]
        return said, [False] * len(said)


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_filters_remove_what_a_scripted_teacher_got_wrong(whisper, tmp_path, audio_folder):
    references = ["the cat sat on the mat", "the cat sat on the mat", "", "a b", "go", "x"]
    said = [
        "The cat sat on the mat.",  # WER 0
        "the cat sat on a mat",  # 1 of 6 words: 16.67 > 10
        "no reference here",  # kept: nothing to compare
        "",  # an empty label
        "go " * 30,  # a loop: compression ratio > 2.4, WER 2900
        "x y z w v u t s r q",  # WER 900
    ]
    rows = [
        {"ID": f"u{i}", "duration": 1, "wav": audio_folder / f"clip{i}.wav", "wrd": ref, "spk": i}
        for i, ref in enumerate(references)
    ]
    manifest = write_manifest(tmp_path / "in.csv", rows, ("ID", "duration", "wav", "wrd", "spk"))
    inputs = pseudo_labels.input_rows(manifest)
    journal = pseudo_labels.Journal(tmp_path / "out.all.csv", pseudo_labels.output_columns(inputs))
    normalize = Normalizers.of("auto", whisper)
    search = ScriptedSearch(whisper, said)
    assert not label_rows(whisper, inputs, journal, search, normalize, batch_size=4, bar=False)
    order = [r["ID"] for r in inputs]
    filters = pseudo_labels.Filters(wer_threshold=10, max_compression_ratio=2.4)
    removed, kept = pseudo_labels.write_filtered(journal, order, tmp_path / "out.csv", filters)
    assert removed == {
        "empty": 1,
        "wer_threshold": 4,  # u1, u3 (100: nothing said), u4, u5
        "max_no_speech_prob": 0,
        "min_mean_logprob": 0,
        "max_compression_ratio": 1,  # u4
    }
    assert kept == 2
    out = _read(tmp_path / "out.csv")
    assert list(out[0]) == [
        *("ID", "duration", "wav", "wrd", "label_source", "mean_logprob", "no_speech_prob"),
        *("compression_ratio", "reference_wer", "spk"),
    ]
    assert [(r["ID"], r["wrd"], r["reference_wer"], r["spk"]) for r in out] == [
        ("u0", "The cat sat on the mat.", "0.00", "0"),
        ("u2", "no reference here", "", "2"),
    ]
    every = {r["ID"]: r for r in _read(tmp_path / "out.all.csv")}
    wers = ["0.00", "16.67", "", "100.00", "2900.00", "900.00"]
    assert [every[u]["reference_wer"] for u in order] == wers
    assert {r["label_source"] for r in every.values()} == {"pseudo"}
    assert every["u0"]["duration"] == "1.000" and every["u2"]["duration"] == "0.500"
    assert float(every["u4"]["compression_ratio"]) > 2.4 > float(every["u0"]["compression_ratio"])
    # Refiltering without the WER filter labels nothing again.
    removed, kept = pseudo_labels.write_filtered(
        journal, order, tmp_path / "loose.csv", pseudo_labels.Filters(wer_threshold=None)
    )
    assert kept == 5 and removed["empty"] == 1


def _cli(model, audio, output, *extra):
    return [
        str(model),
        f"--audio={audio}",
        f"--output={output}",
        "--batch_size=1",
        "--max_new_tokens=4",
        "--noprogressbar",
        *extra,
    ]


def test_rerun_is_identical_and_labels_nothing(random_whisper_dir, audio_folder, tmp_path, capsys):
    output = tmp_path / "m.csv"
    assert pseudo_label.main(_cli(random_whisper_dir, audio_folder, output, "--batch_size=4")) == 0
    first, journal = output.read_bytes(), pseudo_labels.journal_path(output).read_bytes()
    # a random model says nothing: every label is empty, none is kept
    assert [r["ID"] for r in _read(pseudo_labels.journal_path(output))] == [
        f"clip{i}" for i in range(6)
    ]
    assert not _read(output) and "empty on: removed 6" in capsys.readouterr().out
    assert pseudo_label.main(_cli(random_whisper_dir, audio_folder, output)) == 0
    assert output.read_bytes() == first
    assert pseudo_labels.journal_path(output).read_bytes() == journal
    assert "labelled 6 of 6 rows (6 by an earlier run)" in capsys.readouterr().out


def test_a_killed_run_resumes_without_duplicates(
    random_whisper_dir, audio_folder, tmp_path, capsys
):
    reference = tmp_path / "whole" / "m.csv"
    assert pseudo_label.main(_cli(random_whisper_dir, audio_folder, reference)) == 0
    output = tmp_path / "killed" / "m.csv"
    journal = pseudo_labels.journal_path(output)
    command = [sys.executable, "-m", "whisper_finetuning.pseudo_label"]
    child = subprocess.Popen(
        command + _cli(random_whisper_dir, audio_folder, output), cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 3:  # 2 rows labelled
            break
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    labelled = len(journal.read_text().splitlines()) - 1
    assert 2 <= labelled < 6 and not output.exists()
    with open(journal, "a") as f:
        f.write("clip5,0.800,/cut/short")  # the kill came in the middle of a line
    assert pseudo_label.main(_cli(random_whisper_dir, audio_folder, output)) == 0
    assert f"({labelled} by an earlier run)" in capsys.readouterr().out
    # each row once, in input order, as the uninterrupted run wrote them
    assert journal.read_bytes() == pseudo_labels.journal_path(reference).read_bytes()
    assert output.read_bytes() == reference.read_bytes()


def test_bad_input_is_one_error_line(random_whisper_dir, tmp_path, capsys):
    code = pseudo_label.main(_cli(random_whisper_dir, tmp_path / "nothing", tmp_path / "m.csv"))
    assert code == 1
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'nothing'} is not an audio file, a folder or a CSV manifest\n"
    )
    journal = tmp_path / "other.all.csv"
    journal.write_text("ID,wrd\nx,y\n")
    sine(tmp_path / "a.wav", 1.0)
    code = pseudo_label.main(_cli(random_whisper_dir, tmp_path / "a.wav", tmp_path / "other.csv"))
    assert code == 1
    assert capsys.readouterr().err.startswith(f"error: {journal} was written with the columns")
    assert journal.read_text() == "ID,wrd\nx,y\n"  # nothing already written is lost
