"""Arm FK / DLS IK on the project's G1 model: FK∘IK round trips within a millimetre, limits respected."""

from __future__ import annotations

import numpy as np
import pytest
from dit4dit.drivers import g1_spec
from dit4dit.drivers.kinematics import HAND_FRAMES, G1Kinematics, pose_error


@pytest.fixture(scope="module")
def kin() -> G1Kinematics:
    return G1Kinematics()


def _random_arm_q(rng: np.random.Generator, group: str, frac: float = 0.7) -> np.ndarray:
    q = g1_spec.HOME_POSE.copy()
    j = list(g1_spec.GROUPS[group])
    mid, half = (g1_spec.LOWER[j] + g1_spec.UPPER[j]) / 2, (g1_spec.UPPER[j] - g1_spec.LOWER[j]) / 2
    q[j] = mid + rng.uniform(-frac, frac, len(j)) * half
    return q


@pytest.mark.parametrize("frame", sorted(HAND_FRAMES))
def test_fk_ik_round_trip_within_a_millimetre(kin, frame):
    rng = np.random.default_rng(7)
    group = HAND_FRAMES[frame]
    for _ in range(12):
        q_true = _random_arm_q(rng, group)
        target = kin.fk(q_true)[frame]
        res = kin.ik(frame, target, g1_spec.HOME_POSE, restarts=6)
        reached = kin.fk(res.q)[frame]
        dp, dr = pose_error(target, reached)
        assert dp < 1e-3 and dr < 1e-2, (dp, dr)
        # Only that arm moved, and within the hard limits.
        other = np.setdiff1d(np.arange(29), g1_spec.GROUPS[group])
        np.testing.assert_array_equal(res.q[other], g1_spec.HOME_POSE[other])
        assert np.all(res.q >= g1_spec.LOWER) and np.all(res.q <= g1_spec.UPPER)


def test_small_move_from_current_pose_converges_fast(kin):
    q = g1_spec.HOME_POSE.copy()
    T = kin.fk(q)["right_hand"]
    T[:3, 3] += [0.02, 0.0, 0.0]
    res = kin.ik("right_hand", T, q)
    assert res.converged and res.iterations < 20 and res.pos_err_m < 1e-4


def test_position_only_ik(kin):
    q = g1_spec.HOME_POSE.copy()
    T = kin.fk(q)["left_hand"]
    T[:3, 3] += [0.03, -0.02, 0.05]
    res = kin.ik("left_hand", T, q, position_only=True)
    assert res.converged
    assert np.linalg.norm(kin.fk(res.q)["left_hand"][:3, 3] - T[:3, 3]) < 1e-3


def test_unreachable_target_stays_in_limits(kin):
    q = g1_spec.HOME_POSE.copy()
    T = np.eye(4)
    T[:3, 3] = [2.0, 0.0, 0.0]  # two metres in front of the torso
    res = kin.ik("right_hand", T, q, position_only=True)
    assert not res.converged and res.pos_err_m > 1.0
    assert np.all(res.q >= g1_spec.LOWER) and np.all(res.q <= g1_spec.UPPER)


def test_hands_mirror_at_a_mirrored_pose(kin):
    # HOME_POSE is left/right mirrored; the hand sites must be mirror images about the torso's xz-plane.
    poses = kin.fk(g1_spec.HOME_POSE)
    pl, pr = poses["left_hand"][:3, 3], poses["right_hand"][:3, 3]
    np.testing.assert_allclose(pl * [1, -1, 1], pr, atol=2e-3)
    assert pl[1] > 0.1 and pl[0] > 0.0  # left is +y, hands in front of the torso


def test_bad_inputs_name_the_problem(kin):
    with pytest.raises(KeyError, match="IK frame must be one of"):
        kin.ik("left_foot", np.eye(4), g1_spec.HOME_POSE)
    with pytest.raises(ValueError, match="4x4"):
        kin.ik("left_hand", np.eye(3), g1_spec.HOME_POSE)
    with pytest.raises(ValueError, match=r"shape \(29,\)"):
        kin.fk(np.zeros(7))
    with pytest.raises(KeyError, match="no site or body"):
        kin.fk(g1_spec.HOME_POSE, frames=("nothing",))
