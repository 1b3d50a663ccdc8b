"""Analyses of finished runs (never torch): the diagnosis and the review."""
