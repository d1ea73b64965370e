#!/usr/bin/env bash
# README's test command: install, then run the whole suite (real DDS on loopback, real ZeroMQ, real MuJoCo).
#   bash scripts/test.sh [pytest args]               # CI runs exactly this, via .ci/run
#   bash scripts/test.sh --under-load [pytest args]  # the same with two CPU-burning processes beside it, as on a
#                                                    # busy laptop or shared CI machine (they are stopped at exit)
set -euo pipefail
cd "$(dirname "$0")/.."
burners=0
if [ "${1:-}" = "--under-load" ]; then
    burners=2
    shift
fi
bash scripts/install.sh
export MUJOCO_GL=egl
PY=${PYTHON:-python3}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM
for _ in $(seq 1 "$burners"); do
    "$PY" -c "while True: pass" &
    pids+=("$!")
done
[ "$burners" -gt 0 ] && echo "test.sh: ${burners} CPU burners running beside the suite (pids ${pids[*]})"
start=$(date +%s)
status=0
"$PY" -m pytest -q "$@" || status=$?
echo "test.sh: pytest exited ${status} after $(( $(date +%s) - start )) s$([ "$burners" -gt 0 ] && echo " under load (${burners} burners)")"
exit "$status"
