"""Timestamp targets, long-form and previous-text examples, the timestamp rules, and the
long-form decoding loop, against hand-built references."""

import json
import random

import numpy as np
import pytest
import soundfile as sf
import torch

from whisper_finetuning.data.examples import (
    Plan,
    Segment,
    TrainingExamples,
    align_to_targets,
    segments_from_tokens,
)
from whisper_finetuning.decoding.longform import (
    Transcription,
    WindowDecoder,
    boundary_errors,
    transcribe,
    transcribe_together,
)
from whisper_finetuning.decoding.search import greedy_search, timestamp_rules
from whisper_finetuning.model.asr import WhisperASR
from whisper_finetuning.model.vocabulary import MAX_TARGET_POSITIONS


@pytest.fixture(scope="module")
def whisper(random_whisper_dir):
    return WhisperASR(str(random_whisper_dir)).eval()


def ids(whisper, *tokens):
    """Token ids of special tokens and timestamp strings such as ``<|1.24|>``."""
    return whisper.tokenizer.convert_tokens_to_ids(list(tokens))


def rows(durations_and_texts, speakers=None, folder=None):
    """Manifest rows ``{id: row}`` in order; wav files of silence-with-noise when ``folder``."""
    found = {}
    for i, (duration, text) in enumerate(durations_and_texts):
        wav = ""
        if folder is not None:
            wav = str(folder / f"r{i}.wav")
            noise = np.random.default_rng(i).standard_normal(round(duration * 16000))
            sf.write(wav, (0.1 * noise).astype(np.float32), 16000)
        speaker = speakers[i] if speakers else "s"
        found[f"r{i}"] = {"duration": f"{duration:.3f}", "wrd": text, "spk_id": speaker, "wav": wav}
    return found


def test_timestamp_targets_equal_a_hand_built_reference_and_decode_back(whisper):
    manifest = rows([(2.487, "hello world"), (1.5, "good morning")])
    built = TrainingExamples(manifest, whisper, seed=1, timestamp_probability=1.0)
    plan = built.plan("r0")
    assert plan == Plan(("r0",), (0.0,), True, None)
    tokens_in, targets, prompt_len = built.tokens(plan)
    text = whisper.tokenizer.encode(" hello world", add_special_tokens=False)
    # 2.487 s lies nearest the 2.48 s token (0.02 s steps).
    assert tokens_in == ids(whisper, "<|startoftranscript|>", "<|0.00|>") + text + ids(
        whisper, "<|2.48|>"
    )
    assert targets == tokens_in[1:] + ids(whisper, "<|endoftext|>") and prompt_len == 1
    segments = segments_from_tokens(targets, whisper.timestamp_begin, whisper.decode_text)
    assert [s.text for s in segments] == ["hello world"]
    assert abs(segments[0].start - 0.0) <= 0.02 and abs(segments[0].end - 2.487) <= 0.02
    # Without timestamps: the plain prompt, exactly as before.
    plain = TrainingExamples(manifest, whisper, seed=1)
    assert not plain.active
    assert plain.tokens(plain.plan("r0")) == (
        whisper.prefix_tokens + text,
        text + ids(whisper, "<|endoftext|>"),
        2,
    )


def test_long_form_example_joins_the_speakers_next_utterances_with_timestamps(whisper, tmp_path):
    manifest = rows(
        [(3.0, "one two"), (4.0, "other voice"), (2.5, "three four"), (5.0, "five six")],
        speakers=["a", "b", "a", "a"],
        folder=tmp_path,
    )
    built = TrainingExamples(manifest, whisper, seed=7, longform_probability=1.0)
    built.set_epoch(3)
    plan = built.plan("r0")
    assert plan.ids == ("r0", "r2", "r3") and plan.timestamps  # speaker a, manifest order
    first_gap, second_gap = plan.offsets[1] - 3.0, plan.offsets[2] - plan.offsets[1] - 2.5
    assert 0.1 <= first_gap <= 0.8 and 0.1 <= second_gap <= 0.8
    stamp = lambda seconds: f"<|{seconds:.2f}|>"  # noqa: E731
    expected = [whisper.prefix_tokens[0]]
    for (start, end), text in zip(
        [
            (0.0, 3.0),
            (plan.offsets[1], plan.offsets[1] + 2.5),
            (plan.offsets[2], plan.offsets[2] + 5),
        ],
        ["one two", "three four", "five six"],
        strict=True,
    ):
        expected += ids(whisper, stamp(start))
        expected += whisper.tokenizer.encode(" " + text, add_special_tokens=False)
        expected += ids(whisper, stamp(end))
    tokens_in, targets, _ = built.tokens(plan)
    assert tokens_in == expected
    assert built.text(plan) == "one two three four five six"
    decoded = segments_from_tokens(targets, whisper.timestamp_begin, whisper.decode_text)
    for segment, (start, duration) in zip(
        decoded, [(0.0, 3.0), (plan.offsets[1], 2.5), (plan.offsets[2], 5.0)], strict=True
    ):
        assert abs(segment.start - start) <= 0.02 and abs(segment.end - start - duration) <= 0.02
    audio = built.audio(plan)
    assert len(audio) == round(plan.offsets[2] * 16000) + 5 * 16000
    start = round(plan.offsets[1] * 16000)
    second, _ = sf.read(manifest["r2"]["wav"], dtype="float32")
    torch.testing.assert_close(audio[start : start + len(second)], torch.from_numpy(second))
    assert not audio[3 * 16000 : start].any()  # the gap is silent


def test_examples_prompt_in_the_row_s_language_and_join_only_one_language(
    random_multilingual_dir,
):
    model = WhisperASR(str(random_multilingual_dir))
    manifest = rows([(3.0, "eins zwei"), (2.0, "drei vier"), (2.0, "un deux"), (2.0, "fünf")])
    for row, language in zip(
        manifest.values(), ["german", "german", "french", "german"], strict=True
    ):
        row["language"] = language
    built = TrainingExamples(manifest, model, seed=7, longform_probability=1.0)
    plan = built.plan("r0")
    assert plan.ids == ("r0", "r1")  # the French row ends the window
    tokens_in, _, prompt_len = built.tokens(plan)
    assert tokens_in[:prompt_len] == model.prompt("german", timestamps=True)
    french = built.plan("r2")
    assert french.ids == ("r2",)
    tokens_in, _, prompt_len = built.tokens(french)
    assert tokens_in[:prompt_len] == ids(model, "<|startoftranscript|>", "<|fr|>", "<|transcribe|>")


def test_previous_text_prompt_is_never_trained_on(whisper):
    manifest = rows([(2.0, "first words"), (2.0, "second words")])
    built = TrainingExamples(manifest, whisper, seed=0, condition_on_prev_probability=1.0)
    assert built.plan("r0").previous is None  # nothing before the first utterance
    plan = built.plan("r1")
    assert plan.previous == "first words"
    tokens_in, targets, prompt_len = built.tokens(plan)
    previous = whisper.tokenizer.encode(" first words", add_special_tokens=False)
    text = whisper.tokenizer.encode(" second words", add_special_tokens=False)
    prompt = ids(whisper, "<|startofprev|>") + previous + whisper.prefix_tokens
    assert tokens_in == prompt + text and prompt_len == len(prompt)
    assert targets == text + [whisper.eot]
    # Rows with prompts of different lengths: each target is read where it is predicted.
    log_probs = torch.randn(2, 9, 5)
    aligned = align_to_targets(log_probs, torch.tensor([2, 5]), 4)
    for row, first in ((0, 1), (1, 4)):
        for i in range(4):
            position = min(first + i, 8)
            torch.testing.assert_close(aligned[row, i], log_probs[row, position])


def test_long_form_examples_stay_within_30_s_and_448_positions_and_survive_a_restart(whisper):
    generator = random.Random(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda".split()
    manifest = rows(
        [
            (
                generator.uniform(1.0, 12.0),
                " ".join(generator.choices(words, k=generator.randint(3, 60))),
            )
            for _ in range(40)
        ],
        speakers=[f"s{i % 3}" for i in range(40)],
    )
    options = dict(
        seed=5,
        timestamp_probability=0.5,
        longform_probability=0.5,
        condition_on_prev_probability=0.5,
    )
    before = TrainingExamples(manifest, whisper, **options)
    joined = 0
    for epoch in (1, 2, 3):
        before.set_epoch(epoch)
        for utt_id in manifest:
            plan = before.plan(utt_id)
            last = plan.ids[-1]
            assert plan.offsets[-1] + float(manifest[last]["duration"]) <= 30.0
            assert before.positions(plan) <= MAX_TARGET_POSITIONS
            joined += len(plan.ids) > 1
    assert joined > 20
    # A restarted process (other global random state) builds the same examples for an epoch.
    torch.manual_seed(123)
    random.seed(123)
    after = TrainingExamples(manifest, whisper, **options)
    after.set_epoch(2)
    before.set_epoch(2)
    for utt_id in manifest:
        assert after.plan(utt_id) == before.plan(utt_id)
        assert after.tokens(after.plan(utt_id)) == before.tokens(before.plan(utt_id))
    # Another epoch draws other examples.
    after.set_epoch(4)
    assert [after.plan(u) for u in manifest] != [before.plan(u) for u in manifest]


def test_timestamp_rules_follow_openai(whisper):
    begin, eot = whisper.timestamp_begin, whisper.eot
    vocab = whisper.model.config.vocab_size
    logits = torch.zeros(4, vocab)
    logits[:, [100, eot]] = 50.0  # a text token and the end far likelier than any timestamp
    hyps = [
        [],
        [begin + 10, 100],
        [begin + 10, 100, begin + 30],
        [begin + 10, 100, begin + 30, begin + 30],
    ]
    ruled = timestamp_rules(logits.clone(), hyps, begin, eot, begin - 1)
    allowed = [set(torch.nonzero(row > -torch.inf).flatten().tolist()) for row in ruled]
    assert allowed[0] == set(range(begin, begin + 51))  # a timestamp of at most 1.00 s first
    assert 100 in allowed[1] and begin + 10 not in allowed[1] and begin + 11 in allowed[1]
    assert allowed[2] == {eot, *range(eot + 1, begin - 1), *range(begin + 30, vocab)}  # closes
    assert 100 in allowed[3] and not allowed[3] & set(range(begin, vocab))  # text after a pair
    # All timestamps together likelier than the best text token: a timestamp comes next.
    logits = torch.zeros(1, vocab)
    logits[0, 100] = 5.0
    ruled = timestamp_rules(logits, [[begin, 100]], begin, eot, begin - 1)
    assert ruled[0, :begin].max() == -torch.inf


def test_greedy_search_with_timestamps_equals_transformers_generate(whisper, tiny_en_dir):
    from transformers import GenerationConfig

    generation = GenerationConfig.from_pretrained(tiny_en_dir)
    whisper.generation_config = generation
    whisper.model.generation_config = generation
    torch.manual_seed(0)
    feats = whisper.features(0.3 * torch.randn(3, 16000 * 4))
    with torch.no_grad():
        encoder_out = whisper.encode(feats)
        reference = whisper.model.generate(
            feats, return_timestamps=True, max_new_tokens=20, do_sample=False
        ).tolist()
    prompt = whisper.prompt(timestamps=True)
    ours, _ = greedy_search(whisper, encoder_out, 20, prompts=[prompt] * 3, timestamps=True)
    for hyp, ref in zip(ours, reference, strict=True):
        ref = ref[len(prompt) :] if ref[: len(prompt)] == prompt else ref
        # generate counts the start token in its 20 and appends a second pass over the
        # window it did not close: its first 19 tokens are the comparable ones.
        assert hyp[:19] == ref[:19]
    assert any(t >= whisper.timestamp_begin for hyp in ours for t in hyp)


def scripted_windows(script, calls):
    """A window decoder that returns the script's tokens for the window starting at a second."""

    def decode(start, end, previous):
        calls.append((start / 16000, end / 16000, list(previous)))
        return script[start / 16000], 0.0

    return decode


def test_long_form_decoding_seeks_as_openai_transcribe_and_joins_the_windows():
    begin = 1000  # timestamp tokens: 1000 + t / 0.02; text tokens below
    t = lambda seconds: begin + round(seconds / 0.02)  # noqa: E731
    script = {
        # Two closed segments, then "7" unfinished from 28.40 s: the next window starts at
        # the last closed timestamp, 28.00 s, and decodes "7" again.
        0.0: [t(0), 1, 2, t(5), t(5), 3, t(28), t(28.4), 7],
        # Ends with a single timestamp: both segments kept, the next window 30 s on.
        28.0: [t(0), 4, t(6), t(6.4), 5, t(18)],
        # 12 s left, no timestamp pair: one segment up to the window's end.
        58.0: [t(0), 6],
    }
    calls = []
    segments, windows = transcribe(scripted_windows(script, calls), 70 * 16000, begin)
    assert windows == 3
    assert [
        (round(s, 2), round(e, 2), [x for x in toks if x < begin]) for s, e, toks in segments
    ] == [
        (0.0, 5.0, [1, 2]),
        (5.0, 28.0, [3]),
        (28.0, 34.0, [4]),
        (34.4, 46.0, [5]),
        (58.0, 70.0, [6]),
    ]
    assert [(s, e) for s, e, _ in calls] == [(0.0, 30.0), (28.0, 58.0), (58.0, 70.0)]
    # Each window is prompted with everything decoded before it (condition on previous text).
    assert calls[1][2] == script[0.0][:7] and calls[2][2] == script[0.0][:7] + script[28.0]
    calls.clear()
    transcribe(scripted_windows(script, calls), 70 * 16000, begin, condition_on_previous_text=False)
    assert [previous for _, _, previous in calls] == [[], [], []]


def test_long_form_drops_instantaneous_segments_and_reads_a_lone_final_timestamp():
    begin = 1000
    t = lambda seconds: begin + round(seconds / 0.02)  # noqa: E731
    script = {0.0: [t(0), 1, t(4), t(4), t(4), 2, t(9)], 30.0: [t(0), 3, t(2)]}
    segments, windows = transcribe(scripted_windows(script, []), 45 * 16000, begin)
    # [4.00, 4.00] is instantaneous; the second window's lone final timestamp gives its end.
    assert [(round(s, 2), round(e, 2)) for s, e, _ in segments] == [(0, 4), (4, 9), (30, 32)]
    assert windows == 2


def test_recordings_decoded_together_equal_each_decoded_alone():
    begin = 1000
    t = lambda seconds: begin + round(seconds / 0.02)  # noqa: E731
    scripts = [
        {0.0: [t(0), 1, t(20), t(21), 2, t(29), t(29.5), 8], 29.0: [t(0), 3, t(4)]},
        {0.0: [t(0), 4, t(30)], 30.0: [t(0), 5, t(2), t(2), 6, t(9)]},
    ]
    lengths = [40 * 16000, 45 * 16000]
    batches = []

    def decode_windows(requests, previous):
        batches.append([(i, start / 16000) for i, start, _ in requests])
        return [(scripts[i][start / 16000], 0.0) for i, start, _ in requests]

    together = [Transcription(n, begin, condition_on_previous_text=False) for n in lengths]
    transcribe_together(decode_windows, together)
    for script, length, transcription in zip(scripts, lengths, together, strict=True):
        alone = transcribe(scripted_windows(script, []), length, begin, False)
        assert (transcription.segments, transcription.windows) == alone
    assert batches == [[(0, 0.0), (1, 0.0)], [(0, 29.0), (1, 30.0)]]  # one batch per round
    # With the previous text as prompt, windows with different prompts are decoded apart.
    batches.clear()
    transcribe_together(decode_windows, [Transcription(n, begin) for n in lengths])
    assert batches == [[(0, 0.0), (1, 0.0)], [(0, 29.0)], [(1, 30.0)]]


def test_each_recording_s_windows_are_prompted_in_its_language(random_multilingual_dir):
    model = WhisperASR(str(random_multilingual_dir)).eval()
    torch.manual_seed(2)
    wavs = [0.3 * torch.randn(16000 * 3), 0.3 * torch.randn(16000 * 2)]
    languages, codes = ["german", "french"], ["de", "fr"]
    decoder = WindowDecoder(model, wavs, max_new_tokens=6, languages=languages)
    previous = model.encode_text("vorher")
    found = decoder([(0, 0, len(wavs[0])), (1, 0, len(wavs[1]))], previous)
    for wav, language, code, (tokens, _) in zip(wavs, languages, codes, found, strict=True):
        window = torch.nn.functional.pad(wav, (0, 16000 * 30 - len(wav)))[None]
        prompt = model.prompt(language, timestamps=True, previous=previous)
        assert prompt[-2:] == model.tokenizer.convert_tokens_to_ids(
            [f"<|{code}|>", "<|transcribe|>"]
        )
        with torch.no_grad():
            encoder_out = model.encode(model.features(window))
            (alone,), _ = greedy_search(model, encoder_out, 6, prompts=[prompt], timestamps=True)
        assert tokens == alone


def test_a_long_form_set_without_recordings_is_skipped(tmp_path):
    from whisper_finetuning.decoding import longform

    empty = tmp_path / "longform.csv"
    empty.write_text("ID,duration,wav,wrd,segments\n")
    assert longform.evaluate(None, empty, tmp_path, str.strip, tmp_path, "empty") is None
    assert not list(tmp_path.glob("summary_*"))


def test_a_probability_outside_0_to_1_is_refused_before_any_work():
    from whisper_finetuning.training.hparam_rules import check

    assert check({"timestamp_probability": 0.5, "longform_probability": 0.2}) is None
    assert check({"longform_probability": 1.5}) == (
        "longform_probability must be a number from 0 to 1, not 1.5"
    )
    assert check({"objective": "mwer", "longform_probability": 0.0}) is None
    assert check({"objective": "mwer", "timestamp_probability": 0.5}) == (
        "timestamp_probability must be 0 with objective mwer (it scores plain transcripts only)"
    )


def test_boundary_errors_match_each_reference_boundary_to_the_nearest():
    reference = [Segment(0.0, 2.0, "a"), Segment(2.5, 6.0, "b")]
    hypothesis = [Segment(0.1, 2.2, "a"), Segment(2.4, 5.0, "b"), Segment(5.0, 6.5, "c")]
    assert boundary_errors(reference, hypothesis) == pytest.approx([0.1, 0.2, 0.1, 0.5])
    assert boundary_errors(reference, []) == []


LONG_SENTENCES = [
    "How much is a return ticket to Glasgow for two adults and one child?",
    "The border check took ten minutes, but the queue before it took two hours.",
    "Could you send me the latest version of the report before lunch?",
    "The contract runs for twelve months with an option to renew.",
    "According to the radio, tomorrow will be mild with sunny spells.",
    "How many people applied for the marketing position?",
    "The experiment failed three times before anyone noticed the faulty wire.",
    "Please leave your umbrella by the door when you come in.",
    "The library closes early on Sundays during the summer.",
    "We booked a table by the window for eight o'clock.",
    "The old bridge was repaired after the storm last winter.",
]


@pytest.fixture(scope="module")
def spoken_recording(tmp_path_factory):
    """A 40-50 s recording of espeak-ng sentences with 0.6 s gaps, its manifest and segments."""
    from conftest import speak, write_manifest

    from whisper_finetuning.data.prepare.accent_corpus import speech

    folder = tmp_path_factory.mktemp("longform_speech")
    clips = [
        speech(sf.read(speak(text, folder / f"s{i}.wav"), dtype="float32")[0])
        for i, text in enumerate(LONG_SENTENCES)
    ]
    audio, segments = np.zeros(0, dtype=np.float32), []
    for clip, text in zip(clips, LONG_SENTENCES, strict=True):
        start = len(audio) / 16000 + (0.6 if len(audio) else 0.0)
        audio = np.concatenate([audio, np.zeros(round(start * 16000) - len(audio)), clip])
        segments.append([round(start, 3), round(len(audio) / 16000, 3), text])
    sf.write(folder / "long.wav", audio.astype(np.float32), 16000)
    manifest = write_manifest(
        folder / "long.csv",
        [
            {
                "ID": "long",
                "duration": f"{len(audio) / 16000:.3f}",
                "wav": folder / "long.wav",
                "wrd": " ".join(LONG_SENTENCES),
                "segments": json.dumps(segments),
            }
        ],
        columns=("ID", "duration", "wav", "wrd", "segments"),
    )
    return manifest, audio, segments


def test_long_form_on_speech_equals_transformers_and_stays_within_its_wer(
    tiny_en_dir, spoken_recording, tmp_path
):
    from transformers import WhisperProcessor

    from whisper_finetuning.decoding import longform
    from whisper_finetuning.evaluation.scoring import text_normalizer

    manifest, audio, reference = spoken_recording
    assert 35 <= len(audio) / 16000 <= 55  # two windows
    model = WhisperASR(str(tiny_en_dir)).eval()
    normalize = text_normalizer("auto", model.tokenizer, True)
    summary = longform.evaluate(
        model, manifest, tmp_path, normalize, tmp_path, "speech", condition_on_previous_text=False
    )
    (decoded,) = [json.loads(line) for line in open(tmp_path / "utterances_longform_speech.jsonl")]
    assert decoded["windows"] == 2
    # transformers' sequential long-form generate (its port of openai's loop) finds the same.
    processor = WhisperProcessor.from_pretrained(tiny_en_dir)
    features = processor(
        audio,
        sampling_rate=16000,
        return_tensors="pt",
        truncation=False,
        padding="longest",
        return_attention_mask=True,
    )
    with torch.no_grad():
        generated = model.model.generate(
            **features, return_timestamps=True, condition_on_prev_tokens=False, return_segments=True
        )
    expected = [
        [
            round(float(s["start"]), 2),
            round(float(s["end"]), 2),
            model.decode_text(s["tokens"].tolist()),
        ]
        for s in generated["segments"][0]
    ]
    assert decoded["segments"] == expected
    # Measured: WER 2.48% (3 errors in 121 words), boundary error 0.233 s, 11 of 11 segments.
    assert summary["wer"] <= 5.0
    assert summary["timestamps"]["boundary_mae"] <= 0.3
    assert summary["timestamps"]["reference_segments"] == len(reference)
