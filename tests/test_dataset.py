"""LeRobot v2.1 writer/reader round trip (real parquet via pyarrow, real H.264 mp4 via av)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("av")

from dit4dit.datasets import DatasetError, LeRobotDataset, LeRobotWriter

STATE = [f"s{i}" for i in range(5)]
ACTION = [f"a{i}" for i in range(3)]
CAMS = {"head": (32, 48)}


def _frames(rng: np.random.Generator, n: int) -> np.ndarray:
    # Smooth images (video codecs are lossy on noise): a moving gradient plus a coloured square.
    h, w = CAMS["head"]
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.zeros((n, h, w, 3), dtype=np.uint8)
    for t in range(n):
        out[t, ..., 0] = (xx * 4 + t * 3) % 256
        out[t, ..., 1] = yy * 6
        out[t, ..., 2] = 80
        x0 = (t * 2) % (w - 8)
        out[t, 10:18, x0 : x0 + 8] = (255, 255, 0)
    return out


def _record(writer: LeRobotWriter, rng: np.random.Generator, n: int, task: str, success: bool | None):
    state = rng.normal(size=(n, len(STATE))).astype(np.float32)
    action = rng.normal(size=(n, len(ACTION))).astype(np.float32)
    frames = _frames(rng, n)
    for t in range(n):
        writer.add_frame(state=state[t], action=action[t], images={"head": frames[t]}, task=task,
                         intervention=(t == 3))
    writer.save_episode(success=success)
    return state, action, frames


def test_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    w = LeRobotWriter(tmp_path / "ds", fps=10, state_names=STATE, action_names=ACTION, cameras=CAMS)
    rec = [_record(w, rng, 12, "reach the red block", True), _record(w, rng, 9, "push the blue block", False)]
    ds = LeRobotDataset(tmp_path / "ds")
    assert len(ds) == 2 and ds.num_frames == 21
    assert ds.state_names == STATE and ds.action_names == ACTION and ds.cameras == CAMS
    assert ds.instructions == ["reach the red block", "push the blue block"]
    for i, (state, action, frames) in enumerate(rec):
        ep = ds.episode(i)
        np.testing.assert_array_equal(ep.state, state)
        np.testing.assert_array_equal(ep.action, action)
        np.testing.assert_array_equal(ep.action_executed, action)
        assert ep.frames["head"].shape == frames.shape and ep.frames["head"].dtype == np.uint8
        err = np.abs(ep.frames["head"].astype(int) - frames.astype(int)).mean()
        assert err < 4.0, f"decoded video differs by {err:.2f} grey levels on average"
        assert ep.intervention.tolist() == [t == 3 for t in range(len(state))]
        np.testing.assert_allclose(ep.timestamp, np.arange(len(state)) / 10, atol=1e-6)
    assert ds.episode(0).success is True and ds.episode(1).next_success.sum() == 0
    assert ds.episode(0).next_success.tolist()[-1] is True
    # Global stats pool both episodes exactly.
    all_state = np.concatenate([r[0] for r in rec]).astype(np.float64)
    np.testing.assert_allclose(ds.stats["observation.state"]["mean"], all_state.mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ds.stats["observation.state"]["std"], all_state.std(0), rtol=1e-6, atol=1e-6)
    assert ds.stats["observation.images.head"]["count"] == [21]
    info = json.loads((tmp_path / "ds/meta/info.json").read_text())
    assert info["codebase_version"] == "v2.1" and info["total_episodes"] == 2 and info["total_frames"] == 21
    assert (tmp_path / "ds/videos/chunk-000/observation.images.head/episode_000001.mp4").exists()
    assert (tmp_path / "ds/data/chunk-000/episode_000001.parquet").exists()
    lines = (tmp_path / "ds/meta/episodes_stats.jsonl").read_text().splitlines()
    assert len(lines) == 2


def test_interrupted_run_keeps_finished_episodes_and_appends(tmp_path):
    rng = np.random.default_rng(1)
    w = LeRobotWriter(tmp_path / "ds", fps=10, state_names=STATE, action_names=ACTION, cameras=CAMS)
    _record(w, rng, 6, "t", True)
    # A second episode is half recorded when the process "dies": nothing of it reaches disk.
    for t in range(4):
        w.add_frame(state=np.zeros(5), action=np.zeros(3), images={"head": _frames(rng, 1)[0]}, task="t")
    del w
    ds = LeRobotDataset(tmp_path / "ds")
    assert len(ds) == 1 and ds.episode(0).length == 6
    # Re-opening appends with continuing episode and frame indices.
    w2 = LeRobotWriter(tmp_path / "ds", fps=10, state_names=STATE, action_names=ACTION, cameras=CAMS)
    _record(w2, rng, 5, "u", None)
    ds = LeRobotDataset(tmp_path / "ds")
    assert len(ds) == 2 and ds.num_frames == 11 and ds.episode(1).success is None
    import pyarrow.parquet as pq

    idx = pq.read_table(tmp_path / "ds/data/chunk-000/episode_000001.parquet").column("index").to_pylist()
    assert idx == list(range(6, 11))


def test_rejects_bad_frames_and_incompatible_append(tmp_path):
    w = LeRobotWriter(tmp_path / "ds", fps=10, state_names=STATE, action_names=ACTION, cameras=CAMS)
    img = np.zeros((32, 48, 3), np.uint8)
    with pytest.raises(DatasetError, match="state"):
        w.add_frame(state=np.zeros(4), action=np.zeros(3), images={"head": img}, task="t")
    with pytest.raises(DatasetError, match="head"):
        w.add_frame(state=np.zeros(5), action=np.zeros(3), images={"head": img[:, :40]}, task="t")
    with pytest.raises(DatasetError, match="no frames"):
        w.save_episode()
    with pytest.raises(DatasetError, match="action names"):
        LeRobotWriter(tmp_path / "ds", fps=10, state_names=STATE, action_names=["x"] * 3, cameras=CAMS)
    with pytest.raises(DatasetError, match="not a LeRobot dataset"):
        LeRobotDataset(tmp_path / "nothing")


def test_numpy_cache_matches_decoded(tmp_path):
    rng = np.random.default_rng(2)
    w = LeRobotWriter(tmp_path / "ds", fps=10, state_names=STATE, action_names=ACTION, cameras=CAMS)
    _record(w, rng, 7, "t", True)
    ds = LeRobotDataset(tmp_path / "ds")
    direct = ds.episode(0)
    assert ds.build_cache() == 1 and ds.build_cache() == 0
    assert (tmp_path / "ds/cache/episode_000000.npz").exists()
    cached = LeRobotDataset(tmp_path / "ds").episode(0)
    np.testing.assert_array_equal(cached.frames["head"], direct.frames["head"])
    np.testing.assert_array_equal(cached.state, direct.state)
    assert cached.task == "t" and cached.success is True


def test_subset_keeps_first_episodes_per_task(tmp_path):
    from dit4dit.datasets import copy_subset

    rng = np.random.default_rng(3)
    w = LeRobotWriter(tmp_path / "ds", fps=10, state_names=STATE, action_names=ACTION, cameras=CAMS)
    recs = []
    for i in range(3):
        for task in ("a", "b"):
            recs.append((task, _record(w, rng, 4 + i, task, True)))
    assert copy_subset(tmp_path / "ds", tmp_path / "sub", per_task=2) == 4
    sub = LeRobotDataset(tmp_path / "sub")
    assert [e["tasks"][0] for e in sub.episodes] == ["a", "b", "a", "b"]
    np.testing.assert_array_equal(sub.episode(2).state, recs[2][1][0])
    with pytest.raises(DatasetError, match="exists"):
        copy_subset(tmp_path / "ds", tmp_path / "sub", per_task=1)


def test_timestamp_is_frame_index_over_fps_and_the_recorders_clock_is_kept(tmp_path):
    # LeRobot checks timestamps against fps, so a jittery recording clock goes to recorded_time instead.
    rng = np.random.default_rng(4)
    w = LeRobotWriter(tmp_path / "ds", fps=10, state_names=STATE, action_names=ACTION, cameras=CAMS)
    clock = np.cumsum(rng.uniform(0.07, 0.13, size=6)).astype(np.float32)
    for t in range(6):
        w.add_frame(state=np.zeros(5), action=np.zeros(3), images={"head": _frames(rng, 1)[0]}, task="t",
                    recorded_time=float(clock[t]))
    w.save_episode()
    ds = LeRobotDataset(tmp_path / "ds")
    ep = ds.episode(0)
    np.testing.assert_array_equal(ep.timestamp, (np.arange(6) / 10).astype(np.float32))
    np.testing.assert_array_equal(ep.recorded_time, clock)
    ds.build_cache()
    np.testing.assert_array_equal(LeRobotDataset(tmp_path / "ds").episode(0).recorded_time, clock)
