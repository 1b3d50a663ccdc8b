"""Per-utterance language: each row's prompt comes from its manifest's `language` column (or the
`language` hparam), one batch may mix languages, and bad language input is one line."""

import csv

import pytest
import speechbrain as sb
import torch
from conftest import speak, write_manifest
from recipe_runs import (
    APPEND_ONLY,
    REWRITTEN_EACH_START,
    make_brain,
    one_line_error,
    prepared,
    run_forked,
)
from speechbrain.dataio.batch import PaddedBatch

from whisper_finetuning.training.config import load_hparams

COLUMNS = ("ID", "duration", "wav", "spk_id", "language", "wrd")
ROWS = (  # (voice, language column, text): names, codes, and one row left to the default
    ("de", "german", "Der Zug nach Zürich fährt um acht Uhr ab."),
    ("fr-ch", "fr", "Le lac de Genève est très beau en été."),
    ("it", "it", "Il treno per Lugano parte alle nove."),
    ("de+f2", "de", "Wir gehen heute an den See."),
    ("fr-fr", "French", "Nous mangeons ensemble une bonne fondue."),
    ("it+m4", "", "La posta si trova accanto al municipio."),
)
DEFAULT = "italian"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Six utterances in three languages; valid and test hold them all."""
    folder = tmp_path_factory.mktemp("multilingual")
    rows = [
        {
            "ID": f"u{i}",
            "duration": 3.0,
            "wav": speak(text, folder / f"u{i}.wav", voice),
            "spk_id": voice,
            "language": language,
            "wrd": text,
        }
        for i, (voice, language, text) in enumerate(ROWS)
    ]
    return {
        split: write_manifest(folder / f"{split}.csv", rows, COLUMNS)
        for split in ("train", "valid", "test")
    }


def hparams_for(whisper_dir, corpus, output, **overrides):
    """whisper_small.yaml over the corpus, with a multilingual checkpoint."""
    values = {
        "whisper_hub": str(whisper_dir),
        "data_folder": str(corpus["train"].parent),
        "output_folder": str(output),
        "skip_prep": True,
        "train_csv": str(corpus["train"]),
        "valid_csv": str(corpus["valid"]),
        "test_csv": [str(corpus["test"])],
        "language": DEFAULT,
        "encoder_cache": False,
        "decode_max_tokens": 8,
        "test_beam_size": 2,
        "num_workers": 0,
        **overrides,
    }
    return load_hparams("hparams/whisper_small.yaml", values)[0]


@pytest.mark.slow
def test_a_mixed_language_batch_decodes_each_row_as_it_would_alone(
    corpus, random_multilingual_dir, tmp_path
):
    hparams = hparams_for(random_multilingual_dir, corpus, tmp_path / "exp")
    whisper = hparams["whisper"]
    datasets, _ = prepared(hparams)
    items = [dict(item) for item in datasets["valid"]]
    expected = ["german", "french", "italian", "german", "french", DEFAULT]
    assert [item["language"] for item in items] == expected
    batch = PaddedBatch(items)
    prompts = [item["tokens_bos"][: item["prompt_len"]] for item in items]
    for prompt, language in zip(prompts, expected, strict=True):
        code = {"german": "de", "french": "fr", "italian": "it"}[language]
        assert prompt.tolist() == whisper.tokenizer.convert_tokens_to_ids(
            ["<|startoftranscript|>", f"<|{code}|>", "<|transcribe|>", "<|notimestamps|>"]
        )
    brain = make_brain({**hparams, "output_folder": str(tmp_path)}, checkpointer=None)
    brain.modules.eval()
    for stage in (sb.Stage.VALID, sb.Stage.TEST):
        with torch.no_grad():
            log_probs, (hyps, looped) = brain.compute_forward(batch, stage)
            for row, item in enumerate(items):
                alone, (alone_hyps, alone_looped) = brain.compute_forward(
                    PaddedBatch([item]), stage
                )
                length = alone.shape[1]
                torch.testing.assert_close(log_probs[row, :length], alone[0], atol=1e-4, rtol=0)
                assert (hyps[row], looped[row]) == (alone_hyps[0], alone_looped[0])
    # The prompt is what differs: the German row prompted as Italian scores otherwise.
    italian_bos = torch.cat([prompts[2], items[0]["tokens_bos"][4:]])
    as_italian = PaddedBatch([{**items[0], "tokens_bos": italian_bos}])
    with torch.no_grad():
        other, _ = brain.compute_forward(as_italian, sb.Stage.VALID)
    length = other.shape[1]
    assert not torch.allclose(other[0, 3:length], log_probs[0, 3:length], atol=1e-3)


def language_rows(corpus, tmp_path, values):
    """The corpus's train manifest with the `language` column set to ``values``."""
    with open(corpus["train"], newline="") as f:
        rows = list(csv.DictReader(f))
    for row, value in zip(rows, values, strict=True):
        row["language"] = value
    return write_manifest(tmp_path / "train.csv", rows, COLUMNS)


def fails_before_writing(args, output):
    """Run train.py; it must exit 1 with one error line and write nothing but the per-start
    records into ``output``."""
    code, stderr = run_forked(args)
    assert code == 1, stderr[-3000:]
    written = {p.name for p in output.rglob("*") if p.is_file()} if output.exists() else set()
    # SpeechBrain's per-start records (with its copy of train.py) and the folder's run lock,
    # nothing of the run.
    assert written <= REWRITTEN_EACH_START | APPEND_ONLY | {"train.py", "run.lock"}, written
    assert not (output / "data_report.json").exists()
    return one_line_error(stderr)


def run_args(whisper_dir, corpus, output, train_csv=None, *extra):
    return [
        "hparams/whisper_small.yaml",
        f"--whisper_hub={whisper_dir}",
        f"--data_folder={corpus['train'].parent}",
        f"--output_folder={output}",
        "--skip_prep=True",
        f"--train_csv={train_csv or corpus['train']}",
        f"--valid_csv={corpus['valid']}",
        f"--test_csv=[{corpus['test']}]",
        "--num_workers=0",
        *extra,
    ]


@pytest.mark.slow
def test_bad_language_input_is_one_line_and_writes_nothing(
    corpus, random_whisper_dir, random_multilingual_dir, tmp_path
):
    out = tmp_path / "exp"
    klingon = language_rows(corpus, tmp_path, ["de", "fr", "klingon", "it", "fr", "it"])
    line = fails_before_writing(run_args(random_multilingual_dir, corpus, out, klingon), out)
    assert line.startswith("error: train: row u2: unknown Whisper language 'klingon'; valid")
    assert "de, " in line and "it, " in line
    line = fails_before_writing(
        run_args(random_multilingual_dir, corpus, out, None, "--language=xx"), out
    )
    assert line.startswith(
        "error: language must be a language Whisper knows (name or code, e.g. german or de) or "
        "null, not 'xx' (unknown Whisper language 'xx'; valid codes"
    )
    # An English-only model with German rows; translation on an English-only model.
    line = fails_before_writing(run_args(random_whisper_dir, corpus, out), out)
    assert line == (
        "error: train: row u0: an English-only (.en) checkpoint cannot transcribe german: use "
        "a multilingual one (e.g. --whisper_hub=bundled:base)"
    )
    english = language_rows(corpus, tmp_path, ["en"] * 6)
    line = fails_before_writing(
        run_args(random_whisper_dir, corpus, out, english, "--task=translate"), out
    )
    assert line.startswith("error: task translate needs a multilingual checkpoint;")
    # Languages mixed, no column and no --language: nothing says which prompt a row gets.
    with open(corpus["train"], newline="") as f:
        rows = list(csv.DictReader(f))
    no_column = write_manifest(tmp_path / "no_column.csv", rows)
    line = fails_before_writing(run_args(random_multilingual_dir, corpus, out, no_column), out)
    assert line == (
        "error: train: a multilingual Whisper needs a language: give the manifest a "
        "'language' column or pass --language=<name or code>"
    )
