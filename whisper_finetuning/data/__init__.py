"""Data: manifests, audio, the checks before training, batches and training examples."""
