#!/usr/bin/env bash
# README's main command: install, then run one closed-loop episode of the shipped small DiT4DiT checkpoint
# through the real runtime path (dit4dit-sim + dit4dit-serve + dit4dit-robot over DDS and ZeroMQ).
# Extra arguments go to dit4dit-demo (e.g. --task push_green, --retrain to rebuild the checkpoint from scratch).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export MUJOCO_GL=egl
exec dit4dit-demo "$@"
