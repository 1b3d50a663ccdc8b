"""Teacher-forced token statistics and calibration against direct recomputation."""

import json
import math

import pytest
import torch

from whisper_finetuning.training.log import (
    Calibration,
    TrainingLog,
    ValidTokenStats,
    token_statistics,
)


def test_token_statistics_match_a_loop_over_tokens():
    torch.manual_seed(0)
    log_probs = torch.log_softmax(torch.randn(2, 5, 7), dim=-1)
    targets = torch.tensor([[1, 2, 3, 0, 0], [4, 5, 6, 1, 2]])
    lengths = torch.tensor([0.6, 1.0])  # 3 and 5 tokens
    stats = token_statistics(log_probs, targets, lengths)
    assert stats["tokens"] == [3, 5]
    for b, n in enumerate((3, 5)):
        nll = -sum(log_probs[b, t, targets[b, t]].item() for t in range(n))
        correct = sum(int(log_probs[b, t].argmax() == targets[b, t]) for t in range(n))
        entropy = -sum((log_probs[b, t].exp() * log_probs[b, t]).sum().item() for t in range(n))
        assert stats["nll"][b] == pytest.approx(nll, rel=1e-5)
        assert stats["correct"][b] == correct
        assert stats["entropy"][b] == pytest.approx(entropy, rel=1e-5)
        assert stats["argmax"][b] == log_probs[b, :n].argmax(-1).tolist()
    assert len(stats["confidence"]) == len(stats["is_correct"]) == 8


def test_expected_calibration_error_by_hand():
    calibration = Calibration(bins=2)
    # Bin [0, .5): confidences .2, .4, one right: |0.5 - 0.3| = .2 over 2 tokens.
    # Bin [.5, 1]: confidences .9, .9, 1.0, all right: |1 - .9333| over 3 tokens.
    calibration.append(torch.tensor([0.2, 0.4, 0.9, 0.9, 1.0]), torch.tensor([1, 0, 1, 1, 1]))
    expected = (abs(1 - 0.2 - 0.4) + abs(3 - 0.9 - 0.9 - 1.0)) / 5
    assert calibration.ece() == pytest.approx(expected)
    assert math.isnan(Calibration().ece())


def test_valid_token_stats_are_per_token_means():
    stats = ValidTokenStats()
    stats.append(
        {
            "nll": [2.0, 4.0],
            "correct": [1, 3],
            "tokens": [2, 4],
            "entropy": [1.0, 2.0],
            "confidence": torch.tensor([0.5]),
            "is_correct": torch.tensor([True]),
        }
    )
    summary = stats.summary()
    assert summary["nll"] == pytest.approx(1.0)
    assert summary["token_accuracy"] == pytest.approx(4 / 6)
    assert summary["entropy"] == pytest.approx(0.5)


def test_visit_counts_survive_a_resume_without_double_counting(tmp_path):
    stats = {"nll": [1.0], "correct": [1], "tokens": [2]}
    log = TrainingLog(tmp_path)
    log.add_utterances(1, 0.5, ["a"], stats, ["x"], ["x"])
    log.add_utterances(2, 0.5, ["a"], stats, ["x"], ["x"])
    (tmp_path / "train_utterances.jsonl").open("a").write('{"epoch": 2, "id"')  # cut by a kill
    resumed = TrainingLog(tmp_path)
    resumed.add_utterances(2, 0.5, ["a"], stats, ["x"], ["x"])  # epoch 2 replayed after resume
    resumed.add_utterances(3, 0.5, ["a"], stats, ["x"], ["x"])
    lines = (tmp_path / "train_utterances.jsonl").read_text().splitlines()
    assert [json.loads(line)["seen"] for line in lines] == [1, 2, 2, 3]
