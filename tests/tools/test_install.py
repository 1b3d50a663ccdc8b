"""``pip install`` gives a package whose tools run from any directory: built from a copy of
the package's files into a fresh virtual environment (its dependencies borrowed from the test's
own environment, so nothing is downloaded)."""

import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE_FILES = ("pyproject.toml", "README.md", "LICENSE", "whisper_finetuning")
DATA_FILES = (
    "analysis/review/page.html",
    "model/english_spelling.json",
    "data/prepare/accent_sentences.txt",
    "data/prepare/swiss_sentences/german.txt",
    "profiling/gpu_benchmark.sh",
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh virtual environment with the package pip-installed (not editable)."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(REPO / "whisper_finetuning", source / "whisper_finetuning", ignore=ignore)
    for name in PACKAGE_FILES[:-1]:
        shutil.copy(REPO / name, source / name)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    own_site = subprocess.run(
        [python, "-c", "import site; print(site.getsitepackages()[0])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # The dependencies (torch, SpeechBrain ...) from this environment; its .pth files, and with
    # them any editable install of the package, are not read from a folder a .pth names.
    Path(own_site, "dependencies.pth").write_text(site.getsitepackages()[0] + "\n")
    done = subprocess.run(
        # This environment's pip and setuptools install into the fresh one.
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps"]
        + ["--no-build-isolation", str(source)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return python, Path(own_site), root


@pytest.mark.slow
def test_the_installed_package_holds_its_data_files(installed):
    _, own_site, root = installed
    found = subprocess.run(
        [installed[0], "-c", "import whisper_finetuning; print(whisper_finetuning.__file__)"],
        capture_output=True,
        text=True,
        cwd=root,
        check=True,
    ).stdout.strip()
    package = Path(found).parent
    assert package == own_site / "whisper_finetuning"
    for name in DATA_FILES:
        assert (package / name).read_bytes() == (REPO / "whisper_finetuning" / name).read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["check_data", "upstream", "export_hf", "memory"])
def test_a_tool_runs_from_outside_the_repository(installed, tool):
    python, _, root = installed
    done = subprocess.run(
        [python, "-m", f"whisper_finetuning.{tool}", "--help"],
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("usage: ")
    assert f"python -m whisper_finetuning.{tool}" in done.stdout or tool in done.stdout
