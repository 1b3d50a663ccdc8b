"""What the benchmarks and the memory planner need: FLOP counts, Whisper's shapes, memory plans."""
