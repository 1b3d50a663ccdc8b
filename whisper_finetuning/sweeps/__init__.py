"""Hyperparameter sweeps on Optuna: each trial one train.py run in its own folder."""
