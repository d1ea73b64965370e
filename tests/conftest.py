"""Shared fixtures. Tests use real DDS (loopback), real ZeroMQ sockets and real MuJoCo."""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

os.environ.setdefault("MUJOCO_GL", "egl")


@pytest.fixture
def dds_domain() -> int:
    """A DDS domain id of this test's own, so concurrent tests never hear each other."""
    return random.SystemRandom().randint(2, 230)


@pytest.fixture
def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def shared_dir() -> Path:
    """../shared beside the checkout (reference material); tests that need it skip without it."""
    if not SHARED.is_dir():
        pytest.skip(f"reference folder {SHARED} is not present")
    return SHARED


@pytest.fixture
def rig(tmp_path, dds_domain):
    """The controller tests' rig (tests/robot_rig.py): sim, server and robot processes, closed after the test."""
    from tests.robot_rig import Rig

    r = Rig(tmp_path, dds_domain)
    try:
        yield r
    finally:
        r.close()
