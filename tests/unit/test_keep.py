"""Issue 33, parts 3 and 4: non-speech replacements and replay rows drawn per (seed, epoch,
row), generated non-speech clips, and the forgetting summary of the keep test set."""

import hashlib
import json
import math
import shutil
import subprocess

import numpy as np
import pytest
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from transformers.models.whisper.english_normalizer import BasicTextNormalizer

from whisper_finetuning.common.errors import RecipeError
from whisper_finetuning.data import nonspeech, pipelines
from whisper_finetuning.data.audio import SAMPLE_RATE
from whisper_finetuning.data.manifests import NONSPEECH, REPLAY, DataError
from whisper_finetuning.data.prepare import accent_corpus
from whisper_finetuning.data.prepare.swiss_corpus import SENTENCES_FOLDER
from whisper_finetuning.data.prepare.swiss_corpus import VOICES as SWISS_VOICES
from whisper_finetuning.evaluation import scoring
from whisper_finetuning.model.asr import WhisperASR
from whisper_finetuning.training import forgetting
from whisper_finetuning.training.hparam_rules import check

HPARAMS = {
    "seed": 7,
    "timestamp_probability": 0.0,
    "longform_probability": 0.0,
    "condition_on_prev_probability": 0.0,
    "objective": "ce",
    "nonspeech_probability": 0.0,
    "replay_ratio": 0.2,
}


@pytest.fixture(scope="module")
def whisper(random_whisper_dir):
    return WhisperASR(str(random_whisper_dir))


def dataset(n, prefix="u", wrd="the cat sat", duration=2.0, **columns):
    rows = {
        f"{prefix}{i}": {
            "wav": f"/nowhere/{prefix}{i}.wav",
            "duration": duration,
            "wrd": wrd,
            **columns,
        }
        for i in range(n)
    }
    return DynamicItemDataset(rows)


def builder(whisper, datasets, **hparams):
    """train.py's training examples for ``datasets`` (a fresh construction each call)."""
    settings = {**HPARAMS, **hparams}
    return pipelines.training_examples(
        datasets, whisper, settings, settings["nonspeech_probability"]
    )


# ------------------------------------------------------- part 3: train it away --


def test_nonspeech_replacements_are_drawn_per_seed_epoch_and_row(whisper):
    n, p = 2000, 0.3
    ids = [f"u{i}" for i in range(n)]

    def drawn(epoch, seed=7):
        examples = builder(whisper, {"train": dataset(n)}, nonspeech_probability=p, seed=seed)
        examples.set_epoch(epoch)
        return examples.replaced(ids)

    first = drawn(3)
    assert drawn(3) == first  # a second construction (a resumed run) draws the same rows
    assert drawn(4) != first and drawn(3, seed=8) != first
    bound = 4 * math.sqrt(n * p * (1 - p))  # 4 standard deviations of Binomial(2000, 0.3)
    for rows in (first, drawn(4), drawn(3, seed=8)):
        assert abs(len(rows) - n * p) <= bound, len(rows)
    # the documented draw: sha256("seed:epoch:ID:nonspeech")'s first 8 bytes / 2**64 < p
    by_hand = [
        u
        for u in ids
        if int.from_bytes(hashlib.sha256(f"7:3:{u}:nonspeech".encode()).digest()[:8]) / 2**64 < p
    ]
    assert first == by_hand and len(first) == 611
    assert len(set(first) & set(drawn(4))) < len(first)


def test_a_replaced_row_trains_the_nospeech_target_on_generated_audio(whisper):
    examples = builder(whisper, {"train": dataset(50, duration=1.5)}, nonspeech_probability=0.5)
    examples.set_epoch(1)
    replaced = examples.replaced([f"u{i}" for i in range(50)])
    kept = sorted({f"u{i}" for i in range(50)} - set(replaced))
    assert replaced and kept
    sot, nospeech, eot = whisper.start_of_transcript, whisper.no_speech, whisper.eot
    plan = examples.plan(replaced[0])
    assert examples.tokens(plan) == ([sot, nospeech], [nospeech, eot], 1)
    assert examples.text(plan) == "" and plan.seconds == 1.5
    audio = examples.audio(plan)
    assert audio.shape == (round(1.5 * SAMPLE_RATE),)
    assert torch.equal(audio, torch.from_numpy(nonspeech.generated_clip(7, plan.generated, 1.5)))
    # a row not drawn trains its transcript after the plain prompt
    tokens_in, tokens_out, prompt_len = examples.tokens(examples.plan(kept[0]))
    assert tokens_out == whisper.encode_text("the cat sat") + [eot]
    assert prompt_len == len(whisper.prompt())


def test_replacements_from_nonspeech_csv_are_its_clips_cut_to_the_row(whisper):
    clips = dataset(3, prefix="n", wrd="", duration=10.0)
    datasets = {"train": dataset(200), NONSPEECH: clips}
    examples = builder(whisper, datasets, nonspeech_probability=0.25)
    assert NONSPEECH not in datasets  # taken out: not a test set
    examples.set_epoch(2)
    plans = [examples.plan(u) for u in examples.replaced([f"u{i}" for i in range(200)])]
    assert {p.ids[0] for p in plans} == {"nonspeech/n0", "nonspeech/n1", "nonspeech/n2"}
    assert {(p.generated, p.seconds) for p in plans} == {(None, 2.0)}
    sot, nospeech, eot = whisper.start_of_transcript, whisper.no_speech, whisper.eot
    assert {tuple(map(tuple, examples.tokens(p)[:2])) for p in plans} == {
        ((sot, nospeech), (nospeech, eot))
    }
    spoken = DynamicItemDataset({"n0": {"wav": "x.wav", "duration": 1.0, "wrd": "words"}})
    with pytest.raises(
        DataError, match="nonspeech_csv must hold non-speech clips: row n0 has a transcript"
    ):
        builder(whisper, {"train": dataset(4), NONSPEECH: spoken}, nonspeech_probability=0.1)


def test_generated_clips_are_fixed_by_seed_and_index():
    for index in range(nonspeech.GENERATED_CLIPS):
        clip = nonspeech.generated_clip(7, index, 0.5)
        assert clip.dtype == np.float32 and clip.shape == (8000,)
        assert np.array_equal(clip, nonspeech.generated_clip(7, index, 0.5))
        assert not np.array_equal(clip, nonspeech.generated_clip(8, index, 0.5))
        rms = float(np.sqrt(np.mean(clip.astype(np.float64) ** 2)))
        if nonspeech.clip_kind(index) == "quiet":
            assert 0.0003 - 1e-7 <= rms <= 0.003 + 1e-7  # -70 to -50 dBFS
        elif nonspeech.clip_kind(index) == "babble":
            assert 0.002 - 1e-7 <= rms <= 0.02 + 1e-7  # -54 to -34 dBFS
        else:
            assert 0.01 - 1e-6 <= rms <= 0.2 + 1e-6
    kinds = [nonspeech.clip_kind(i) for i in range(nonspeech.GENERATED_CLIPS)]
    assert {k: kinds.count(k) for k in nonspeech.KINDS} == dict.fromkeys(nonspeech.KINDS, 8)

    # brown noise puts far more of its power below 200 Hz than white noise does
    def low_share(clip):
        power = np.abs(np.fft.rfft(clip)) ** 2
        return power[: round(200 * len(clip) / SAMPLE_RATE)].sum() / power.sum()

    white, brown = (nonspeech.generated_clip(7, i, 2.0) for i in (0, 2))
    assert low_share(brown) > 0.5 > 0.05 > low_share(white)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng speaks the babble")
def test_babble_is_six_espeak_voices_summed_below_speech(monkeypatch):
    index = nonspeech.KINDS.index("babble")
    spoken = []
    real_run = subprocess.run

    def recording_run(cmd, **kwargs):
        spoken.append(cmd)
        return real_run(cmd, **kwargs)

    monkeypatch.setattr(nonspeech.subprocess, "run", recording_run)
    nonspeech._babble.cache_clear()
    clip = nonspeech.generated_clip(5, index, 4.0)
    assert [cmd[:2] for cmd in spoken] == [["espeak-ng", "-v"]] * nonspeech.BABBLE_TALKERS
    languages = {v: lang for lang, voices in SWISS_VOICES.items() for v in voices}
    assert all(cmd[2] in languages for cmd in spoken)
    for cmd in spoken:  # each talker's words come from its voice's language's sentences
        sentences = accent_corpus.load_sentences(SENTENCES_FOLDER / f"{languages[cmd[2]]}.txt")
        assert sum(sentence in cmd[5] for sentence in sentences) == nonspeech.BABBLE_SENTENCES
    assert nonspeech._babble(5, index).shape[0] > 4 * SAMPLE_RATE  # longer than one sentence
    assert np.array_equal(clip, nonspeech.generated_clip(5, index, 4.0))
    assert len(spoken) == nonspeech.BABBLE_TALKERS  # spoken once per process
    rms = float(np.sqrt(np.mean(clip.astype(np.float64) ** 2)))
    assert 0.002 - 1e-7 <= rms <= 0.02 + 1e-7


def test_generated_non_speech_without_espeak_is_refused_at_once(whisper, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RecipeError, match="install espeak-ng .* or give nonspeech_csv"):
        builder(whisper, {"train": dataset(4)}, nonspeech_probability=0.1)
    clips = dataset(2, prefix="n", wrd="", duration=3.0)  # given clips need no espeak-ng
    builder(whisper, {"train": dataset(4), NONSPEECH: clips}, nonspeech_probability=0.1)


# --------------------------------------------------- part 4: keep what Whisper knew --


def test_replay_rows_fill_slots_by_ratio_drawn_per_seed_and_epoch(whisper):
    def construct():
        replay = dataset(25, prefix="r", wrd="keep this", language="english")
        replay.data["r7"].update(duration=9.5, wrd="the longest replay transcript")
        train = dataset(40, spk_id="s1", label_source="pseudo", language="english")
        datasets = {"train": train, REPLAY: replay}
        return builder(whisper, datasets, replay_ratio=0.2), datasets

    examples, datasets = construct()
    slots = [u for u in datasets["train"].data_ids if u.startswith("replay:")]
    assert len(datasets["train"]) == 50 and len(slots) == 10  # 10 / (40 + 10) = 0.2
    assert REPLAY not in datasets
    # a slot is as long as the longest replay row, and grouped (never weighted) as "replay"
    assert datasets["train"].data["replay:3"] == {
        "wav": "/nowhere/r0.wav",
        "duration": 9.5,
        "wrd": "the longest replay transcript",
        "spk_id": "replay",
        "label_source": "replay",
        "language": "english",
    }

    def held(examples, epoch):
        examples.set_epoch(epoch)
        return [examples.plan(slot).ids[0] for slot in slots]

    epoch2 = held(examples, 2)
    assert held(construct()[0], 2) == epoch2  # the same rows after a restart
    assert held(examples, 3) != epoch2
    assert len(set(epoch2)) == 10 and all(r.startswith("replay/r") for r in epoch2)
    assert held(examples, 2) == epoch2  # back to epoch 2: drawn again identically
    slot = next(s for s in slots if examples.plan(s).ids[0] != "replay/r7")
    tokens_in, tokens_out, prompt_len = examples.tokens(examples.plan(slot))
    assert tokens_out == whisper.encode_text("keep this") + [whisper.eot]
    assert tokens_in == whisper.prompt("english") + whisper.encode_text("keep this")
    assert [pipelines.replay_slot_count(n, r) for n, r in ((40, 0.2), (8, 0.2), (9, 0.5))] == [
        10,
        2,
        9,
    ]
    # more slots than replay rows: each epoch's order, cycled
    few = builder(whisper, {"train": dataset(12), REPLAY: dataset(3, prefix="r")}, replay_ratio=0.5)
    few.set_epoch(1)
    cycled = [few.plan(f"replay:{k}").ids[0] for k in range(12)]
    assert cycled[:3] == cycled[3:6] == cycled[9:] and len(set(cycled)) == 3


def test_hparam_rules_of_the_new_settings():
    assert check({"objective": "mwer", "replay_csv": "keep.csv"}).startswith(
        "replay_csv must be null with objective mwer"
    )
    assert check({"objective": "mwer", "nonspeech_probability": 0.1}).startswith(
        "nonspeech_probability must be 0 with objective mwer"
    )
    assert check({"nonspeech_csv": "n.csv", "nonspeech_probability": 0.0}).startswith(
        "nonspeech_csv needs nonspeech_probability > 0"
    )
    assert check({"replay_ratio": 1.0}).startswith("replay_ratio must be a number from 0")
    assert check({"l2sp_weight": -1.0}).startswith("l2sp_weight must be a number >= 0")
    assert check({"nonspeech_probability": 0.5, "nonspeech_csv": "n.csv"}) is None


def test_forgetting_is_the_paired_difference_on_the_keep_set(tmp_path):
    refs = ["a b c d", "e f g h", "i j k l", "m n o p", ""]
    zero_shot = ["a b c d", "e f g h", "i j k x", "m n o p", ""]  # 1 error in 16 words
    fine_tuned = ["a x c d", "e f y h", "i j k x", "m n o", "thanks"]  # 4 errors, a word
    ids, speakers = [f"k{i}" for i in range(5)], ["s1", "s1", "s2", "s3", "s4"]
    for folder, hyps in ((tmp_path / "zero_shot", zero_shot), (tmp_path, fine_tuned)):
        scorer = scoring.Scorer(BasicTextNormalizer())  # spk_id is no group column
        scorer.append(ids, hyps, refs, {}, [1.0] * 5)
        scorer.write(folder, "keep")
    keep = tmp_path / "keep.csv"
    keep.write_text(
        "ID,duration,wav,spk_id,wrd\n"
        + "".join(f"{i},1.0,x.wav,{s},{r}\n" for i, s, r in zip(ids, speakers, refs, strict=True))
    )
    by_utterance = forgetting.write_forgetting(tmp_path, "keep")
    assert by_utterance["block"] == "utterance" and by_utterance["wer"]["n_blocks"] == 4
    result = forgetting.write_forgetting(tmp_path, "keep", keep)
    saved = json.loads((tmp_path / "forgetting_keep.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["n_utterances"] == 4 and saved["block"] == "spk_id"
    wer = saved["wer"]
    assert (wer["zero_shot"], wer["fine_tuned"]) == (6.25, 25.0)
    assert wer["difference"] == pytest.approx(18.75) and wer["n_blocks"] == 3
    lo, hi = wer["ci95"]
    assert lo <= 18.75 <= hi
    assert saved["hallucination_rate"] == {"zero_shot": 0.0, "fine_tuned": 100.0, "n": 1}
    markdown = (tmp_path / "forgetting_keep.md").read_text().splitlines()
    assert markdown[0] == "# Forgetting on keep"
    assert markdown[6].startswith("| WER | 6.25 | 25.00 | 18.75 | ")
    assert markdown[-1].startswith("WER delta 18.75 points (95% CI ")
