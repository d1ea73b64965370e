"""The shared-memory snapshot (seqlock) the physics process writes and the render process reads: a reader
in another process only ever sees whole snapshots, and a reset's changes (objects, mocap, static bodies
moved in the model) reach the renderer's own model."""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

import numpy as np
import pytest

mujoco = pytest.importorskip("mujoco")

from dit4dit.drivers.sim.shared_snapshot import SharedSnapshot  # noqa: E402

CTX = mp.get_context("spawn")
XML = """<mujoco><worldbody>
  <body name="box"><freejoint/><geom type="box" size="0.1 0.1 0.1"/></body>
  <body name="marker" pos="1 0 0"><geom type="sphere" size="0.05"/></body>
  <body name="target" mocap="true"><geom type="sphere" size="0.02" contype="0" conaffinity="0"/></body>
</worldbody></mujoco>"""


def model_and_data() -> tuple[Any, Any]:
    m = mujoco.MjModel.from_xml_string(XML)
    return m, mujoco.MjData(m)


def test_a_snapshot_carries_qpos_mocap_and_moved_static_bodies() -> None:
    m, d = model_and_data()
    writer = SharedSnapshot.create(m, d, n_cameras=2)
    rm, rd = model_and_data()
    reader = SharedSnapshot.attach(writer.name, rm, rd, n_cameras=2)
    try:
        assert reader.read() is None  # nothing written yet
        d.qpos[:3] = [0.3, -0.2, 0.9]
        d.mocap_pos[0] = [0.5, 0.5, 0.5]
        m.body_pos[m.body("marker").id] = [2.0, 1.0, 0.0]  # what tasks.reset does to a static body
        writer.write(sim_clock=12.5)
        writer.latency[1] = 0.25
        reader.frames[0] = 7
        assert reader.read() == 12.5
        np.testing.assert_array_equal(rd.qpos, d.qpos)
        np.testing.assert_array_equal(rd.mocap_pos, d.mocap_pos)
        np.testing.assert_array_equal(rm.body_pos, m.body_pos)
        assert reader.latency.tolist() == [0.0, 0.25] and int(writer.frames[0]) == 7
        assert not reader.stop
        writer.stop = True
        assert reader.stop
    finally:
        reader.close()
        writer.close()


def test_a_half_written_snapshot_is_never_used() -> None:
    m, d = model_and_data()
    writer = SharedSnapshot.create(m, d, n_cameras=1)
    rm, rd = model_and_data()
    reader = SharedSnapshot.attach(writer.name, rm, rd, n_cameras=1)
    try:
        writer.write(1.0)
        writer._u64[0] += 1  # noqa: SLF001 - a writer that died between its two sequence bumps
        d.qpos[0] = 5.0
        np.concatenate(writer._fields, out=writer._payload)  # noqa: SLF001
        assert reader.read(retries=10) is None
        assert rd.qpos[0] == 0.0  # the torn data never reached the reader's model
    finally:
        reader.close()
        writer.close()


def test_a_snapshot_for_another_model_is_refused() -> None:
    m, d = model_and_data()
    writer = SharedSnapshot.create(m, d, n_cameras=1)
    try:
        other = mujoco.MjModel.from_xml_string("<mujoco><worldbody><body><freejoint/><geom size='0.1'/></body>"
                                               "</worldbody></mujoco>")
        with pytest.raises(ValueError, match="another model"):
            SharedSnapshot.attach(writer.name, other, mujoco.MjData(other), n_cameras=1)
    finally:
        writer.close()


def _read_many(name: str, n: int, out: Any) -> None:
    """Spawned reader: every snapshot it reads must be whole (all qpos equal to the clock it came with)."""
    m, d = model_and_data()
    snap = SharedSnapshot.attach(name, m, d, n_cameras=1)
    seen, torn, last = 0, 0, -1.0
    while seen < n:
        clock = snap.read()
        if clock is None or clock == last:
            continue
        if not (np.all(d.qpos == clock) and np.all(m.body_pos[1:] == clock)):
            torn += 1
        seen, last = seen + 1, clock
    snap.frames[0] = seen
    snap.close()
    out.put(torn)


def test_a_reader_in_another_process_sees_only_whole_snapshots() -> None:
    m, d = model_and_data()
    writer = SharedSnapshot.create(m, d, n_cameras=1)
    out = CTX.Queue()
    p = CTX.Process(target=_read_many, args=(writer.name, 300, out), daemon=True)
    p.start()
    try:
        value = 0.0
        while p.is_alive() and out.empty():
            value += 1.0
            d.qpos[:] = value
            m.body_pos[1:] = value
            writer.write(value)
        assert out.get(timeout=60) == 0
        assert int(writer.frames[0]) == 300
    finally:
        p.join(10)
        if p.is_alive():
            p.kill()
        writer.close()
