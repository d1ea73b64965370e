"""dit4dit-eval: Wilson intervals, the in-process loop, and the real runtime path (sim, server, controller)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from dit4dit.tasks import evaluate
from dit4dit.tasks.evaluate import EpisodeResult, summarize, wilson

INSTRUCTIONS = ["move the right hand to the red block", "move the left hand to the blue block",
                "push the green block onto the target"]


def test_wilson_matches_known_values():
    lo, hi = wilson(8, 10)
    assert math.isclose(lo, 0.4902, abs_tol=1e-3) and math.isclose(hi, 0.9433, abs_tol=1e-3)
    assert wilson(0, 10)[0] == 0.0 and math.isclose(wilson(0, 10)[1], 0.2775, abs_tol=1e-3)
    assert wilson(10, 10)[1] == 1.0 and math.isclose(wilson(10, 10)[0], 0.7225, abs_tol=1e-3)
    assert wilson(0, 0) == (0.0, 1.0)


def test_summary_and_table():
    rs = [EpisodeResult("reach_red", i, i % 2 == 0, None) for i in range(4)] + [EpisodeResult("push_green", 0, False, None)]
    s = summarize(rs)
    assert (s["reach_red"].successes, s["reach_red"].episodes) == (2, 4)
    table = evaluate.format_table(s, "t")
    assert "2/4 = 50%" in table and "2/5 = 40%" in table


@pytest.fixture(scope="module")
def random_ckpt(tmp_path_factory):
    torch = pytest.importorskip("torch")  # noqa: F841
    from dit4dit.policy.checkpoint import make_random_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    return make_random_checkpoint(path, preset="tiny", control_rate_hz=10.0, instructions=INSTRUCTIONS)


def test_inprocess_episode_runs_and_records_video(random_ckpt, tmp_path):
    ev = evaluate.InProcessEvaluator(random_ckpt)
    frames = []
    r = ev.run("reach_red", 100_000, video=frames, duration_s=1.0)
    assert r.task == "reach_red" and isinstance(r.success, bool) and "hand_to_goal_m" in r.info
    assert len(frames) == 10 and frames[0].shape == (32, 32, 3)
    # An untrained policy near the home pose does not reach the block: the check is not vacuous.
    assert not r.success
    p = evaluate.write_video(tmp_path / "v.mp4", frames, 10)
    from dit4dit.datasets import decode_video

    assert decode_video(p).shape == (10, 128, 128, 3)


@pytest.mark.slow
def test_runtime_path_episode(random_ckpt, tmp_path, dds_domain):
    """dit4dit-sim + dit4dit-serve + dit4dit-robot as processes over DDS and ZeroMQ: one episode."""
    with evaluate.RuntimeEvaluator(random_ckpt, log_dir=tmp_path / "logs", domain=dds_domain) as ev:
        frames = []
        r = ev.run("reach_blue", 100_000, video=frames)
    states = r.info["controller_states"]
    assert "RUNNING" in states and states[-1] == "DAMPED", states
    assert r.info["controller_exit"] == 0
    assert not r.success and "hand_to_goal_m" in r.info
    assert len(frames) > 10 and frames[0].shape == (32, 32, 3)


SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "g1_small.pt"


@pytest.mark.skipif(not SHIPPED.exists(), reason="no shipped checkpoint")
def test_shipped_checkpoint_reaches_the_named_block():
    """The trained checkpoint closes the loop on an unseen scene: the right hand goes to the red block."""
    ev = evaluate.InProcessEvaluator(SHIPPED)
    r = ev.run("reach_red", 100_003)
    assert r.success, r.info
