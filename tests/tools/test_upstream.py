"""python -m whisper_finetuning.upstream into a temporary SpeechBrain-shaped tree: the recipe's
files, its tests/recipes row, SpeechBrain's consistency rules, refusal to overwrite, bad
input, and the row's debug run finishing with its checks."""

import csv
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import ruamel.yaml
from check_yaml import unused_yaml_vars
from conftest import speak, write_manifest

from whisper_finetuning import upstream

REPO = Path(__file__).resolve().parents[2]
HPARAMS = REPO / "hparams" / "whisper_small.yaml"
# SpeechBrain's header, with the extra column some of its CSVs have.
SPEECHBRAIN_HEADER = [*upstream.CSV_FIELDS, "performance"]
SAMPLE_SENTENCES = ["the child almost hurt the small dog", "drop the tube when you add the figures"]


def speechbrain_tree(root: Path) -> Path:
    """A SpeechBrain-shaped checkout: LibriSpeech has its own preparer and a recipe CSV (no
    rows yet); CommonVoice has neither."""
    (root / "recipes" / "LibriSpeech").mkdir(parents=True)
    (root / "recipes" / "LibriSpeech" / "librispeech_prepare.py").write_text(
        '"""SpeechBrain\'s LibriSpeech preparer (a stub)."""\n'
    )
    (root / "tests" / "recipes").mkdir(parents=True)
    with open(root / "tests" / "recipes" / "LibriSpeech.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerow(SPEECHBRAIN_HEADER)
    return root


def run_upstream(tree, dataset, *extra, hparams=HPARAMS):
    """``upstream.main`` on ``tree``; returns its exit status."""
    return upstream.main(
        ["--hparams", str(hparams), "--dataset", dataset, "--speechbrain", str(tree), *extra]
    )


def recipe_rows(tree, dataset):
    """The rows of ``tests/recipes/<dataset>.csv``, read as SpeechBrain reads them."""
    with open(tree / "tests" / "recipes" / f"{dataset}.csv", newline="") as f:
        return list(csv.DictReader(f, delimiter=",", skipinitialspace=True))


def consistency_errors(tree):
    """SpeechBrain's tests/consistency/test_recipe.py rules, run from the checkout's root:
    every yaml of a dataset listed in its CSV, debug flags on every row, the listed files
    present, the README linking the row's URLs."""
    errors = []
    for csv_file in sorted((tree / "tests" / "recipes").glob("*.csv")):
        rows = recipe_rows(tree, csv_file.stem)
        listed = {row["Hparam_file"].strip() for row in rows}
        for yaml_file in (tree / "recipes" / csv_file.stem).rglob("*.yaml"):
            if str(yaml_file.relative_to(tree)) not in listed:
                errors.append(f"{yaml_file} not listed in {csv_file.name}")
        for row in rows:
            if not row["test_debug_flags"].strip():
                errors.append(f"{csv_file.name}: a row without test_debug_flags")
            for field in ["Script_file", "Hparam_file", "Data_prep_file", "Readme_file"]:
                for name in row[field].split(" "):
                    if name.strip() and not (tree / name.strip()).exists():
                        errors.append(f"{csv_file.name}: {field} {name} does not exist")
            readme = (tree / row["Readme_file"].strip()).read_text()
            for field in ["Result_url", "HF_repo"]:
                for link in row[field].strip().split(" "):
                    if link and link not in readme:
                        errors.append(f"{row['Readme_file']} lacks the link {link}")
    return errors


def test_writes_the_recipe_and_its_row(tmp_path):
    tree = speechbrain_tree(tmp_path / "speechbrain")
    result_url = "https://www.dropbox.com/sh/example/whisper?dl=0"
    assert (
        run_upstream(tree, "LibriSpeech", "--result_url", result_url, "--hf_repo", "me/whisper-ls")
        == 0
    )

    folder = tree / "recipes" / "LibriSpeech" / "ASR" / "whisper_finetune"
    assert (folder / "train.py").read_bytes() == (REPO / "train.py").read_bytes()
    prepare = folder / "librispeech_prepare.py"
    assert prepare.is_symlink()
    assert prepare.resolve() == (tree / "recipes/LibriSpeech/librispeech_prepare.py").resolve()
    assert "whisper-finetuning" in (folder / "extra_requirements.txt").read_text().split()

    text = (folder / "hparams" / "whisper_small.yaml").read_text()
    hparams = ruamel.yaml.YAML().load(text)
    assert "extends" not in hparams
    assert hparams["dataset"] == "librispeech"
    assert [str(ref.value) for ref in hparams["test_csv"]] == [
        "<manifest_folder>/test-clean.csv",
        "<manifest_folder>/test-other.csv",
    ]
    assert list(hparams["group_columns"]) == ["spk_id", "gender"]
    assert hparams["language"] == "english"
    assert hparams["output_folder"].value.startswith("results/LibriSpeech/whisper_small")
    source = ruamel.yaml.YAML().load(HPARAMS.read_text())
    assert set(hparams) == set(source)  # complete: every key of the given file, no more
    assert text.count("\n#") >= HPARAMS.read_text().count("\n#")  # its comments kept

    readme = (folder / "README.md").read_text()
    assert "python train.py hparams/whisper_small.yaml --data_folder=" in readme
    assert "| whisper_small.yaml |" in readme

    [row] = recipe_rows(tree, "LibriSpeech")
    recipe = "recipes/LibriSpeech/ASR/whisper_finetune"
    assert row == {
        "Task": "ASR",
        "Dataset": "LibriSpeech",
        "Script_file": f"{recipe}/train.py",
        "Hparam_file": f"{recipe}/hparams/whisper_small.yaml",
        "Data_prep_file": f"{recipe}/librispeech_prepare.py",
        "Readme_file": f"{recipe}/README.md",
        "Result_url": result_url,
        "HF_repo": "https://huggingface.co/me/whisper-ls",
        "test_debug_flags": row["test_debug_flags"],
        "test_debug_checks": row["test_debug_checks"],
        "performance": "",
    }
    flags = row["test_debug_flags"]
    for flag in [
        "--data_folder=tests/samples/ASR/",
        "--train_csv=tests/samples/annotation/ASR_train.csv",
        "--test_csv=[tests/samples/annotation/ASR_train.csv]",
        "--number_of_epochs=2",
        "--skip_prep=True",
    ]:
        assert flag in flags.split()
    assert "file_exists=[" in row["test_debug_checks"]
    assert "performance_check=[train_log.txt, train loss," in row["test_debug_checks"]
    assert consistency_errors(tree) == []


def test_commonvoice_without_its_preparer_gets_a_thin_one(tmp_path):
    tree = speechbrain_tree(tmp_path / "speechbrain")
    assert run_upstream(tree, "commonvoice") == 0  # the dataset's name in any case

    folder = tree / "recipes" / "CommonVoice" / "ASR" / "whisper_finetune"
    prepare = folder / "common_voice_prepare.py"
    assert not prepare.is_symlink()
    assert 'prepare("common_voice", data_folder, save_folder' in prepare.read_text()
    compile(prepare.read_text(), str(prepare), "exec")
    text = (folder / "hparams" / "whisper_small.yaml").read_text()
    assert re.search(r"^language: !PLACEHOLDER", text, re.MULTILINE)
    assert re.search(r"^dataset: common_voice$", text, re.MULTILINE)
    assert "--language=" in (folder / "README.md").read_text()

    [row] = recipe_rows(tree, "CommonVoice")  # a new CSV: SpeechBrain's ten columns
    assert list(row) == upstream.CSV_FIELDS
    assert row["Result_url"] == row["HF_repo"] == ""
    assert "--language=english" in row["test_debug_flags"].split()
    assert consistency_errors(tree) == []


def test_refuses_to_overwrite(tmp_path, capsys):
    tree = speechbrain_tree(tmp_path / "speechbrain")
    assert run_upstream(tree, "LibriSpeech") == 0
    csv_path = tree / "tests" / "recipes" / "LibriSpeech.csv"
    folder = tree / "recipes" / "LibriSpeech" / "ASR" / "whisper_finetune"
    before = csv_path.read_bytes(), sorted(folder.rglob("*"))
    capsys.readouterr()

    assert run_upstream(tree, "LibriSpeech") == 2  # the folder exists
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: ") and "overwrite" in line
    assert (csv_path.read_bytes(), sorted(folder.rglob("*"))) == before

    for path in sorted(folder.rglob("*"), reverse=True):  # the folder gone, its row kept
        path.unlink() if path.is_file() or path.is_symlink() else path.rmdir()
    folder.rmdir()
    assert run_upstream(tree, "LibriSpeech") == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: ") and "already has a row" in line
    assert csv_path.read_bytes() == before[0]
    assert not folder.exists()


@pytest.mark.parametrize(
    ("hparams", "dataset", "checkout", "message"),
    [
        ("missing.yaml", "LibriSpeech", "tree", "hyperparameter file not found"),
        (str(HPARAMS), "TIMIT", "tree", "unknown dataset 'TIMIT'"),
        (str(HPARAMS), "LibriSpeech", "empty", "is not a SpeechBrain checkout"),
    ],
)
def test_bad_input_is_one_error_line(tmp_path, hparams, dataset, checkout, message):
    tree = speechbrain_tree(tmp_path / "tree")
    (tmp_path / "empty").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "whisper_finetuning.upstream", "--hparams", hparams]
        + ["--dataset", dataset, "--speechbrain", str(tmp_path / checkout)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith("error: ") and message in line
    assert not (tree / "recipes" / "LibriSpeech" / "ASR").exists()


def test_written_yaml_passes_speechbrains_yaml_vs_script_check(tmp_path):
    tree = speechbrain_tree(tmp_path / "speechbrain")
    assert run_upstream(tree, "LibriSpeech") == 0
    [row] = recipe_rows(tree, "LibriSpeech")
    unused = unused_yaml_vars(tree / row["Hparam_file"], tree / row["Script_file"])
    assert unused == [], f"yaml keys not used in train.py: {unused}"


# ------------------------------------------------------------- the debug run ------


def add_tiny_sample(tree):
    """SpeechBrain's tests/samples in miniature: two spoken utterances and ASR_train.csv with
    paths relative to the checkout's root, as SpeechBrain's own sample has them."""
    audio = tree / "tests" / "samples" / "ASR"
    audio.mkdir(parents=True)
    (tree / "tests" / "samples" / "annotation").mkdir()
    rows = []
    for i, text in enumerate(SAMPLE_SENTENCES, start=1):
        speak(text, audio / f"spk1_snt{i}.wav")
        rows.append(
            {
                "ID": f"spk1_snt{i}",
                "duration": 2.5,
                "wav": f"tests/samples/ASR/spk1_snt{i}.wav",
                "spk_id": "spk1",
                "wrd": text,
            }
        )
    write_manifest(tree / upstream.SAMPLE_MANIFEST, rows)


def files_missing(check_str, output_folder):
    """recipe_tests.check_files: the file_exists=[...] entries missing from the output."""
    names = re.search(r"file_exists=\[(.*?)\]", check_str).group(1).split(",")
    return [name for name in names if not (output_folder / name).exists()]


def performance_holds(check_str, output_folder):
    """recipe_tests.check_performance: performance_check=[file, variable, threshold,
    epoch: N] holds on the first line of the file naming that epoch (-1: the last line)."""
    found = re.search(r"performance_check=\[(.*?)\]", check_str)
    if found is None:
        return True
    filename, variable, threshold, epoch = (part.strip() for part in found.group(1).split(","))
    lines = (output_folder / filename).read_text().splitlines()
    chosen = [line for line in lines if epoch in line]
    if int(epoch.split(":")[-1]) == -1:
        chosen.append([line for line in lines if line.strip()][-1])
    assert chosen, f"no line with '{epoch}' in {filename}"
    pattern = rf"(?P<key>{re.escape(variable)})\s*:\s*(?P<value>[-+]?\d*\.\d+([eE][-+]?\d+)?)"
    value = float(re.search(pattern, chosen[0]).group("value"))
    bound = float(threshold.replace("=", "").replace(">", "").replace("<", ""))
    for operator, holds in [
        ("==", value == bound),
        (">=", value >= bound),
        (">", value > bound),
        ("<=", value <= bound),
        ("<", value < bound),
    ]:
        if operator in threshold:
            return holds
    return False


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["LibriSpeech", "CommonVoice"])
def test_the_rows_debug_run_finishes_with_its_checks(
    tmp_path, dataset, random_whisper_dir, random_multilingual_dir
):
    tree = speechbrain_tree(tmp_path / "speechbrain")
    add_tiny_sample(tree)
    assert run_upstream(tree, dataset) == 0
    [row] = recipe_rows(tree, dataset)

    # As SpeechBrain's recipe_tests.py runs it, from the checkout's root, with the checkpoint
    # swapped for a tiny random one of the same kind (the run stays offline).
    model = random_whisper_dir if dataset == "LibriSpeech" else random_multilingual_dir
    flags = re.sub(r"--whisper_hub=\S+", f"--whisper_hub={model}", row["test_debug_flags"])
    output = tree / "tests" / "tmp" / f"{dataset}_row_02"
    script = row["Script_file"].strip()
    done = subprocess.run(
        [sys.executable, script, row["Hparam_file"].strip(), *shlex.split(flags)]
        + ["--device=cpu", f"--output_folder={output.relative_to(tree)}"],
        cwd=tree,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(tree / os.path.dirname(script)), str(REPO)]),
            "HF_HUB_OFFLINE": "1",
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert files_missing(row["test_debug_checks"], output) == []
    assert performance_holds(row["test_debug_checks"], output)
