"""Evaluation: normalised WER, CER, BLEU, chrF with intervals; the selection rule."""
