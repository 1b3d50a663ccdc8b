#!/usr/bin/env bash
# The benchmark's device section in one go (whisper_finetuning/synthetic_benchmark.py): random
# Whisper models of the small, medium and large-v3 shapes, bf16, SDPA; this recipe's training
# step against transformers' Seq2SeqTrainer and SpeechBrain's own Whisper recipe
# (profiling/speechbrain_baseline.py). Runs offline: it needs torch, transformers (with
# accelerate, which Seq2SeqTrainer uses) and speechbrain, nothing else (no checkpoint,
# tokenizer or corpus).
# Usage, from anywhere: whisper_finetuning/profiling/gpu_benchmark.sh [OUTPUT_FOLDER] [more benchmark options]
# Then the FSDP checks (profiling/fsdp_check.py: one process per GPU, NCCL, fp32 and bf16
# mixed precision), which build a random model with the tokenizer files of an English-only
# Whisper folder (TOKENIZER_SOURCE, default data/models/whisper-tiny.en, which make demo
# writes; skipped, and said so, without one).
# Writes gpu_benchmark.json (every shape that finished, one gpu_benchmark_SHAPE.json each, and
# the FSDP report under "fsdp") and gpu_benchmark.txt (device, versions, the printed tables).
# SHAPES names the shapes (default "small medium large-v3"; on CPU "test"; empty: none).
# Each shape runs under its own time limit (SHAPE_SECONDS, default 160 s), the FSDP checks
# under FSDP_SECONDS (default 90 s): all of it within 10 minutes of a lent GPU. A part that
# runs out or fails is named in the JSON's "timed_out" and the others are kept.
# Without a CUDA GPU it runs the same section on CPU with the tiny test shape and the FSDP
# checks in 2 gloo processes (the path tests/tools/test_gpu_benchmark_script.py runs), so the
# script itself is checked anywhere.
set -euo pipefail
out="$(realpath "${1:-.}")"
shift || true
tokenizer_source="${TOKENIZER_SOURCE:+$(realpath -m "$TOKENIZER_SOURCE")}"
cd "$(dirname "$0")/../.."  # the repository root
python="${PYTHON:-python}"
mkdir -p "$out"
"$python" - <<'PY' | tee "$out/gpu_benchmark.txt"
import speechbrain, torch, transformers
print("torch", torch.__version__, "transformers", transformers.__version__,
      "speechbrain", speechbrain.__version__)
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA GPU")
PY
if "$python" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    device=cuda
    shapes="${SHAPES-small medium large-v3}"
    options=(--batch_size 16 --steps 10)
else
    device=cpu
    shapes="${SHAPES-test}"
    options=(--batch_size 2 --steps 1)
fi
timed_out=()
for shape in $shapes; do
    if ! timeout "${SHAPE_SECONDS:-160}" "$python" -m whisper_finetuning.benchmark \
        --device "$device" --shapes "$shape" "${options[@]}" \
        --json "$out/gpu_benchmark_$shape.json" "$@" | tee -a "$out/gpu_benchmark.txt"; then
        timed_out+=("$shape")
    fi
done
tokenizer="${tokenizer_source:-data/models/whisper-tiny.en}"
if [ -f "$tokenizer/vocab.json" ]; then
    if ! timeout "${FSDP_SECONDS:-90}" "$python" -m whisper_finetuning.profiling.fsdp_check \
        "$out/fsdp" --tokenizer_source "$tokenizer" | tee -a "$out/gpu_benchmark.txt"; then
        timed_out+=("fsdp")
    fi
else
    echo "FSDP checks skipped: no Whisper tokenizer at $tokenizer (set TOKENIZER_SOURCE)" \
        | tee -a "$out/gpu_benchmark.txt"
fi
"$python" - "$out" "${timed_out[@]}" <<'PY'
import json, sys
from pathlib import Path

out, failed = Path(sys.argv[1]), sys.argv[2:]
report = {"timed_out": failed}
for part in sorted(out.glob("gpu_benchmark_*.json")):
    for key, value in json.loads(part.read_text()).items():
        report.setdefault(key, value)  # device, precision and the probe: the first shape's
fsdp = out / "fsdp" / "fsdp_check.json"
report["fsdp"] = json.loads(fsdp.read_text()) if fsdp.exists() else None
(out / "gpu_benchmark.json").write_text(json.dumps(report, indent=2))
print("wrote", out / "gpu_benchmark.json", "; timed out or failed:", ", ".join(failed) or "none")
PY
