"""Comparing finished runs on one test set: paired differences with intervals, Holm-corrected
across pairs, per group, with a verdict per pair (standard library, numpy, sacrebleu,
matplotlib; never torch)."""
