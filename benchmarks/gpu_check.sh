#!/usr/bin/env bash
# The GPU check, in one go: clipline end to end on one GPU, ViT-B-32 and ViT-L-14 in bf16 (random
# init: nothing is downloaded), JPEGs decoded in the CPU tasks vs in the encoder on the GPU
# (resources.jpeg_decode tasks | encoder), batch 256 and 512, on phone-sized photos (640x480).
#
#   benchmarks/gpu_check.sh [ViT-B-32] [ViT-L-14]        (default: both)
#
# First runs tests/operators/test_device_decode.py, which then runs on CUDA too. Then records img/s
# end to end and steady (the encoder stage's span), GPU utilisation (nvidia-smi every 0.5 s, over
# each run's own span) and the bottleneck, as gpu-check.json and gpu-check.md in
# RECORD_DIR (default benchmarks/recorded; set RECORD_DIR=$OUT on the device machine, whose $OUT
# returns at most 8 files: the raw per-run results stay in WORK_DIR).
#
# Needs a Python (PYTHON, default python3) that imports clipline's dependencies (pyproject.toml):
# it checks them first and names the missing ones (on the lent H200 machines torch, torchvision,
# pyarrow and pillow are there; ray, open_clip_torch, lancedb, pydantic and ftfy must be carried as
# wheels, pinned as in constraints.txt; check the Ray wheel's size against a call's carry limit).
# Sizes: N_B32 / N_L14 rows per run, made of UNIQUE photos repeated (every row is still decoded and
# encoded); STAGES (default: embed) is passed to the harness's --stages. The default sizes are not
# yet tried on a GPU: if eight runs overrun one command's time, run one model per command
# (benchmarks/gpu_check.sh ViT-B-32, then ViT-L-14 with the same WORK_DIR) or lower N_B32 / N_L14.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
RECORD_DIR=${RECORD_DIR:-benchmarks/recorded}
WORK_DIR=${WORK_DIR:-$(mktemp -d /tmp/clipline-gpu-check.XXXXXX)}
N_B32=${N_B32:-65536}
N_L14=${N_L14:-16384}
UNIQUE=${UNIQUE:-1024}
STAGES=${STAGES:-embed}
MODELS=("$@")
[ ${#MODELS[@]} -gt 0 ] || MODELS=(ViT-B-32 ViT-L-14)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

"$PYTHON" - <<'EOF'
import importlib.util, sys
needed = ["torch", "torchvision", "ray", "open_clip", "lancedb", "pydantic", "pyarrow", "PIL", "safetensors",
          "fsspec", "yaml", "matplotlib", "ftfy", "regex"]
missing = [name for name in needed if importlib.util.find_spec(name) is None]
if missing:
    sys.exit(f"gpu_check: missing Python packages: {', '.join(missing)}")
import torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no GPU")
print("gpu_check:", torch.cuda.get_device_name(0), "torch", torch.__version__)
EOF
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$WORK_DIR/device.csv"
mkdir -p "$RECORD_DIR"

# GPU decode on CUDA first: same outcomes as the CPU path, embeddings at cosine >= 0.99.
"$PYTHON" -m pytest -q -p no:cacheprovider tests/operators/test_device_decode.py tests/operators/test_device_extras.py 2>&1 \
  | tee "$WORK_DIR/device-decode-tests.txt" || true

for model in "${MODELS[@]}"; do
  n=$N_B32
  [ "$model" = ViT-L-14 ] && n=$N_L14
  for batch in 256 512; do
    for decode in tasks encoder; do
      run="$WORK_DIR/$model-b$batch-$decode"
      mkdir -p "$run"
      echo "== $model batch $batch, JPEG decode in $decode, n=$n"
      nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 \
        >"$run/util.csv" &
      sampler=$!
      "$PYTHON" -m benchmarks.throughput --model "$model" --pretrained none --precision bf16 --n "$n" \
        --unique-images "$UNIQUE" --batch-size "$batch" --threads 2 --repeats 1 --image-size phone \
        --stages $STAGES --jpeg-decode "$decode" --no-ray-overhead --out "$run" || echo "== run failed: $run"
      kill "$sampler" 2>/dev/null || true
      wait "$sampler" 2>/dev/null || true
    done
  done
done

"$PYTHON" -m benchmarks.gpu_summary "$WORK_DIR" --out "$RECORD_DIR"
