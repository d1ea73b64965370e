#!/usr/bin/env bash
# One command for a GPU machine: the serving table of README (bench/bench_serving.py) for the small preset and
# the paper shape (2048-wide video DiT to block 17 + 16-layer action DiT), every backend present, batch 1.
#   bash bench/gpu.sh [extra bench_serving.py args]
# Uses only what such a machine has (PyTorch, ONNX, ONNX Runtime; TensorRT where installed) and installs
# nothing: the package is imported from this checkout through a symlink. What is absent is a row with the reason.
# Budget: under 8 minutes from a cold H100/H200.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# GPU_SH_SMOKE=1: the same script end to end on a CPU at a tiny size (its test runs it so)
smoke=${GPU_SH_SMOKE:-0}
if [ "$smoke" != 1 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "bench/gpu.sh: PyTorch sees no CUDA GPU here; on a CPU run: $PY bench/bench_serving.py --device cpu" >&2
    exit 2
fi
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
ln -s "$PWD" "$site/dit4dit"  # `import dit4dit.policy` -> ./policy, as the editable install maps it
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import zmq, msgpack, pydantic" 2>/dev/null || { echo "bench/gpu.sh: needs pyzmq, msgpack and pydantic" >&2; exit 2; }
start=$(date +%s)
if [ "$smoke" = 1 ]; then
    "$PY" bench/bench_serving.py --device cpu --presets tiny --requests 5 --warmup 1 --threads 1 "$@"
else
    "$PY" bench/bench_serving.py --device cuda --presets small,paper --requests 200 "$@"
fi
echo "bench/gpu.sh: finished in $(( $(date +%s) - start )) s"
