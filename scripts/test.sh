#!/usr/bin/env bash
# README's test command: install, then run the whole suite (real DDS on loopback, real ZeroMQ, real MuJoCo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export MUJOCO_GL=egl
exec ${PYTHON:-python3} -m pytest -q "$@"
