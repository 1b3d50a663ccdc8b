"""Helpers for tests that run train.py: a tiny spoken corpus, its arguments, forked runs.

A forked run calls ``train.main`` in a child of the test process, so torch, SpeechBrain and
transformers are imported once rather than once per run; the child's exit status, stderr and
stdout are what a user of ``python train.py`` would see.
"""

import hashlib
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from conftest import speak, write_manifest

from whisper_finetuning.evaluation import scoring

SENTENCES = [
    "the cat sat on the mat",
    "open the window please",
    "we walked to the station",
    "green leaves fall in autumn",
    "she reads a book every night",
    "turn left at the bridge",
    "the river runs to the sea",
    "bring me a cup of tea",
    "my brother plays the piano",
    "snow covered the hills",
    "the train leaves at noon",
    "a dog barked in the yard",
    "paint the fence white",
    "the clock struck seven",
    "birds sing before dawn",
]
# Per-start records, rewritten by a start of train.py that trains, a failing one too: the
# settings (SpeechBrain's hyperparams.yaml, the recipe's run.json), the environment (env.log),
# the data checks' report on the manifests given (data_report.json/.md) and the folder's lock
# (run.lock: a forked run exits without releasing it; python train.py removes it).
REWRITTEN_EACH_START = {
    "hyperparams.yaml",
    "run.json",
    "env.log",
    "data_report.json",
    "data_report.md",
    "run.lock",
}
APPEND_ONLY = {"log.txt"}


def make_corpus(folder):
    """8 train (two in stereo/44.1 kHz, 8 kHz, 48 kHz), 5 valid, 2 test utterances; manifests."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, text in enumerate(SENTENCES):
        path = speak(text, folder / f"u{i}.wav", voice="en-us" if i % 2 else "en-gb")
        rows.append({"ID": f"u{i}", "wav": path, "spk_id": f"s{i % 3}", "wrd": text})
    for row, (rate, channels) in zip(rows[:3], [(44100, 2), (8000, 1), (48000, 1)], strict=True):
        _resave(row["wav"], rate, channels)
    for row in rows:
        row["duration"] = 2.0
    splits = {"train": rows[:8], "valid": rows[8:13], "test": rows[13:]}
    return {name: write_manifest(folder / f"{name}.csv", r) for name, r in splits.items()}


def _resave(path, rate, channels):
    """Rewrite a 16 kHz mono file at another rate / channel count."""
    import soundfile as sf
    import torchaudio

    from whisper_finetuning.data.audio import read_audio

    audio = torchaudio.functional.resample(read_audio(path), 16000, rate)
    audio = audio[:, None].repeat(1, channels).numpy() if channels > 1 else audio.numpy()
    sf.write(path, audio, rate)


def recipe_args(whisper_dir, manifests, output, cache, epochs=2, augment=False):
    """A tiny fine-tuning run: frozen encoder (cached unless ``augment``), 4 batches per epoch,
    checkpoints every 2."""
    return [
        "hparams/whisper_small.yaml",
        f"--whisper_hub={whisper_dir}",
        f"--data_folder={manifests['train'].parent}",
        f"--output_folder={output}",
        "--skip_prep=True",
        f"--train_csv={manifests['train']}",
        f"--valid_csv={manifests['valid']}",
        f"--test_csv=[{manifests['test']}]",
        f"--encoder_cache_folder={cache}",
        f"--number_of_epochs={epochs}",
        "--batch_size=2",
        "--test_batch_size=2",
        "--grad_accumulation_factor=1",
        "--lr=0.002",
        "--warmup_steps=4",
        "--decode_max_tokens=8",
        "--test_beam_size=2",
        "--num_workers=0",
        "--ckpt_interval_steps=2",
        "--noprogressbar",
        f"--augment={augment}",
    ]


def run_forked(args, env=None):
    """Run ``train.main(args)`` in a child process; returns (exit code or -signal, stderr).

    Children fork from a server that imported train.py but never ran a torch operation: a
    child forked from a process whose OpenMP threads ran would deadlock in its first
    parallel operation.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["train"])
    with tempfile.NamedTemporaryFile(suffix=".stderr") as err:
        child = context.Process(target=_child_main, args=([str(a) for a in args], env, err.name))
        child.start()
        child.join()
        return child.exitcode, Path(err.name).read_text()


def _child_main(args, env, err_path):
    """What ``python train.py ARGS`` does, with stderr to ``err_path`` and stdout discarded."""
    import train

    code = 1
    try:
        os.environ.update(env or {})
        os.dup2(os.open(err_path, os.O_WRONLY | os.O_TRUNC), 2)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        train.main(args)
        code = 0
    except SystemExit as stop:
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:
        sys.excepthook(*sys.exc_info())
    finally:
        sys.stderr.flush()
        os._exit(code)


def killed(code):
    """True if a forked run ended by SIGKILL."""
    return code == -signal.SIGKILL


def one_line_error(stderr):
    """The run's error message, asserting it is one line and no traceback was printed."""
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


def copy_experiment(folder, dest, without=("save",)):
    """A copy of an experiment folder without the entries named in ``without``."""
    shutil.copytree(folder, dest, ignore=lambda _, names: [n for n in names if n in without])
    return dest


def file_hashes(folder):
    """(size, sha256) of every file under ``folder``, by relative path."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file()
    }


def assert_nothing_lost(before, folder):
    """Every file in ``before`` is still there, unchanged; append-only logs only grew.

    The per-start records (``REWRITTEN_EACH_START``) are not compared.
    """
    for name, (size, digest) in before.items():
        path = Path(folder) / name
        assert path.is_file(), f"{name} was lost"
        if path.name in REWRITTEN_EACH_START:
            continue
        content = path.read_bytes()
        if path.name in APPEND_ONLY:
            content = content[:size]
        assert hashlib.sha256(content).hexdigest() == digest, f"{name} changed"


def manifest_hparams(whisper_dir, manifests, output, **overrides):
    """The main yaml's hparams over ready ``manifests`` (train, valid, test) and a local model,
    offline and single-process: no preparation, cache, augmentation or loader workers."""
    from whisper_finetuning.training.config import load_hparams

    values = {
        "whisper_hub": str(whisper_dir),
        "output_folder": str(output),
        "data_folder": str(manifests["train"].parent),
        "skip_prep": True,
        "train_csv": str(manifests["train"]),
        "valid_csv": str(manifests["valid"]),
        "test_csv": [str(manifests["test"])],
        "encoder_cache": False,
        "augment": False,
        "num_workers": 0,
        **overrides,
    }
    return load_hparams("hparams/whisper_small.yaml", values)[0]


def prepared(hparams):
    """train.py's checked datasets with their pipelines, and the training loader's arguments
    (the data checks' report left out)."""
    import train
    from whisper_finetuning.data import checks, manifests

    whisper = hparams["whisper"]
    named = manifests.named_manifests(
        hparams["train_csv"],
        hparams["valid_csv"],
        hparams["test_csv"],
        manifests.training_sources(hparams),
        hparams.get("keep_test_csv"),
    )
    normalize = scoring.Normalizers.of(hparams["normalizer"], whisper)
    unreported = {**hparams, "data_checks": "off"}
    datasets = checks.before_training(unreported, whisper, named, normalize, hparams["on_bad_row"])
    datasets, loader_kwargs, _ = train.dataio_prepare(hparams, datasets, whisper)
    return datasets, loader_kwargs


def make_brain(hparams, run_opts=None, **overrides):
    """train.py's Brain for ``hparams``; ``overrides`` replace its arguments."""
    import train

    arguments = {
        "modules": hparams["modules"],
        "opt_class": hparams["optimizer"],
        "hparams": hparams,
        "run_opts": run_opts,
        "checkpointer": hparams["checkpointer"],
        "normalize": scoring.Normalizers.of(hparams["normalizer"], hparams["whisper"]),
    }
    return train.WhisperFineTuning(**{**arguments, **overrides})
