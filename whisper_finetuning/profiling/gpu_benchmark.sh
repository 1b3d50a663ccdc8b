#!/usr/bin/env bash
# The benchmark's device section in one go (whisper_finetuning/synthetic_benchmark.py): random
# Whisper models of the small, medium and large-v3 shapes, bf16, SDPA; this recipe's training
# step against transformers' Seq2SeqTrainer and SpeechBrain's own Whisper recipe
# (profiling/speechbrain_baseline.py). Runs offline: it needs torch, transformers (with
# accelerate, which Seq2SeqTrainer uses) and speechbrain, nothing else (no checkpoint,
# tokenizer or corpus).
# Usage, from anywhere: whisper_finetuning/profiling/gpu_benchmark.sh [OUTPUT_FOLDER] [more benchmark options]
# Writes gpu_benchmark.json (every shape that finished; one gpu_benchmark_SHAPE.json each) and
# gpu_benchmark.txt (device, versions, the printed tables). Each shape runs under its own time
# limit (SHAPE_SECONDS, default 170 s: the three shapes within 10 minutes of a lent GPU); a
# shape that runs out is named in the JSON's "timed_out" and the others are kept.
# Without a CUDA GPU it runs the same section on CPU with the tiny test shape (the path
# tests/tools/test_gpu_benchmark_script.py runs), so the script itself is checked anywhere.
set -euo pipefail
out="$(realpath "${1:-.}")"
shift || true
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
    shapes="${SHAPES:-small medium large-v3}"
    options=(--batch_size 16 --steps 10)
else
    device=cpu
    shapes=test
    options=(--batch_size 2 --steps 1)
fi
timed_out=()
for shape in $shapes; do
    if ! timeout "${SHAPE_SECONDS:-170}" "$python" -m whisper_finetuning.benchmark \
        --device "$device" --shapes "$shape" "${options[@]}" \
        --json "$out/gpu_benchmark_$shape.json" "$@" | tee -a "$out/gpu_benchmark.txt"; then
        timed_out+=("$shape")
    fi
done
"$python" - "$out" "${timed_out[@]}" <<'PY'
import json, sys
from pathlib import Path

out, failed = Path(sys.argv[1]), sys.argv[2:]
report = {"timed_out": failed}
for part in sorted(out.glob("gpu_benchmark_*.json")):
    for key, value in json.loads(part.read_text()).items():
        report.setdefault(key, value)  # device, precision and the probe: the first shape's
(out / "gpu_benchmark.json").write_text(json.dumps(report, indent=2))
print("wrote", out / "gpu_benchmark.json", "; timed out or failed:", ", ".join(failed) or "none")
PY
