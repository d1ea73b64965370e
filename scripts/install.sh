#!/usr/bin/env bash
# Installs everything dit4dit needs on a fresh Debian/Ubuntu machine with Python 3.10-3.12
# (PyPI and Debian packages only). Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

# Headless MuJoCo rendering uses EGL (Mesa's software renderer where there is no GPU; osmesa did not work here).
if ! ldconfig -p | grep -q 'libEGL_mesa.so' || ! ldconfig -p | grep -q 'libGL.so.1'; then
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends libegl1 libegl-mesa0 libgl1 libgl1-mesa-dri libgles2 >/dev/null
fi

# pyrealsense2 links libusb-1.0 at import time (without it `import pyrealsense2` fails even with no camera).
if ! ldconfig -p | grep -q 'libusb-1.0.so.0'; then
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends libusb-1.0-0 >/dev/null
fi

# tmux: the keyboard-teleop test drives dit4dit-robot in a real terminal (tests/test_keyboard_terminal.py).
if ! command -v tmux >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends tmux >/dev/null
fi

# Pinned torch: a looser pin pulls a multi-GB CUDA build.
$PYTHON -m pip install -q torch==2.13.0
# The Unitree SDK: `unitree-sdk2` on PyPI is broken (no g1 module); unitree-sdk2py-dimos works with
# cyclonedds 11 but declares cyclonedds>=0.10.2 (no wheel), hence --no-deps after installing cyclonedds.
$PYTHON -m pip install -q cyclonedds==11.0.1
$PYTHON -m pip install -q --no-deps unitree-sdk2py-dimos==1.0.3
$PYTHON -m pip install -q -e ".[sim,policy,train,realsense,cosmos,dev]"
# torchvision must not be present (a CUDA wheel from PyPI breaks `import transformers` against the CPU torch);
# nothing in .[cosmos] requires it, this removes one that something else pulled in.
if $PYTHON -m pip show -q torchvision >/dev/null 2>&1; then
    echo "install.sh: uninstalling torchvision (a PyPI CUDA build breaks transformers against CPU torch; see README)"
    $PYTHON -m pip uninstall -y -q torchvision
fi
