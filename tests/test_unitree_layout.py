"""Unitree's G1 Dex3 layout: the 28-D map both ways, and dit4dit-train on a small dataset in that layout."""

from __future__ import annotations

import numpy as np
import pytest

from dit4dit.datasets import unitree_g1
from dit4dit.drivers import g1_spec


def test_map_names_and_hand_order() -> None:
    assert len(unitree_g1.UNITREE_NAMES) == 28 and len(set(unitree_g1.PROJECT_NAMES)) == 28
    assert unitree_g1.UNITREE_NAMES[:2] == ("kLeftShoulderPitch", "kLeftShoulderRoll")
    assert unitree_g1.UNITREE_NAMES[13] == "kRightWristYaw"
    # Their left hand lists middle before index, their right hand index before middle.
    assert unitree_g1.UNITREE_NAMES[17:21] == ("kLeftHandMiddle0", "kLeftHandMiddle1", "kLeftHandIndex0",
                                                "kLeftHandIndex1")
    assert unitree_g1.UNITREE_NAMES[24:28] == ("kRightHandIndex0", "kRightHandIndex1", "kRightHandMiddle0",
                                                "kRightHandMiddle1")
    assert list(unitree_g1.ARM_NAMES) == [g1_spec.JOINT_NAMES[i] for i in g1_spec.ARM_JOINTS]
    assert unitree_g1.PROJECT_NAMES[17] == "left_hand_middle_0_joint"
    assert unitree_g1.PROJECT_ORDER[17] == "left_hand_index_0_joint"  # g1_spec.DEX3_JOINTS order


def test_map_round_trips_and_permutes_only_the_left_hand() -> None:
    theirs = np.arange(28, dtype=np.float32)[None].repeat(3, 0)
    ours = unitree_g1.to_project_order(theirs)
    np.testing.assert_array_equal(unitree_g1.to_unitree_order(ours), theirs)
    np.testing.assert_array_equal(ours[0, :14], np.arange(14))  # arms unchanged
    np.testing.assert_array_equal(ours[0, 14:21], [14, 15, 16, 19, 20, 17, 18])  # left: index moves first
    np.testing.assert_array_equal(ours[0, 21:], np.arange(21, 28))  # right: already thumb, index, middle
    with pytest.raises(ValueError, match="28 values"):
        unitree_g1.to_project_order(np.zeros(14))
    assert unitree_g1.flat_names([list(unitree_g1.UNITREE_NAMES)]) == list(unitree_g1.UNITREE_NAMES)


def test_trains_on_the_arm_joints_of_a_unitree_layout_dataset(tmp_path) -> None:
    pytest.importorskip("pyarrow")
    pytest.importorskip("av")
    pytest.importorskip("torch")
    from dit4dit.datasets import LeRobotWriter
    from dit4dit.policy.inference import Policy
    from dit4dit.policy.train import main as train_main

    rng = np.random.default_rng(0)
    cams = {c: (48, 64) for c in unitree_g1.CAMERAS}  # their four keys, smaller than 480x640 to stay quick
    w = LeRobotWriter(tmp_path / "ds", fps=30, state_names=unitree_g1.UNITREE_NAMES,
                      action_names=unitree_g1.UNITREE_NAMES, cameras=cams, robot_type=unitree_g1.ROBOT_TYPE)
    arms = []
    for ep in range(2):
        q = np.cumsum(rng.normal(0, 0.01, size=(16, 28)), axis=0).astype(np.float32)
        q[:, 14:] += 5.0  # hand values far from the arms': a wrong column choice shows in the normalisation
        arms.append(q[:, :14])
        for t in range(16):
            imgs = {c: np.full((48, 64, 3), 20 * i + t, np.uint8) for i, c in enumerate(unitree_g1.CAMERAS)}
            w.add_frame(state=q[t], action=q[min(t + 1, 15)], images=imgs, task="pick up the apple")
        w.save_episode(success=True)
    out = tmp_path / "g1.pt"
    assert train_main(["--data", str(tmp_path / "ds"), "--preset", "tiny", "--out", str(out), "--steps", "2",
                       "--tokenizer-steps", "1", "--no-progress", "--val-episodes", "0",
                       "--camera", "head=cam_left_high"]) == 0
    md = Policy.from_checkpoint(out).metadata
    assert md["state_names"] == list(unitree_g1.ARM_NAMES) == md["action_names"]
    assert list(md["cameras"]) == ["head"] and md["training"]["camera_source"] == "cam_left_high"
    np.testing.assert_allclose(md["normalization"]["state"]["mean"], np.concatenate(arms).mean(0), atol=1e-4)
