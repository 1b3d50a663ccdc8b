"""The corpus metrics as functions of summed per-utterance statistics (numpy and sacrebleu only).

Each metric adds up over utterances: WER and CER from edit counts and reference lengths,
BLEU and chrF from sacrebleu's per-sentence statistics (its corpus scores are functions of
their sums). That is what lets every metric be resampled in blocks, here and in the analyses,
which never import torch.
"""

from operator import itemgetter

import numpy as np
from sacrebleu.metrics import BLEU, CHRF


def percent_of(errors, total):
    """An error rate in percent; None over no reference units."""
    return 100.0 * errors / total if total else None


SACREBLEU_BLEU, SACREBLEU_CHRF = BLEU(), CHRF()
# Each metric: the additive statistics of one utterance, and the score of summed statistics.
METRICS = {
    "wer": (itemgetter("word_errors", "words"), lambda s: percent_of(*s)),
    "cer": (itemgetter("char_errors", "chars"), lambda s: percent_of(*s)),
    "bleu": (itemgetter("bleu_stats"), lambda s: SACREBLEU_BLEU._compute_score_from_stats(s).score),
    "chrf": (itemgetter("chrf_stats"), lambda s: SACREBLEU_CHRF._compute_score_from_stats(s).score),
}


def metric(utterances, name):
    """Corpus-level ``name`` (wer, cer, bleu, chrf) of the utterances; None over none (or, for
    WER and CER, over no reference units)."""
    statistics, score = METRICS[name]
    if not utterances:
        return None
    return score(np.sum([statistics(u) for u in utterances], axis=0).tolist())


def statistics_of(utterances, name):
    """The utterances' additive statistics for metric ``name`` as an (utterances, k) array."""
    statistics, _ = METRICS[name]
    return np.array([np.atleast_1d(statistics(u)) for u in utterances], dtype=float)
