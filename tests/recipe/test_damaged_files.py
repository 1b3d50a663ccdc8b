"""Damaged files a run reads back: each is refused with one line naming it, and nothing in the
experiment folder changes. One finished one-epoch run; its copies are damaged one way each."""

import hashlib
import shutil

import pytest
import torch
import yaml
from recipe_runs import (
    assert_nothing_lost,
    copy_experiment,
    file_hashes,
    make_corpus,
    one_line_error,
    recipe_args,
    run_forked,
)

from whisper_finetuning import export_hf
from whisper_finetuning.common.checksums import SUMS_FILE, read_sums
from whisper_finetuning.model.asr import WhisperASR

DAMAGED = "is damaged (its SHA-256 differs from the one recorded when it was written)"


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, random_whisper_dir):
    root = tmp_path_factory.mktemp("damaged")
    corpus = make_corpus(root / "corpus")
    args = recipe_args(random_whisper_dir, corpus, root / "exp", root / "cache", epochs=1)
    code, stderr = run_forked(args)
    assert code == 0, stderr[-3000:]
    return args, root / "exp"


def damaged_copy(experiment, folder, damage):
    """A copy of the experiment with ``damage(checkpoint folder)`` applied."""
    exp = copy_experiment(experiment[1], folder, without=())
    (checkpoint,) = (exp / "save").glob("CKPT+*")
    damage(checkpoint)
    return exp, checkpoint


def nan_weights_with_their_checksum(checkpoint):
    """A checkpoint saved with NaN weights: its checksum matches, its values do not."""
    weights = torch.load(checkpoint / "whisper.ckpt", weights_only=True)
    torch.save(
        {k: torch.full_like(v, float("nan")) for k, v in weights.items()},
        checkpoint / "whisper.ckpt",
    )
    meta = yaml.safe_load((checkpoint / "CKPT.yaml").read_text())
    meta["sha256"]["whisper.ckpt"] = hashlib.sha256(
        (checkpoint / "whisper.ckpt").read_bytes()
    ).hexdigest()
    (checkpoint / "CKPT.yaml").write_text(yaml.dump(meta))


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CASES = {  # name: (damage, the file named, what the line says of it)
    "truncated": (lambda c: truncate(c / "whisper.ckpt"), "whisper.ckpt", DAMAGED),
    "empty": (lambda c: (c / "whisper.ckpt").write_bytes(b""), "whisper.ckpt", "is empty"),
    "missing": (lambda c: (c / "whisper.ckpt").unlink(), "whisper.ckpt", "is missing"),
    "other contents": (lambda c: torch.save({}, c / "whisper.ckpt"), "whisper.ckpt", DAMAGED),
    "garbage metadata": (
        lambda c: (c / "CKPT.yaml").write_text("]: not yaml ["),
        "CKPT.yaml",
        "is not a checkpoint's metadata",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_export_refuses_a_damaged_checkpoint_naming_the_file(experiment, tmp_path, capsys, case):
    damage, name, why = CASES[case]
    exp, checkpoint = damaged_copy(experiment, tmp_path / "exp", damage)
    before = file_hashes(exp)
    assert export_hf.main([str(exp), str(tmp_path / "hf")]) == 1
    assert one_line_error(capsys.readouterr().err) == (
        f"error: {checkpoint / name} {why}; export another kept epoch (--epoch N), or move "
        f"{checkpoint.name} out of {exp / 'save'} to export the next best one"
    )
    assert not (tmp_path / "hf").exists()
    assert file_hashes(exp) == before


def test_export_refuses_nan_weights_whose_checksum_matches(experiment, tmp_path, capsys):
    exp, checkpoint = damaged_copy(experiment, tmp_path / "exp", nan_weights_with_their_checksum)
    assert export_hf.main([str(exp), str(tmp_path / "hf")]) == 1
    first = next(iter(torch.load(checkpoint / "whisper.ckpt", weights_only=True)))
    assert one_line_error(capsys.readouterr().err) == (
        f"error: checkpoint {checkpoint / 'whisper.ckpt'} holds NaN or inf values (in {first}); "
        f"export another kept epoch (--epoch N), or move {checkpoint.name} out of "
        f"{exp / 'save'} to export the next best one"
    )
    assert not (tmp_path / "hf").exists()


def cut_before_the_model(path):
    text = path.read_text()
    path.write_text(text[: text.index("\nwhisper: ") + 1])


SETTINGS_ADVICE = "the export builds the run's model from it: restore it from a copy"
SETTINGS_CASES = {  # name: (damage, what the line says of hyperparams.yaml)
    "cut short": (cut_before_the_model, "is damaged (no 'whisper' setting: cut short?)"),
    "garbage": (
        lambda p: p.write_text("]: not yaml ["),
        "is damaged (not YAML: mapping values are not allowed here, line 1)",
    ),
    "not text": (lambda p: p.write_bytes(b"seed: \xff\xfe\x00\x81"), "is damaged (not UTF-8 text)"),
    "empty": (lambda p: p.write_bytes(b""), "is empty"),
}


@pytest.mark.parametrize("case", [*SETTINGS_CASES, "missing"])
def test_export_refuses_damaged_run_settings_naming_the_file(experiment, tmp_path, capsys, case):
    exp = copy_experiment(experiment[1], tmp_path / "exp", without=())
    settings = exp / "hyperparams.yaml"
    if case == "missing":
        settings.unlink()
        expected = f"error: {settings} not found: is this a train.py output folder?"
    else:
        damage, why = SETTINGS_CASES[case]
        damage(settings)
        expected = f"error: {settings} {why}; {SETTINGS_ADVICE}"
    before = file_hashes(exp)
    assert export_hf.main([str(exp), str(tmp_path / "hf")]) == 1
    assert one_line_error(capsys.readouterr().err) == expected
    assert not (tmp_path / "hf").exists()
    assert file_hashes(exp) == before


def test_an_export_lists_its_files_and_a_damaged_one_is_refused_as_a_model(experiment, tmp_path):
    dest = tmp_path / "hf"
    assert export_hf.main([str(experiment[1]), str(dest)]) == 0
    sums = read_sums(dest)
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.name != SUMS_FILE)
    assert sorted(sums) == files and "model.safetensors" in sums
    assert all(hashlib.sha256((dest / n).read_bytes()).hexdigest() == d for n, d in sums.items())
    truncate(dest / "model.safetensors")
    with pytest.raises(OSError) as refused:
        WhisperASR(str(dest))
    assert str(refused.value) == (
        f"cannot load the Whisper checkpoint '{dest}': {dest / 'model.safetensors'} {DAMAGED}; "
        "export it again"
    )
    (dest / SUMS_FILE).unlink()  # a model folder without checksums: safetensors' own error
    with pytest.raises(OSError) as unreadable:
        WhisperASR(str(dest))
    assert str(unreadable.value).startswith(
        f"cannot load the Whisper checkpoint '{dest}': {dest / 'model.safetensors'} is damaged ("
    )
    (dest / "config.json").write_text('{"d_model": 3')  # torn
    with pytest.raises(OSError) as bad_config:
        WhisperASR(str(dest))
    assert str(bad_config.value) == (
        f"cannot load the Whisper checkpoint '{dest}': It looks like the config file at "
        f"'{dest / 'config.json'}' is not a valid JSON file."
    )


def test_a_rerun_refuses_a_garbage_training_state_naming_it(experiment, tmp_path):
    args, _ = experiment
    exp, checkpoint = damaged_copy(
        experiment, tmp_path / "exp", lambda c: (c / "brain.ckpt").write_text("step: [")
    )
    before = file_hashes(exp)
    args = [a for a in args if not a.startswith("--output_folder=")]
    code, stderr = run_forked([*args, f"--output_folder={exp}"])
    assert code == 1
    assert one_line_error(stderr) == (
        f"error: {checkpoint / 'brain.ckpt'} {DAMAGED}; move {checkpoint.name} out of "
        f"{exp / 'save'} to resume from the previous kept checkpoint, or start a new "
        "--output_folder (--init_from=EXPERIMENT starts it from another run's checkpoint)"
    )
    assert_nothing_lost(before, exp)
    shutil.rmtree(exp)
