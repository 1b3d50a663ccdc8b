#!/usr/bin/env bash
# The benchmark's GPU section in one go (whisper_finetuning/synthetic_benchmark.py): random Whisper models of
# the small, medium and large-v3 shapes, bf16, SDPA, this recipe's training step against
# transformers' Seq2SeqTrainer. Runs offline: it needs torch and transformers (with accelerate,
# which Seq2SeqTrainer uses) and nothing else (no checkpoint, tokenizer, corpus, SpeechBrain).
# Usage, from anywhere: whisper_finetuning/profiling/gpu_benchmark.sh [OUTPUT_FOLDER] [more benchmark options]
# Writes gpu_benchmark.json and gpu_benchmark.txt (device, versions, the printed table).
set -euo pipefail
out="$(realpath "${1:-.}")"
shift || true
cd "$(dirname "$0")/.."
mkdir -p "$out"
python - <<'PY' | tee "$out/gpu_benchmark.txt"
import torch, transformers
print("torch", torch.__version__, "transformers", transformers.__version__)
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA GPU")
PY
python -m whisper_finetuning.benchmark --device cuda --shapes small,medium,large-v3 --batch_size 16 \
    --steps 20 --json "$out/gpu_benchmark.json" "$@" | tee -a "$out/gpu_benchmark.txt"
