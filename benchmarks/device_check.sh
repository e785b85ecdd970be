#!/usr/bin/env bash
# GPU check for issue 7 (under 8 minutes on one GPU): CPU/GPU parity of loss and gradients, per-iteration
# time for 1 and 3 seeds, the paper preset's wall time for one image, batch throughput for K = 1, 4, 16,
# peak GPU memory; prints a markdown table. Needs a venv with torch (default .venv, or $PYTHON).
# Stand-in weights (tests/fake_weights.py) are made when $CLIPASSO_MODELS_DIR is not set.
#   bash benchmarks/device_check.sh            # on a GPU machine
#   bash benchmarks/device_check.sh --cpu-smoke  # tiny sizes on the CPU: checks that the script works
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
export HF_HUB_OFFLINE=1
exec timeout 470 "$PYTHON" benchmarks/device_check.py "$@"
