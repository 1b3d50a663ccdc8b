"""The Whisper wrapper and the searchers against transformers' own implementation."""

from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import speak

from whisper_finetuning.decoding.search import BeamSearch, LoopStop, beam_search, greedy_search
from whisper_finetuning.model.asr import EncoderStates, WhisperASR
from whisper_finetuning.training import hparam_rules

LOOP_STOP = {"loop_stop": LoopStop(min_repeats=4, min_tokens=16)}


@pytest.fixture(scope="module")
def random_en(random_whisper_dir):
    return WhisperASR(str(random_whisper_dir)).eval()


def test_features_equal_whisper_feature_extractor_and_ignore_batch_mates(random_en):
    rng = np.random.default_rng(0)
    quiet = (0.01 * rng.standard_normal(16000 * 2)).astype(np.float32)
    loud = (0.9 * rng.standard_normal(16000 * 5)).astype(np.float32)
    batch = torch.zeros(2, len(loud))
    batch[0, : len(quiet)] = torch.from_numpy(quiet)
    batch[1] = torch.from_numpy(loud)
    lens = torch.tensor([len(quiet) / len(loud), 1.0])
    ours = random_en.features(batch, lens)
    for i, wav in enumerate((quiet, loud)):
        reference = random_en.feature_extractor(wav, sampling_rate=16000, return_tensors="pt")
        torch.testing.assert_close(ours[i], reference.input_features[0], atol=1e-5, rtol=0)
    alone = random_en.features(torch.from_numpy(quiet)[None])
    torch.testing.assert_close(ours[0], alone[0], atol=0, rtol=0)


def test_a_shorter_window_is_the_start_of_the_30_s_features_and_encodes_fewer_frames(
    random_whisper_dir, random_en
):
    from whisper_finetuning.data.encoder_cache import fingerprint

    short = WhisperASR(str(random_whisper_dir), window_seconds=10).eval()
    wav = (0.3 * np.random.default_rng(1).standard_normal(16000 * 4)).astype(np.float32)
    wav = torch.from_numpy(wav)[None]
    full, cut = random_en.features(wav), short.features(wav)
    assert cut.shape[-1] == 1000
    # The STFT's reflection at the window's end only touches its last frame.
    torch.testing.assert_close(cut[..., :-1], full[..., :999], atol=1e-6, rtol=0)
    with torch.no_grad():
        assert short.encode(cut).shape[1] == 500
    assert fingerprint(short) != fingerprint(random_en)
    assert hparam_rules.check({"encoder_window_seconds": 45}) == (
        "encoder_window_seconds must be an integer from 1 to 30, not 45"
    )


def test_each_clip_gets_its_own_window_whatever_its_batch_mates(random_whisper_dir):
    ten = WhisperASR(str(random_whisper_dir), window_seconds=10).eval()
    eight = WhisperASR(str(random_whisper_dir), window_seconds=8)
    second = 16000
    assert [ten.window_samples(s * second) // second for s in (1, 4, 10, 12, 29, 31)] == [
        10,
        10,
        10,
        20,
        30,
        30,
    ]
    assert [eight.window_samples(s * second) // second for s in (7, 15, 17, 25)] == [8, 16, 24, 30]
    rng = np.random.default_rng(2)
    wavs = [
        torch.from_numpy((0.3 * rng.standard_normal(s * second)).astype(np.float32))
        for s in (12, 4, 3)
    ]
    batch = torch.zeros(3, 12 * second)
    for i, wav in enumerate(wavs):
        batch[i, : len(wav)] = wav
    lens = torch.tensor([len(w) / batch.shape[1] for w in wavs])
    with pytest.raises(ValueError, match="need different windows"):
        ten.features(batch, lens)
    with torch.no_grad():
        groups = ten.encode_frozen_by_window(batch, lens)
        assert [(rows, out.shape[1]) for rows, out in groups] == [([1, 2], 500), ([0], 1000)]
        for rows, out in groups:
            for row, hidden in zip(rows, out, strict=True):
                alone = ten.encode_frozen(ten.features(wavs[row][None]))[0]
                torch.testing.assert_close(hidden, alone, atol=1e-5, rtol=1e-5)
        # Cached outputs come back padded to the longest; split by length, they are the same.
        padded = torch.zeros(3, 1000, groups[0][1].shape[-1])
        for rows, out in groups:
            padded[rows, : out.shape[1]] = out
        split = WhisperASR.split_by_length(padded, torch.tensor([1.0, 0.5, 0.5]))
        assert [rows for rows, _ in split] == [[1, 2], [0]]
        for (_, expected), (_, got) in zip(groups, split, strict=True):
            torch.testing.assert_close(got, expected, atol=0, rtol=0)


@pytest.mark.parametrize(
    "options, depth",
    [
        ({"freeze_encoder": True}, 4),
        ({"freeze_encoder": True, "trainable_encoder_layers": 1}, 2),
        ({"freeze_encoder": False}, 0),
        ({"trainable_patterns": ["encoder_attn"]}, 4),
    ],
)
def test_split_encoder_equals_transformers_encoder(random_whisper_dir, options, depth):
    model = WhisperASR(str(random_whisper_dir), **options).eval()
    assert model.frozen_encoder_depth == depth
    feats = model.features(torch.randn(1, 16000))
    with torch.no_grad():
        reference = model.model.model.encoder(feats).last_hidden_state
        ours = model.encode_trainable(model.encode_frozen(feats))
        torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
        # A 10 s window, which transformers' encoder refuses, runs whatever trains.
        short = WhisperASR(str(random_whisper_dir), window_seconds=10, **options).eval()
        assert short.encode(short.features(torch.randn(1, 16000))).shape[1] == 500


def test_trainable_patterns_train_only_cross_attention(random_whisper_dir):
    model = WhisperASR(str(random_whisper_dir), trainable_patterns=["encoder_attn"])
    trainable = {n for n, p in model.model.named_parameters() if p.requires_grad}
    assert trainable and all("decoder" in n and "encoder_attn" in n for n in trainable)
    # q, k, v, out projections and the layer norm of each of the two decoder layers.
    assert len(trainable) == 2 * (4 * 2 - 1 + 2)


def test_freeze_freezes_everything(random_whisper_dir):
    model = WhisperASR(str(random_whisper_dir), freeze=True)
    assert not any(p.requires_grad for p in model.parameters())


def test_prompt_tokens_for_english_only_and_multilingual(
    random_en, random_whisper_dir, random_multilingual_dir
):
    tok = random_en.tokenizer
    assert random_en.prefix_tokens == tok.convert_tokens_to_ids(
        ["<|startoftranscript|>", "<|notimestamps|>"]
    )
    multi = WhisperASR(str(random_multilingual_dir), language="german")
    assert multi.prefix_tokens == tok.convert_tokens_to_ids(
        ["<|startoftranscript|>", "<|de|>", "<|transcribe|>", "<|notimestamps|>"]
    )
    assert (
        multi.prompt("fr")
        == multi.prompt("french")
        == tok.convert_tokens_to_ids(
            ["<|startoftranscript|>", "<|fr|>", "<|transcribe|>", "<|notimestamps|>"]
        )
    )
    translate = WhisperASR(str(random_multilingual_dir), task="translate")
    assert translate.prefix_tokens is None  # no default language: every row must name one
    assert translate.prompt("it")[2] == tok.convert_tokens_to_ids("<|translate|>")
    with pytest.raises(ValueError, match="needs a language: give the manifest a 'language'"):
        translate.prompt(None)
    with pytest.raises(ValueError, match="unknown Whisper language 'klingon'; valid codes"):
        WhisperASR(str(random_multilingual_dir), language="klingon")
    with pytest.raises(ValueError, match="English-only .* cannot transcribe german"):
        random_en.prompt("de")
    assert random_en.prompt("english") == random_en.prefix_tokens
    with pytest.raises(ValueError, match="task translate needs a multilingual checkpoint"):
        WhisperASR(str(random_whisper_dir), task="translate")


def test_greedy_search_equals_transformers_generate(random_en):
    feats = random_en.features(torch.randn(3, 16000))
    with torch.no_grad():
        encoder_out = random_en.encode(feats)
        reference = random_en.model.generate(feats, max_new_tokens=12, do_sample=False)
    ours, looped = greedy_search(random_en, encoder_out, max_new_tokens=12)
    assert looped == [False] * 3
    prompt = random_en.prefix_tokens
    for hyp, ref in zip(ours, reference.tolist(), strict=True):
        ref = ref[len(prompt) :] if ref[: len(prompt)] == prompt else ref  # prompt kept or not
        ref = ref[: ref.index(random_en.eot)] if random_en.eot in ref else ref
        assert hyp == ref


def test_beam_of_one_is_greedy(random_en):
    feats = random_en.features(torch.randn(2, 16000))
    with torch.no_grad():
        encoder_out = random_en.encode(feats)
    greedy = greedy_search(random_en, encoder_out, max_new_tokens=8)
    assert beam_search(random_en, encoder_out, beam_size=1, max_new_tokens=8) == greedy


def test_loop_stop_finds_a_repeating_tail_and_keeps_one_copy():
    stop = LoopStop(min_repeats=4, min_tokens=12)
    assert stop.cut([1, 2, 3] + [4, 5, 6] * 4) == 6
    assert stop.cut([1, 2, 3] + [4, 5, 6] * 3) is None  # three copies are not yet a loop
    assert stop.cut([1, 2] * 6) == 2  # a two-token unit needs six copies for 12 tokens
    assert stop.cut([1, 2] * 5) is None
    assert stop.cut([7] * 11) is None and stop.cut([7] * 12) == 1
    assert stop.cut([5, 9, 9, 9, 9]) is None  # "no no no no" is speech
    assert stop.cut([4, 5, 6] * 4 + [1]) is None  # the tail, not the middle
    assert stop.cut([1, 2, 6] + [4, 5, 6] * 3 + [4, 5]) == 5  # one period, rotated: 6 4 5
    with pytest.raises(ValueError, match="loop_min_repeats must be 2 or more, not 1"):
        LoopStop(min_repeats=1, min_tokens=16)


class ScriptedDecoder:
    """A stand-in ``WhisperASR`` whose decoder prefers each utterance's scripted next token;
    utterance ``i``'s encoder output holds ``i`` (so its rows are followed wherever they go)."""

    eot, prefix_tokens = 9, [8]
    generation_config = SimpleNamespace(suppress_tokens=[], begin_suppress_tokens=[])
    model = SimpleNamespace(config=SimpleNamespace(max_target_positions=41))

    def __init__(self, scripts):
        self.scripts, self.step, self.batch_sizes = scripts, 0, []

    def prompt(self):
        return self.prefix_tokens

    def forward_decoder(self, tokens, encoder_out, cache):
        if (tokens[:, -1] == self.prefix_tokens[-1]).all():  # a search starts
            self.step = 0
        logits = torch.full((tokens.shape[0], 1, 10), -10.0)
        for row in range(tokens.shape[0]):
            script = self.scripts[int(encoder_out[row, 0, 0])]
            logits[row, -1, script[min(self.step, len(script) - 1)]] = 0.0
        self.step += 1
        self.batch_sizes.append(tokens.shape[0])
        return logits


def utterances(n):
    """Encoder outputs for ``ScriptedDecoder``'s utterances 0 to n - 1."""
    return torch.arange(n, dtype=torch.float32).reshape(n, 1, 1)


def test_greedy_search_drops_finished_rows_and_keeps_each_utterance_its_own():
    scripts = [[1, 2, 3, 4, 5, 9], [6, 9], [7, 7, 7, 9]]
    decoder = ScriptedDecoder(scripts)
    assert greedy_search(decoder, utterances(3)) == (
        [[1, 2, 3, 4, 5], [6], [7, 7, 7]],
        [False, False, False],
    )
    assert decoder.batch_sizes == [3, 3, 2, 2, 1, 1]  # utterance 1 leaves after 2 steps, 2 after 4
    # beam search of width 1 is this search (the batch shrinks alike), in each window's order
    states = EncoderStates([([2, 0], utterances(3)[[2, 0]]), ([1], utterances(3)[[1]])])
    decoder = ScriptedDecoder(scripts)
    assert BeamSearch(beam_size=1)(decoder, states) == (
        [[1, 2, 3, 4, 5], [6], [7, 7, 7]],
        [False, False, False],
    )
    assert decoder.batch_sizes == [2, 2, 2, 2, 1, 1, 1, 1]


def test_searchers_stop_a_loop_and_leave_other_utterances_alone():
    looping = [1, 2, 3] + [4, 5, 6] * 20
    speech = [7, 7, 7, 9]
    encoder_out = utterances(2)
    stop = LoopStop(min_repeats=4, min_tokens=12)
    assert greedy_search(ScriptedDecoder([looping, speech]), encoder_out, loop_stop=stop) == (
        [[1, 2, 3, 4, 5, 6], [7, 7, 7]],
        [True, False],
    )
    unstopped, looped = greedy_search(ScriptedDecoder([looping, speech]), encoder_out)
    assert unstopped == [looping[:40], [7, 7, 7]] and looped == [False, False]
    for script, expected in (
        (looping, ([[1, 2, 3, 4, 5, 6]], [True])),
        (speech, ([[7, 7, 7]], [False])),
    ):
        searched = beam_search(ScriptedDecoder([script]), encoder_out[:1], 3, loop_stop=stop)
        assert searched == expected


def _generated(model, feats, **settings):
    """``generate``'s transcripts as token lists without prompt and end of text."""
    prompt = model.prefix_tokens
    found = []
    for tokens in model.model.generate(feats, do_sample=False, **settings).tolist():
        tokens = tokens[len(prompt) :] if tokens[: len(prompt)] == prompt else tokens
        found.append(tokens[: tokens.index(model.eot)] if model.eot in tokens else tokens)
    return found


def test_beam_search_equals_generate_where_beams_greedy_and_length_penalties_differ(
    random_whisper_dir,
):
    model = WhisperASR(str(random_whisper_dir)).eval()
    torch.manual_seed(0)
    feats = model.features(0.3 * torch.randn(4, 32000), torch.tensor([1.0, 0.6, 0.35, 0.8]))
    with torch.no_grad():
        encoder_out = model.encode(feats)
        # Point the end-of-text embedding along the decoder's mean state, so that random
        # hypotheses end at different lengths and the length penalty decides between them.
        greedy, _ = greedy_search(model, encoder_out, 12)
        tokens = torch.tensor([model.prefix_tokens + hyp for hyp in greedy])
        states = model.model.model.decoder(input_ids=tokens, encoder_hidden_states=encoder_out)
        direction = states.last_hidden_state.mean((0, 1))
        top_logit = model.forward_decoder(tokens, encoder_out).max(-1).values.mean()
        model.model.model.decoder.embed_tokens.weight[model.eot] = (
            0.8 * top_logit * direction / direction.norm() ** 2
        )
        greedy, _ = greedy_search(model, encoder_out, 12)
        found = {}
        for penalty in (0.5, 2.0):
            found[penalty], _ = beam_search(model, encoder_out, 5, 12, penalty)
            expected = _generated(
                model, feats, num_beams=5, length_penalty=penalty, max_new_tokens=12
            )
            assert found[penalty] == expected
            assert all(b != g for b, g in zip(found[penalty], greedy, strict=True))
    assert [len(h) for h in found[0.5]] != [len(h) for h in found[2.0]]


@pytest.mark.slow
def test_searches_on_speech_equal_transformers_generate(tiny_en_dir, tmp_path):
    model = WhisperASR(str(tiny_en_dir)).eval()
    texts = ["The quick brown fox jumps over the lazy dog.", "Where is the nearest train station?"]
    wavs = [sf.read(speak(t, tmp_path / f"{i}.wav"))[0] for i, t in enumerate(texts)]
    batch = torch.zeros(2, max(len(w) for w in wavs))
    for i, wav in enumerate(wavs):
        batch[i, : len(wav)] = torch.from_numpy(wav)
    lens = torch.tensor([len(w) / batch.shape[1] for w in wavs])
    feats = model.features(batch, lens)
    with torch.no_grad():
        encoder_out = model.encode(feats)
        for searcher, beams in ((greedy_search, 1), (beam_search, 5)):
            reference = model.model.generate(feats, num_beams=beams, do_sample=False)
            expected = model.tokenizer.batch_decode(reference, skip_special_tokens=True)
            ours, looped = searcher(model, encoder_out, *([beams] if beams > 1 else []))
            assert [model.decode_text(h) for h in ours] == [e.strip() for e in expected]
            # Real speech does not loop: the loop stop changes nothing.
            guarded = searcher(model, encoder_out, *([beams] if beams > 1 else []), **LOOP_STOP)
            assert guarded == (ours, [False, False]) and looped == [False, False]


def test_checkpoints_hold_only_trainable_parameters(random_whisper_dir, tmp_path):
    trained = WhisperASR(str(random_whisper_dir), trainable_patterns=["encoder_attn"])
    with torch.no_grad():
        for param in trained.model.parameters():
            if param.requires_grad:
                param.add_(1.0)
    trained._save(tmp_path / "whisper.ckpt")
    saved = torch.load(tmp_path / "whisper.ckpt", weights_only=True)
    assert set(saved) == {n for n, p in trained.model.named_parameters() if p.requires_grad}
    fresh = WhisperASR(str(random_whisper_dir), trainable_patterns=["encoder_attn"])
    fresh._load(tmp_path / "whisper.ckpt", True)
    for (name, a), (_, b) in zip(
        trained.model.state_dict().items(), fresh.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    # A checkpoint of another model (other names or shapes) is refused, not half-loaded.
    torch.save({"model.decoder.embed_tokens.weight": torch.zeros(3, 3)}, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match="does not fit this model"):
        fresh._load(tmp_path / "bad.ckpt", True)


def test_the_export_prompts_as_the_run_did_when_a_pipeline_names_nothing(
    random_multilingual_dir, tmp_path
):
    from whisper_finetuning.export.huggingface import generate_kwargs, generation_config

    whisper = WhisperASR(random_multilingual_dir, None, language="de", task="translate")
    exported = generation_config(whisper)
    assert (exported.language, exported.task) == ("german", "translate")
    assert getattr(whisper.generation_config, "task", None) is None  # the run's own: as it was
    rows_named = generation_config(WhisperASR(random_multilingual_dir, None))
    assert (rows_named.language, rows_named.task) == (None, "transcribe")
    # openai's transcribe thresholds are generate's arguments, not the config's: a config
    # holding logprob_threshold fails a plain generate() (transformers asks for no scores)
    thresholds = ("no_speech_threshold", "logprob_threshold", "compression_ratio_threshold")
    assert [getattr(exported, key, None) for key in thresholds] == [None, None, None]
    kwargs = generate_kwargs()
    assert kwargs == {
        "temperature": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
        "compression_ratio_threshold": 2.4,
        "logprob_threshold": -1.0,
        "no_speech_threshold": 0.6,
    }


def test_the_exported_config_generates_plainly_and_under_the_transcribe_rules(random_whisper_dir):
    from transformers import WhisperForConditionalGeneration

    from whisper_finetuning.export.huggingface import generate_kwargs, generation_config

    whisper = WhisperASR(random_whisper_dir, None)
    model = WhisperForConditionalGeneration.from_pretrained(random_whisper_dir).eval()  # as saved
    model.generation_config = generation_config(whisper)
    features = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = model.generate(features, max_new_tokens=3)
        ruled = model.generate(features, max_new_tokens=3, **generate_kwargs())
    assert plain.dim() == ruled.dim() == 2  # token tensors, as a plain call returns
