"""Minimum-WER training: the loss against hand computations, its gradient, the N-best lists
and their scores against unbatched references, and its reduction to CE with one hypothesis."""

import copy
import math

import pytest
import torch
from speechbrain.nnet.losses import nll_loss
from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

from whisper_finetuning.common.errors import RecipeError
from whisper_finetuning.decoding.search import BeamSearch, beam_search, beam_search_n_best
from whisper_finetuning.evaluation import scoring
from whisper_finetuning.model.asr import EncoderStates, WhisperASR
from whisper_finetuning.training import mwer

NEG_INF = -math.inf


@pytest.fixture
def random_en(random_whisper_dir):
    return WhisperASR(str(random_whisper_dir), trainable_patterns=["encoder_attn"])


def _encoded(model, rows, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.encode(model.features(0.3 * torch.randn(rows, 16000)))


def test_loss_on_a_scripted_n_best_list_equals_the_hand_computation():
    # Utterance 1: three hypotheses with probabilities .5 .3 .2 and 0, 2, 4 word errors
    # against a 10-word reference; utterance 2: two equally likely ones with 1 and 3 errors
    # against 5 words (its third slot is padding).
    scores = torch.tensor([[0.5, 0.3, 0.2], [1.0, 1.0, 0.0]]).log()
    scores[1, 2] = NEG_INF
    errors = torch.tensor([[0.0, 2.0, 4.0], [1.0, 3.0, 0.0]])
    words = torch.tensor([10.0, 5.0])
    loss, expected, oracle = mwer.expected_error_loss(scores, errors, words)
    # Means 2 and 2: sum_i p_i (e_i - mean) = .5(-2) + .3(0) + .2(2) = -0.6 and .5(-1) + .5(1) = 0.
    assert loss.item() == pytest.approx(-0.6 / 15)
    assert expected == pytest.approx(100 * (0.3 * 2 + 0.2 * 4 + 0.5 * 1 + 0.5 * 3) / 15)
    assert oracle == pytest.approx(100 * (0 + 1) / 15)


def test_gradient_moves_probability_toward_the_lower_error_hypotheses():
    scores = torch.tensor([[0.5, 0.3, 0.2]]).log().requires_grad_()
    errors = torch.tensor([[0.0, 2.0, 4.0]])
    words = torch.tensor([10.0])
    loss, _, _ = mwer.expected_error_loss(scores, errors, words)
    loss.backward()
    # d loss / d s_i = p_i (e_i - E[e]) / words, E[e] = 1.4.
    expected_grad = torch.tensor([[0.5 * -1.4, 0.3 * 0.6, 0.2 * 2.6]]) / 10
    torch.testing.assert_close(scores.grad, expected_grad)
    before = scores.detach().softmax(-1)
    after = (scores.detach() - 0.5 * scores.grad).softmax(-1)
    assert after[0, 0] > before[0, 0] and after[0, 2] < before[0, 2]
    assert mwer.expected_error_loss(scores.detach() - 0.5 * scores.grad, errors, words)[1] < 14.0


def test_word_errors_are_counted_after_the_normaliser():
    normalize = EnglishTextNormalizer({})
    lists = [["Hello, World!", "hello word", "hello"], ["Ten dollars."]]
    errors, words = mwer.word_errors(normalize, lists, ["hello world", "$10"])
    torch.testing.assert_close(errors, torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(words, torch.tensor([2.0, 1.0]))


def test_n_best_lists_extend_the_one_best_beam_search(random_en):
    encoder_out = _encoded(random_en, 3)
    lists = beam_search_n_best(random_en, encoder_out, beam_size=4, max_new_tokens=6)
    best, looped = beam_search(random_en, encoder_out, beam_size=4, max_new_tokens=6)
    assert [hyps[0] for hyps in lists] == list(zip(best, looped, strict=True))
    for hyps in lists:
        tokens = [tuple(t) for t, _ in hyps]
        assert len(hyps) == 4 and len(set(tokens)) == 4


def test_hypothesis_scores_equal_one_sequence_at_a_time(random_en):
    encoder_out = _encoded(random_en, 3)
    # Rows in two windows, the second given first, as EncoderStates groups them.
    states = EncoderStates([([2], encoder_out[2:]), ([0, 1], encoder_out[:2])])
    found = mwer.n_best(random_en, states, BeamSearch(beam_size=3, max_new_tokens=6))
    assert found.scores.shape == (3, 3) and found.scores.requires_grad
    for row, hyps in enumerate(found.tokens):
        assert hyps == [
            t for t, _ in beam_search_n_best(random_en, encoder_out[row : row + 1], 3, 6)[0]
        ]
        for i, tokens in enumerate(hyps):
            sequence = torch.tensor([random_en.prefix_tokens + tokens + [random_en.eot]])
            logits = random_en.forward_decoder(sequence[:, :-1], encoder_out[row : row + 1])
            log_probs = logits.float().log_softmax(-1)[0, len(random_en.prefix_tokens) - 1 :]
            reference = log_probs.gather(
                -1, sequence[0, len(random_en.prefix_tokens) :, None]
            ).sum()
            torch.testing.assert_close(found.scores[row, i], reference, atol=1e-5, rtol=0)


def test_rows_in_different_languages_are_searched_and_scored_from_their_own_prompts(
    random_multilingual_dir,
):
    model = WhisperASR(str(random_multilingual_dir), trainable_patterns=["encoder_attn"])
    encoder_out = _encoded(model, 3, seed=1)
    prompts = torch.tensor([model.prompt(lang) for lang in ("german", "french", "italian")])
    states = EncoderStates([([1], encoder_out[1:2]), ([0, 2], encoder_out[[0, 2]])])
    found = mwer.n_best(model, states, BeamSearch(beam_size=3, max_new_tokens=6), prompts)
    for row, hyps in enumerate(found.tokens):
        prompt = prompts[row].tolist()
        alone = beam_search_n_best(model, encoder_out[row : row + 1], 3, 6, prompts=[prompt])
        assert hyps == [t for t, _ in alone[0]]
        for i, tokens in enumerate(hyps):
            sequence = torch.tensor([prompt + tokens + [model.eot]])
            logits = model.forward_decoder(sequence[:, :-1], encoder_out[row : row + 1])
            log_probs = logits.float().log_softmax(-1)[0, len(prompt) - 1 :]
            reference = log_probs.gather(-1, sequence[0, len(prompt) :, None]).sum()
            torch.testing.assert_close(found.scores[row, i], reference, atol=1e-5, rtol=0)
    # Each row's words are counted after its own language's normaliser.
    normalize = scoring.Normalizers("auto", model.tokenizer)
    errors, _ = mwer.word_errors(
        normalize, [["Ten dollars."], ["Ten dollars."]], ["$10", "$10"], ["english", "german"]
    )
    torch.testing.assert_close(errors, torch.tensor([[0.0], [2.0]]))


def _padded(rows):
    """SpeechBrain's padding: zeros, and lengths relative to the longest row."""
    length = max(map(len, rows))
    padded = torch.tensor([row + [0] * (length - len(row)) for row in rows])
    return padded, torch.tensor([len(row) / length for row in rows])


def test_with_one_hypothesis_and_a_large_ce_weight_the_update_equals_ce(random_en):
    """N = 1: every list has probability 1, so the MWER term's gradient is exactly 0 and the
    loss is weight x CE: its gradient / weight equals CE's up to float rounding (1e-6 absolute,
    gradients up to ~1e-2 here), and AdamW, which normalises the gradient's scale, moves each
    parameter as CE's step does up to Adam's eps: relative 2e-4 where |g| > 1e-4 (eps/|g|
    bounds the difference; where the gradient is near eps, eps, not the gradient, sets the
    step)."""
    weight = 1000.0
    refs = ["hello world", "good morning to you"]
    torch.manual_seed(1)
    audio, audio_lens = 0.3 * torch.randn(2, 16000), torch.ones(2)
    moves, grads = {}, {}
    for name, model in (("mwer", random_en), ("ce", copy.deepcopy(random_en))):
        transcripts = [model.encode_text(r) for r in refs]
        bos, bos_lens = _padded([model.prefix_tokens + t for t in transcripts])
        eos, eos_lens = _padded([t + [model.eot] for t in transcripts])
        log_probs, states = model(audio, audio_lens, bos, bos_lens)
        first = len(model.prefix_tokens) - 1
        loss = nll_loss(log_probs[:, first:], eos, length=eos_lens, label_smoothing=0.1)
        if name == "mwer":
            ce = loss
            found = mwer.n_best(model, states, BeamSearch(beam_size=1, max_new_tokens=6))
            assert [len(hyps) for hyps in found.tokens] == [1, 1]
            loss, logged = mwer.objective(model, found, refs, EnglishTextNormalizer({}), ce, weight)
            assert logged["ce"] == pytest.approx(ce.item())
            assert loss.item() == pytest.approx(weight * ce.item(), rel=1e-6)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-3)
        loss.backward()
        grads[name] = [p.grad / (weight if name == "mwer" else 1.0) for p in params]
        before = [p.detach().clone() for p in params]
        optimizer.step()
        moves[name] = [p.detach() - b for p, b in zip(params, before, strict=True)]
    for grad_mwer, grad_ce in zip(grads["mwer"], grads["ce"], strict=True):
        torch.testing.assert_close(grad_mwer, grad_ce, rtol=1e-5, atol=1e-6)
    move_mwer, move_ce, grad = (
        torch.cat([t.flatten() for t in ts]) for ts in (*moves.values(), grads["ce"])
    )
    above_eps = grad.abs() > 1e-4  # Adam's eps changes such a step by < eps/|g| = 1e-4
    assert above_eps.sum() > 1000
    torch.testing.assert_close(move_mwer[above_eps], move_ce[above_eps], rtol=2e-4, atol=0)


def test_init_checkpoint_is_a_folder_or_a_kept_epoch(tmp_path, random_en):
    from whisper_finetuning.training.checkpointing import AtomicCheckpointer

    checkpointer = AtomicCheckpointer(tmp_path / "save", recoverables={"whisper": random_en})
    saved = checkpointer.save_checkpoint(meta={"epoch": 2, "WER": 10.0})
    assert mwer.init_checkpoint(2, checkpointer) == saved.path / "whisper.ckpt"
    assert mwer.init_checkpoint(str(saved.path), checkpointer) == saved.path / "whisper.ckpt"
    with pytest.raises(RecipeError, match="no kept checkpoint of epoch 3 in"):
        mwer.init_checkpoint(3, checkpointer)
    with pytest.raises(RecipeError, match="is not a checkpoint folder"):
        mwer.init_checkpoint(str(tmp_path), checkpointer)


class _TextModel:
    """What ``mwer.objective`` asks of the model: token lists -> text."""

    texts = {1: "The cat sat", 2: "a cat", 3: "hello there world", 4: "goodbye"}

    def decode_text(self, tokens):
        return " ".join(self.texts[t] for t in tokens)


def test_objective_on_a_scripted_2_best_list_equals_the_hand_computation():
    """Two utterances, two hypotheses each, with log-probabilities that do not sum to 1 (the
    objective renormalises them over each list) and known word errors after the normaliser.

    Utterance 1, reference "the cat sat" (3 words): "The cat sat" (0 errors, p .7 -> 7/9) and
    "a cat" (2: the->a, sat deleted; p .2 -> 2/9). Utterance 2, "hello world" (2 words):
    "hello there world" (1 insertion, p .1 -> 1/4) and "goodbye" (2; p .3 -> 3/4).
    Loss = sum over lists of sum_i p_i (e_i - mean e) / 5 words + ce_weight x CE;
    d loss / d s_i = p_i (e_i - E[e]) / 5 (the softmax's Jacobian; the mean is a constant).
    """
    scores = torch.tensor([[0.7, 0.2], [0.1, 0.3]]).log().requires_grad_()
    found = mwer.NBest(tokens=[[[1], [2]], [[3], [4]]], scores=scores)
    ce = torch.tensor(2.0, requires_grad=True)
    loss, logged = mwer.objective(
        _TextModel(), found, ["the cat sat", "hello world"], str.lower, ce, 0.5
    )
    p1, p2 = (7 / 9, 2 / 9), (1 / 4, 3 / 4)
    mwer_term = (p1[0] * (0 - 1) + p1[1] * (2 - 1) + p2[0] * (1 - 1.5) + p2[1] * (2 - 1.5)) / 5
    assert mwer_term == pytest.approx((-5 / 9 + 1 / 4) / 5)
    assert loss.item() == pytest.approx(mwer_term + 0.5 * 2.0, rel=1e-6)
    expected_errors = p1[1] * 2 + p2[0] * 1 + p2[1] * 2  # 4/9 + 7/4
    assert logged == pytest.approx(
        {"expected_wer": 100 * expected_errors / 5, "oracle_wer": 100 * (0 + 1) / 5, "ce": 2.0}
    )
    loss.backward()
    e1, e2 = p1[1] * 2, p2[0] * 1 + p2[1] * 2  # each list's expected errors: 4/9, 7/4
    expected_grad = torch.tensor(
        [
            [p1[0] * (0 - e1), p1[1] * (2 - e1)],
            [p2[0] * (1 - e2), p2[1] * (2 - e2)],
        ]
    )
    torch.testing.assert_close(scores.grad, expected_grad / 5, rtol=1e-6, atol=1e-7)
    assert ce.grad.item() == pytest.approx(0.5)
