"""dit4dit-sim's real-time behaviour, end to end (its own process, real DDS on loopback, real ZeroMQ):
newest command only (a burst or a stale queue is never replayed), the ``stats`` report, rendering in a
separate niced process, and clean stops. Timing figures are not asserted here: bench/bench_sim_realtime.py."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dit4dit.drivers import g1_spec

from tests.sim_process import SimProcess, start_sim

pytest.importorskip("unitree_sdk2py")
pytest.importorskip("mujoco")

CTX = mp.get_context("spawn")
ARM = list(g1_spec.ARM_JOINTS)
MODE_MACHINE = 6  # tests/sim_process.py starts the sim with it
STATS_KEYS = {"window_s", "sim_time_s", "real_time_factor", "lowcmd_received", "lowcmd_per_s", "lowcmd_applied",
              "lowcmd_superseded", "arm_sdk_received", "command_latency_ms", "physics_late_steps",
              "physics_step_late_ms", "overruns", "frames"}


def arm_target(offset: float) -> np.ndarray:
    q = g1_spec.HOME_POSE.copy()
    q[ARM] += offset
    return q


def wait_until(pred: Any, timeout_s: float, what: str, poll_s: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(poll_s)


# ---------------------------------------------------------------------------------------------
# Command writers (spawned: the SDK's DDS factory is a per-process singleton)

def _write_while_frozen(domain: int, control: str, sim_pid: int, targets: list[list[float]], out: Any) -> None:
    """Raw rt/lowcmd writer (the driver's fast path): once the sim hears us, freeze it (SIGSTOP: a busy
    simulator), write ``targets`` back to back, let it go on; report the samples' source stamps."""
    from dit4dit.drivers import hg_codec
    from dit4dit.drivers.dds_io import RawWriter, source_ns
    from dit4dit.drivers.g1_robot import init_dds
    from dit4dit.drivers.sim.bridge import control_request
    from unitree_sdk2py.idl.unitree_hg.msg.dds_ import LowCmd_

    try:
        init_dds(domain, "lo")
        writer = RawWriter(domain, g1_spec.TOPIC_LOWCMD, LowCmd_)
        rec = hg_codec.LowCmdRecord(MODE_MACHINE)
        kp, kd = g1_spec.gains_array()
        kp[ARM], kd[ARM] = 200.0, 4.0  # stiff arms: the targets are reached well inside the tolerance
        zero = np.zeros(g1_spec.NUM_JOINTS)

        def write(q: Any) -> int:
            rec.set(np.asarray(q, dtype=np.float64), zero, zero, kp, kd)
            stamp = source_ns(time.monotonic_ns())
            writer.write(rec.serialize(), stamp)
            return stamp

        deadline = time.monotonic() + 30
        while control_request(control, "state")["stats"]["lowcmd_received"] == 0:  # DDS discovery
            assert time.monotonic() < deadline, "the simulator never received a warm-up rt/lowcmd"
            write(g1_spec.HOME_POSE)
            time.sleep(0.01)
        time.sleep(0.3)  # every warm-up sample has arrived
        control_request(control, "stats", reset=True)
        os.kill(sim_pid, signal.SIGSTOP)
        try:
            stamps = [write(q) for q in targets]
            time.sleep(0.2)
        finally:
            os.kill(sim_pid, signal.SIGCONT)
        out.put({"stamps": stamps})
    except Exception as e:  # noqa: BLE001 - reported to the parent
        out.put({"error": f"{type(e).__name__}: {e}"})


def _robot_publisher(domain: int, control: str, seconds: float, out: Any) -> None:
    """G1Robot's 500 Hz publisher thread against the sim; the sim's stats over a window, and what was sent."""
    from dit4dit.drivers.g1_robot import G1Robot, G1RobotConfig
    from dit4dit.drivers.sim.bridge import control_request

    try:
        robot = G1Robot(G1RobotConfig(interface="lo", domain=domain))
        robot.connect(timeout_s=30.0)
        try:
            kp, kd = g1_spec.gains_array()
            robot.command(arm_target(0.1), kp, kd)
            wait_until(lambda: control_request(control, "stats")["lowcmd_applied"] > 0, 30, "the first command")
            control_request(control, "stats", reset=True)
            sent0 = robot.stats["published"]
            time.sleep(seconds)
            sent = robot.stats["published"] - sent0
            report = control_request(control, "stats")
        finally:
            robot.disconnect()
        out.put({"report": report, "sent": sent})
    except Exception as e:  # noqa: BLE001 - reported to the parent
        out.put({"error": f"{type(e).__name__}: {e}"})


def run_spawned(target: Any, *args: Any, timeout_s: float = 120.0) -> dict[str, Any]:
    out = CTX.Queue()
    p = CTX.Process(target=target, args=(*args, out), daemon=True)
    p.start()
    try:
        res = out.get(timeout=timeout_s)
        assert "error" not in res, res["error"]
        return res
    finally:
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join(2)


@pytest.fixture
def sim(dds_domain, free_port, tmp_path):
    s = start_sim(dds_domain, free_port, tmp_path, "--no-cameras", "--no-table")
    yield s
    assert s.stop() == 0, s.log.read_text()[-3000:]


# ---------------------------------------------------------------------------------------------
# Newest command only


def test_a_burst_applies_the_newest_command_and_supersedes_the_rest(sim, dds_domain):
    n = 40
    targets = [arm_target(0.2 * (i + 1) / n).tolist() for i in range(n)]
    stamps = run_spawned(_write_while_frozen, dds_domain, sim.control, sim.proc.pid, targets)["stamps"]
    wait_until(lambda: sim.request("stats")["lowcmd_received"] == n, 30, f"{n} samples received")
    rep = sim.request("stats")
    assert rep["lowcmd_received"] == n
    assert rep["lowcmd_applied"] + rep["lowcmd_superseded"] == n  # nothing rejected, nothing lost
    # The burst arrived while the sim was busy: it is not replayed one by one. (A batch taken while DDS is
    # still handing the burst over can apply a few; most are superseded.)
    assert rep["lowcmd_superseded"] >= n // 2, rep
    state = sim.request("state")
    assert state["command"] == "lowcmd" and state["command_stamp_ns"] == stamps[-1]  # the newest one is in force
    final = np.array(targets[-1])[ARM]
    wait_until(lambda: np.abs(np.array(sim.request("state")["q"])[ARM] - final).max() < 0.03, 30, "the last target")
    lat = rep["command_latency_ms"]
    assert lat["n"] == rep["lowcmd_applied"] and lat["max"] >= 150  # applied after the 0.2 s freeze, and so measured


def test_a_stale_queue_is_never_replayed_in_order(sim, dds_domain):
    a, b = arm_target(0.3), arm_target(-0.2)
    stamps = run_spawned(_write_while_frozen, dds_domain, sim.control, sim.proc.pid, [a.tolist(), b.tolist()])["stamps"]
    seen: list[int | None] = []

    def at_b() -> bool:
        st = sim.request("state")
        seen.append(st["command_stamp_ns"])
        return np.abs(np.array(st["q"])[ARM] - b[ARM]).max() < 0.03

    wait_until(at_b, 30, "target B")
    t_end = sim.request("ping")["sim_time"] + 0.5  # then half a simulated second more: nothing else comes
    wait_until(lambda: at_b() and sim.request("ping")["sim_time"] > t_end, 30, "B held")
    stamp_a, stamp_b = stamps
    assert seen[-1] == stamp_b and stamp_b in seen
    assert stamp_a not in seen[seen.index(stamp_b):], "A was applied after B"
    rep = sim.request("stats")
    assert rep["lowcmd_received"] == 2 and rep["lowcmd_applied"] + rep["lowcmd_superseded"] == 2


# ---------------------------------------------------------------------------------------------
# The stats report


def test_stats_report_with_a_500_hz_driver(dds_domain, free_port, tmp_path):
    s = start_sim(dds_domain, free_port, tmp_path, "--no-table", "--camera", "head:96x96@30")
    try:
        res = run_spawned(_robot_publisher, dds_domain, s.control, 2.0)
        rep, sent = res["report"], res["sent"]
        assert set(rep) >= STATS_KEYS
        assert rep["window_s"] > 1.5 and rep["sim_time_s"] > 0 and rep["real_time_factor"] > 0
        assert rep["real_time_factor"] == pytest.approx(rep["sim_time_s"] / rep["window_s"], rel=1e-3)
        assert sent > 0 and rep["lowcmd_received"] == pytest.approx(sent, rel=0.15, abs=20)  # what was sent arrived
        assert rep["lowcmd_per_s"] == pytest.approx(rep["lowcmd_received"] / rep["window_s"], rel=0.01)
        assert rep["lowcmd_applied"] > 0 and rep["lowcmd_bad_crc"] == 0 and rep["lowcmd_bad_mode_machine"] == 0 and rep["arm_sdk_received"] == 0
        lat = rep["command_latency_ms"]
        assert lat["n"] > 0 and lat["n"] == rep["lowcmd_applied"]  # one report's counts are of one instant
        assert -1.0 < lat["p50"] <= lat["p99"] <= lat["max"]  # one host: the writer's stamps are on our clock
        late = rep["physics_step_late_ms"]
        assert 0 <= late["p50"] <= late["p99"] <= late["max"] and rep["physics_late_steps"] >= 0
        assert rep["overruns"] >= 0 and rep["frames"]["head"] > 0
        # a reset starts a new window; the state reply's stats keep the totals
        s.request("stats", reset=True)  # the driver has disconnected: nothing comes any more
        assert s.request("stats")["lowcmd_received"] == 0
        totals = s.request("state")["stats"]  # quiet now, so exact: every sample applied or superseded
        assert totals["lowcmd_applied"] + totals["lowcmd_superseded"] == totals["lowcmd_received"]
        assert totals["lowcmd_received"] >= rep["lowcmd_received"]
        assert totals["physics_late_steps"] >= rep["physics_late_steps"] and totals["frames"]["head"] > 0
        with pytest.raises(RuntimeError, match="reset"):
            s.request("stats", reset="yes")
    finally:
        assert s.stop() == 0, s.log.read_text()[-3000:]
    assert "lowcmd_superseded" in s.log.read_text().split("dit4dit-sim stopped:")[-1]


# ---------------------------------------------------------------------------------------------
# Rendering in its own process


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")


def _thread_names(pid: int) -> list[str]:
    return [Path(f"/proc/{pid}/task/{t}/comm").read_text().strip() for t in os.listdir(f"/proc/{pid}/task")]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
def test_rendering_runs_in_a_niced_child_process(dds_domain, free_port, tmp_path):
    from dit4dit.drivers.cameras import SimCameraConfig, make_camera

    s = start_sim(dds_domain, free_port, tmp_path, "--no-table", "--camera", "head:96x96@30")
    try:
        cam = make_camera(SimCameraConfig(name="head", endpoint=s.camera, width=96, height=96, connect_timeout_s=20))
        with cam:
            frames = [cam.read_new(timeout_s=5.0) for _ in range(3)]
        assert [f.frame_id for f in frames] == sorted({f.frame_id for f in frames})  # increasing
        assert frames[0].device_stamp < frames[1].device_stamp < frames[2].device_stamp
        renderers = [p for p in _children(s.proc.pid) if "dit4dit.drivers.sim.render_process" in _cmdline(p)]
        assert len(renderers) == 1, [_cmdline(p) for p in _children(s.proc.pid)]
        (render,) = renderers
        assert os.getpriority(os.PRIO_PROCESS, render) >= os.getpriority(os.PRIO_PROCESS, s.proc.pid) + 10
        assert os.sched_getscheduler(render) == os.SCHED_OTHER
        # A software GL context starts llvmpipe threads where it lives: in the renderer, never in the physics.
        assert not [t for t in _thread_names(s.proc.pid) if t.startswith("llvmpipe")]
        # set_latency reaches the renderer (the delay itself: test_sim_bridge's injected-latency test)
        assert s.request("set_latency", seconds=0.2)["latency"] == {"head": 0.2}
        assert s.request("camera_info", camera="head")["latency"] == 0.2
        # The renderer dying takes neither physics nor DDS with it, and the stop stays clean.
        os.kill(render, signal.SIGKILL)
        wait_until(lambda: "camera renderer has stopped" in s.log.read_text(), 30, "the sim to notice", poll_s=0.1)
        t = s.request("ping")["sim_time"]
        wait_until(lambda: s.request("ping")["sim_time"] > t + 0.2, 30, "physics going on")
    finally:
        assert s.stop() == 0, s.log.read_text()[-3000:]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
def test_the_render_process_exits_with_its_parent(dds_domain, free_port, tmp_path):
    s = start_sim(dds_domain, free_port, tmp_path, "--no-table", "--camera", "head:64x64@15")
    try:
        render = next(p for p in _children(s.proc.pid) if "render_process" in _cmdline(p))
        s.proc.kill()  # no clean stop: the renderer must notice by itself
        s.proc.wait(10)
        wait_until(lambda: not _alive(render), 30, "the orphaned renderer to exit", poll_s=0.1)
    finally:
        s.stop()


# ---------------------------------------------------------------------------------------------
# Clean stops


def test_sigint_and_sigterm_stop_cleanly_every_time(dds_domain, free_port, tmp_path):
    for i, sig in enumerate((signal.SIGINT, signal.SIGTERM, signal.SIGINT, signal.SIGTERM)):
        s = SimProcess(dds_domain, free_port, tmp_path / f"sim{i}.log", "--no-table", "--camera", "head:96x96@30")
        try:
            s.wait_ready()
            render = [p for p in _children(s.proc.pid) if "render_process" in _cmdline(p)]
            time.sleep(0.5)  # frames flowing
        finally:
            rc = s.stop(sig)
        log = s.log.read_text()
        assert rc == 0, f"{signal.Signals(sig).name}: exit status {rc}\n{log[-3000:]}"
        assert "dit4dit-sim stopped:" in log
        assert render and not any(_alive(p) for p in render), "the render process outlived the simulator"
