"""Decoding: greedy and beam search, and long-form transcription."""
