"""Checkpoint averaging of trainable weights."""

import pytest
import torch

from whisper_finetuning.training.averaging import average_parameters


def test_averaging_identical_checkpoints_returns_them_exactly():
    torch.manual_seed(0)
    saved = {"a.weight": torch.randn(5, 3), "b.bias": torch.randn(7)}
    averaged = average_parameters([saved, {k: v.clone() for k, v in saved.items()}, saved])
    assert averaged.keys() == saved.keys()
    for name, value in saved.items():
        assert averaged[name].dtype == value.dtype
        torch.testing.assert_close(averaged[name], value, atol=0, rtol=0)


def test_averaging_is_the_elementwise_mean():
    first = {"w": torch.tensor([1.0, 2.0, 4.0])}
    second = {"w": torch.tensor([3.0, 2.0, -4.0])}
    assert average_parameters([first, second])["w"].tolist() == [2.0, 2.0, 0.0]


def test_averaging_refuses_checkpoints_of_different_models():
    tiny = {"w": torch.zeros(384, 384)}
    base = {"w": torch.zeros(512, 512)}
    with pytest.raises(ValueError, match=r"different models: w has shapes \(384, 384\)"):
        average_parameters([tiny, base])
    with pytest.raises(ValueError, match="different models: only some hold lora"):
        average_parameters([tiny, {**tiny, "lora_A": torch.zeros(2)}])


# Four epochs' valid scores: the 3 best by WER are epochs 2, 4, 3 (20, 22, 25); by BLEU
# epochs 2, 3, 1 (48, 45, 40).
EPOCH_SCORES = {
    1: {"WER": 30.0, "BLEU": 40.0},
    2: {"WER": 20.0, "BLEU": 48.0},
    3: {"WER": 25.0, "BLEU": 45.0},
    4: {"WER": 22.0, "BLEU": 30.0},
}


def _epoch_weights(epoch):
    """Epoch ``epoch``'s weights: ``arange x epoch + epoch^2`` (means are easy by hand)."""
    return torch.arange(6.0).view(2, 3) * epoch + epoch**2


class _StubWhisper(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2, 3))

    def load_trainable(self, saved, origin):
        del origin
        self.load_state_dict(saved)


class _StubScorer:
    def __init__(self, brain):
        self.brain = brain

    def write(self, folder, name):
        self.brain.written.append(name)
        score = self.brain.averaged_score
        summary = {"wer": 99.0, "wer_ci95": [90.0, 100.0], "cer": 50.0, "bleu": 1.0, "chrf": 2.0}
        return {**summary, self.brain.hparams.selection_metric.lower(): score}


class _StubBrain:
    """What ``average_best_epochs`` asks of the recipe's brain; the valid pass records the
    weights it scores."""

    def __init__(self, folder, metric, averaged_score):
        from types import SimpleNamespace

        from whisper_finetuning.training.checkpointing import AtomicCheckpointer

        self.whisper = _StubWhisper()
        self.hparams = SimpleNamespace(
            selection_metric=metric, average_checkpoints=3, whisper=self.whisper
        )
        self.output_folder = str(folder)
        self.checkpointer = AtomicCheckpointer(folder / "save", {"whisper": self.whisper})
        self.modules = self.whisper
        self.scorer = _StubScorer(self)
        self.averaged_score = averaged_score
        self.scored, self.written = [], []

    def make_dataloader(self, dataset, stage, **kwargs):
        return dataset

    def on_stage_start(self, stage):
        pass

    def evaluate_batch(self, batch, stage):
        self.scored.append(self.whisper.w.detach().clone())
        return torch.tensor(batch)

    def gather_stage(self, loss):
        return loss


@pytest.mark.parametrize(
    ("metric", "chosen", "averaged_score", "kept"),
    [
        ("WER", [2, 4, 3], 19.0, True),  # lower than the best epoch's 20
        ("WER", [2, 4, 3], 20.0, False),  # a tie is no improvement
        ("WER", [2, 4, 3], 21.0, False),
        ("BLEU", [2, 3, 1], 49.0, True),  # higher than the best epoch's 48
        ("BLEU", [2, 3, 1], 48.0, False),
        ("BLEU", [2, 3, 1], 47.0, False),
    ],
)
def test_average_of_the_best_epochs_is_scored_and_kept_only_if_it_wins(
    tmp_path, metric, chosen, averaged_score, kept
):
    import json

    from whisper_finetuning.evaluation.selection import best_earliest
    from whisper_finetuning.training.averaging import average_best_epochs

    brain = _StubBrain(tmp_path, metric, averaged_score)
    for epoch, scores in EPOCH_SCORES.items():
        with torch.no_grad():
            brain.whisper.w.copy_(_epoch_weights(epoch))
        meta = {"epoch": epoch, "loss": 1.0, "CER": 10.0, "chrF": 50.0, **scores}
        brain.checkpointer.save_checkpoint(meta=meta)
    average_best_epochs(brain, valid_set=[0.5, 1.5], loader_kwargs={})

    # The chosen epochs' mean, by hand: arange x mean(e) + mean(e^2).
    mean = torch.arange(6.0).view(2, 3) * (sum(chosen) / 3) + sum(e**2 for e in chosen) / 3
    assert len(brain.scored) == 2 and brain.written == ["averaged"]
    for weights in brain.scored:
        torch.testing.assert_close(weights, mean)
    record = json.loads((tmp_path / "averaging.json").read_text())
    assert record["averaged_epochs"] == chosen and record["best_epoch"] == chosen[0]
    assert record["kept"] == ("averaged" if kept else f"epoch {chosen[0]}")
    checkpoints = brain.checkpointer.list_checkpoints()
    averaged = [c for c in checkpoints if "averaged_epochs" in c.meta]
    assert len(checkpoints) == 4 + kept and len(averaged) == int(kept)
    selected = brain.checkpointer.find_checkpoint(importance_key=best_earliest(metric))
    assert ("averaged_epochs" in selected.meta) is kept
    assert selected.meta["epoch"] == (max(chosen) if kept else chosen[0])
    if kept:
        assert averaged[0].meta["averaged_epochs"] == chosen
        assert averaged[0].meta["epoch"] == max(chosen)
        assert averaged[0].meta[metric] == averaged_score
        assert averaged[0].meta["loss"] == pytest.approx(1.0)  # the mean of the batches' losses
        saved = torch.load(averaged[0].paramfiles["whisper"], weights_only=True)
        torch.testing.assert_close(saved["w"], mean)
