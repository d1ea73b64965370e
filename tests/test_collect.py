"""dit4dit-collect writes a LeRobot dataset the training loader reads, and resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("av")

from dit4dit.tasks.expert import CONTROLLED_NAMES
from dit4dit.tasks import collect
from dit4dit.datasets import LeRobotDataset


def test_collect_and_resume(tmp_path, capsys):
    out = tmp_path / "ds"
    assert collect.main(["--episodes", "1", "--task", "reach_blue", "--out", str(out), "--image-size", "32"]) == 0
    ds = LeRobotDataset(out)
    assert len(ds) == 1 and ds.state_names == list(CONTROLLED_NAMES) and ds.cameras == {"head": (32, 32)}
    ep = ds.episode(0)
    assert ep.task == "move the left hand to the blue block" and ep.success is True
    assert ep.frames["head"].shape == (60, 32, 32, 3)
    # The left arm moves, the right arm holds: the commanded targets say so.
    assert np.ptp(ep.action[:, :7], axis=0).max() > 0.2 and np.ptp(ep.action[:, 7:], axis=0).max() < 1e-6
    assert (out / "cache" / "episode_000000.npz").exists()
    line = json.loads((out / "meta" / "episodes.jsonl").read_text().splitlines()[0])
    assert line["task_name"] == "reach_blue" and line["seed"] == 0
    assert collect.expert_success(out) == {"reach_blue": (1, 1)}
    # Resuming with more seeds records only the new one.
    collect.main(["--episodes", "2", "--task", "reach_blue", "--out", str(out), "--image-size", "32"])
    ds = LeRobotDataset(out)
    assert len(ds) == 2 and [e["seed"] for e in ds.episodes] == [0, 1]
    assert "1/1 this run, 2/2 overall" in capsys.readouterr().out


def test_collect_rejects_unknown_task(tmp_path):
    with pytest.raises(SystemExit):
        collect.main(["--episodes", "1", "--task", "juggle", "--out", str(tmp_path / "x")])
