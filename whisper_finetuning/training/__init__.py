"""Training: hparams, the Brain's resilience, checkpoints, logs, schedules and distributed runs."""
