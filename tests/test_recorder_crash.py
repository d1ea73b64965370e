"""kill -9 during a recording loses at most the episode being recorded (a real subprocess, SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("av")

from dit4dit.datasets import LeRobotDataset

NAMES = ["j0", "j1", "j2"]

# The child records two whole episodes, says so, then records a third without end until it is killed.
CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from dit4dit.runtime.recorder import RecordedFrame, TrialRecorder

    rec = TrialRecorder(sys.argv[1], fps=10, state_names=["j0", "j1", "j2"], action_names=["j0", "j1", "j2"],
                        cameras={"head": (16, 16)}, instruction="reach")

    def frame(ep, i):
        v = np.full(3, ep + 0.01 * i, np.float32)
        return RecordedFrame(v, v + 0.1, v, {"head": np.full((16, 16, 3), 40 * ep, np.uint8)}, False, i / 10)

    for ep, n in enumerate((8, 5)):
        for i in range(n):
            rec.add(frame(ep, i))
        rec.end_episode(success=True)
    while len(rec.saved) < 2:  # the writer thread saves them
        time.sleep(0.01)
    print("saved 2", flush=True)
    i = 0
    while True:
        rec.add(frame(2, i))
        i += 1
        if i == 20:
            print("recording", flush=True)
        time.sleep(0.005)
    """
)


def test_sigkill_while_recording_keeps_finished_episodes(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "saved 2"
        assert child.stdout.readline().strip() == "recording"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    ds = LeRobotDataset(root)
    assert len(ds) == 2 and [ds.episode(i).length for i in range(2)] == [8, 5]
    for ep in (0, 1):
        e = ds.episode(ep)
        np.testing.assert_allclose(e.state[:, 0], ep + 0.01 * np.arange(e.length), atol=1e-6)
        assert e.success is True and e.frames["head"].shape == (e.length, 16, 16, 3)
    # The killed run's folder takes new episodes where it left off.
    from dit4dit.runtime.recorder import RecordedFrame, TrialRecorder

    rec = TrialRecorder(root, fps=10, state_names=NAMES, action_names=NAMES, cameras={"head": (16, 16)},
                        instruction="reach")
    v = np.zeros(3, np.float32)
    rec.add(RecordedFrame(v, v, v, {"head": np.zeros((16, 16, 3), np.uint8)}, False, 0.0))
    assert rec.close(success=False) == [2] and not rec.errors
    ds = LeRobotDataset(root)
    assert len(ds) == 3 and ds.num_frames == 14
