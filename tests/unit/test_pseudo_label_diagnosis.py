"""The diagnosis names seed 001's case: training loss on pseudo-labelled rows falling while
the valid WER (human labels) does not improve."""

import pytest

from whisper_finetuning.analysis.diagnosis import Unavailable, label_sources, report, run
from whisper_finetuning.analysis.diagnosis.records import RunRecords

# (epoch, pseudo losses, human losses, valid WER)
TRAP = [(1, [2.0, 1.0], [3.0], 30.0), (2, [1.0, 0.5], [2.5], 30.0), (3, [0.5, 0.4], [2.4], 31.0)]
HEALTHY = [(1, [2.0, 1.0], [3.0], 30.0), (2, [1.0, 0.5], [2.5], 25.0)]


def _records(history):
    utterances, epochs = [], []
    for epoch, pseudo, human, wer in history:
        for i, loss in enumerate(pseudo):
            utterances.append(
                {"epoch": epoch, "id": f"p{i}", "loss": loss, "label_source": "pseudo"}
            )
        for i, loss in enumerate(human):
            utterances.append(
                {"epoch": epoch, "id": f"h{i}", "loss": loss, "label_source": "human"}
            )
        epochs.append({"epoch": epoch, "WER": wer, "loss": 1.0, "train_loss": 1.0})
    return RunRecords("experiment", epochs=epochs, train_utterances=utterances)


def test_the_trap_is_named():
    found = label_sources.pseudo_label_overfit(_records(TRAP))
    assert found["epochs"] == [
        {"epoch": 1, "train_loss_pseudo": 1.5, "train_loss_human": 3.0, "valid_wer": 30.0},
        {"epoch": 2, "train_loss_pseudo": 0.75, "train_loss_human": 2.5, "valid_wer": 30.0},
        {"epoch": 3, "train_loss_pseudo": 0.45, "train_loss_human": 2.4, "valid_wer": 31.0},
    ]
    assert found["pseudo_loss_fall"] == pytest.approx(0.7)  # (1.5 - 0.45) / 1.5
    assert found["valid_wer_gain"] == -1.0 and found["flagged"] is True
    (sentence,) = report._pseudo_label_sentences(found)
    assert sentence.startswith(
        "Fitting the pseudo-labels, not the speech: from epoch 1 to 3 the training loss on "
        "pseudo-labelled rows went from 1.500 to 0.450 (-70%) and the valid WER (human labels) "
        "from 30.00 to 31.00."
    )


def test_a_falling_wer_is_no_trap():
    found = label_sources.pseudo_label_overfit(_records(HEALTHY))
    assert found["valid_wer_gain"] == 5.0 and found["flagged"] is False
    assert report._pseudo_label_sentences(found)[0].endswith(
        "no sign of learning the labeller's errors."
    )


def test_one_epoch_is_not_enough_and_human_runs_are_not_checked():
    with pytest.raises(Unavailable, match="needs two epochs"):
        label_sources.pseudo_label_overfit(_records(TRAP[:1]))
    human_only = _records([(1, [], [3.0], 30.0), (2, [], [2.0], 30.0)])
    diagnostics = run.diagnose(human_only)
    assert diagnostics["pseudo_labels"] is None and "pseudo_labels" not in diagnostics["skipped"]
    diagnostics = run.diagnose(_records(TRAP))
    assert (
        diagnostics["pseudo_labels"]["flagged"]
        and "pseudo_labels" in diagnostics["available_analyses"]
    )
