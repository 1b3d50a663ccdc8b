"""Dynamic batches bucketed by audio duration or by decoder tokens, and the decoder padding
they leave, on a manifest whose rows' lengths are known by hand."""

import pytest
from conftest import sine, write_manifest

from whisper_finetuning import padding as padding_tool
from whisper_finetuning.data import batching, manifests
from whisper_finetuning.model.asr import WhisperASR
from whisper_finetuning.training import hparam_rules

# (seconds, words): the longest audio is not the longest transcript
ROWS = [(1.0, 1), (2.0, 8), (3.0, 2), (4.0, 7)]
UNSHUFFLED = {"shuffle": False, "batch_ordering": "ascending"}


def _manifest(folder, name="train"):
    rows = [
        {"ID": f"r{i}", "duration": s, "wav": f"$data_root/r{i}.wav", "spk_id": "s"}
        | {"wrd": "a " * n}
        for i, (s, n) in enumerate(ROWS)
    ]
    return write_manifest(folder / f"{name}.csv", rows)


def test_token_buckets_leave_fewer_padded_decoder_positions(tmp_path, random_whisper_dir):
    dataset = manifests.load_manifest(_manifest(tmp_path), tmp_path)
    whisper = WhisperASR(str(random_whisper_dir))
    positions = [whisper.decoder_positions(dataset.data[u]["wrd"]) for u in dataset.data_ids]
    # <|startoftranscript|><|notimestamps|>, one " a" per word, <|endoftext|>
    assert positions == [4, 11, 5, 10]
    # two rows fit a batch below the first boundary (max_batch_length / boundary), one above
    by_duration = batching.dynamic_batch_sampler(
        dataset,
        "duration",
        whisper,
        {"max_batch_length": 5, "bucket_boundaries": [2.5, 5]} | UNSHUFFLED,
    )
    by_tokens = batching.dynamic_batch_sampler(
        dataset,
        "tokens",
        whisper,
        {"max_batch_length": 12, "bucket_boundaries": [6, 12]} | UNSHUFFLED,
    )
    assert sorted(map(sorted, by_duration)) == [[0, 1], [2], [3]]
    assert sorted(map(sorted, by_tokens)) == [[0, 2], [1], [3]]
    # (padded, total): 11 - 4 in [r0, r1]; 5 - 4 in [r0, r2]; plain pairs 7 + (10 - 5)
    assert batching.padding(list(by_duration), positions) == (7, 2 * 11 + 5 + 10)
    assert batching.padding(list(by_tokens), positions) == (1, 2 * 5 + 11 + 10)
    assert batching.padding([[0, 1], [2, 3]], positions) == (12, 2 * 11 + 2 * 10)


def test_the_padding_tool_prints_each_batchings_share(tmp_path, random_whisper_dir, capsys):
    csv = _manifest(tmp_path)
    options = ["--batch_size", "2", "--max_batch_length", "5", "--num_buckets", "2"]
    assert padding_tool.main([str(csv), "--whisper_hub", str(random_whisper_dir), *options]) == 0
    out = capsys.readouterr().out
    assert "4 rows, 5 epochs; bound 5 s or 15 decoder positions (3.00 per second)" in out
    positions = [4, 11, 5, 10]
    plain = [batching.padding(padding_tool.plain_batches(4, 2, e, 0), positions) for e in range(5)]
    padded, total = sum(p for p, _ in plain), sum(t for _, t in plain)
    assert f"| plain | 2.0 | 2.0 | {total:,} | {padded:,} | {100 * padded / total:.1f}% |" in out
    assert padding_tool.main([str(tmp_path / "missing.csv")]) == 1
    assert capsys.readouterr().err.startswith("error: ")


def test_dynamic_batch_length_is_duration_or_tokens():
    assert hparam_rules.check({"dynamic_batch_length": "tokens"}) is None
    assert hparam_rules.check({"dynamic_batch_length": "words"}) == (
        "dynamic_batch_length must be one of duration, tokens, not 'words'"
    )


@pytest.mark.parametrize(
    ("length", "bound", "batches"),
    [("duration", 5, [[0, 1], [2], [3]]), ("tokens", 12, [[0, 2], [1], [3]])],
)
def test_the_recipe_buckets_by_dynamic_batch_length(
    length, bound, batches, tmp_path, random_whisper_dir
):
    from recipe_runs import prepared

    from whisper_finetuning.training.config import load_hparams

    for i, (seconds, _) in enumerate(ROWS):
        sine(tmp_path / f"r{i}.wav", seconds)
    overrides = {
        "whisper_hub": str(random_whisper_dir),
        "data_folder": str(tmp_path),
        "output_folder": str(tmp_path / "exp"),
        "skip_prep": True,
        "encoder_cache": False,
        "dynamic_batching": True,
        "dynamic_batch_length": length,
        "dynamic_batch_sampler": UNSHUFFLED
        | {"max_batch_length": bound, "bucket_boundaries": [bound / 2, bound]},
        "train_csv": str(_manifest(tmp_path, "train")),
        "valid_csv": str(_manifest(tmp_path, "valid")),
        "test_csv": [str(_manifest(tmp_path, "test"))],
    }
    hparams, _ = load_hparams("hparams/whisper_small.yaml", overrides)
    _, loader_kwargs = prepared(hparams)
    assert sorted(map(sorted, loader_kwargs["batch_sampler"])) == batches
