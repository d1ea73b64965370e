"""What the robot receives: record every rt/lowcmd on a DDS domain, and check it against deploy.yaml's limits.

    python -m dit4dit.runtime.realtime.wire record --domain D [--interface lo] --out cmds.npz   # until Ctrl-C
    python -m dit4dit.runtime.realtime.wire check cmds.npz --config deploy.yaml

Run the recorder in a process of its own (DDS is initialised once per process). It writes ``t_ns`` (int64: the publisher's DDS source timestamp, ns),
``t`` (the same in s, float64), ``received`` (monotonic s at which this process took it), q, dq, tau,
kp, kd (N, 29), mode (N, 29) and the arm_sdk weight slot (N,). A reliable reader with a deep history
on the SDK's participant, taking raw samples (drivers/dds_io.py, hg_codec): a starved recorder loses
nothing, and the times are when the driver wrote each message, not when this process got round to it.
Prints "recording" once subscribed.

``check`` (and :func:`wire_report`) apply the step and velocity limits with no slack: between any two
consecutive messages written dt apart, no joint moved more than ``max_delta * dt / control_dt``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from typing import Any

import numpy as np

from dit4dit.drivers import g1_spec, hg_codec

N = g1_spec.NUM_JOINTS


def wire_report(cmds: dict[str, np.ndarray], limits: Any, joints: Any = None) -> dict[str, float]:
    """Rates and limit checks over recorded commands (``record``'s arrays; ``limits``: runtime.safety.SafetyLimits).

    Returns messages, commands_per_s (by source time), gap_ms p50/p99/max, step_violations (consecutive active
    messages that moved a joint beyond max_delta * dt / control_dt), max_step_ratio (worst step / allowed).
    Damping messages (kp = 0 on every joint) carry the measured pose, which no motor tracks: not checked."""
    j = np.arange(N) if joints is None else np.asarray(joints)
    t_ns, q, kp = cmds["t_ns"], cmds["q"][:, j], cmds["kp"][:, j]
    out: dict[str, float] = {"messages": float(len(t_ns))}
    if len(t_ns) < 2:
        return {**out, "commands_per_s": 0.0, "gap_ms_p50": float("nan"), "gap_ms_p99": float("nan"),
                "gap_ms_max": float("nan"), "step_violations": 0.0, "max_step_ratio": 0.0}
    gaps = np.diff(t_ns) * 1e-6
    out["commands_per_s"] = (len(t_ns) - 1) / ((t_ns[-1] - t_ns[0]) * 1e-9)
    out["gap_ms_p50"], out["gap_ms_p99"], out["gap_ms_max"] = (float(np.percentile(gaps, 50)),
                                                               float(np.percentile(gaps, 99)), float(gaps.max()))
    active = kp.max(axis=1) > 0
    idx = np.flatnonzero(active)
    consecutive = np.diff(idx) == 1
    first, second = idx[:-1][consecutive], idx[1:][consecutive]
    steps = np.abs(q[second] - q[first])
    allowed = limits.max_delta[j][None, :] * ((t_ns[second] - t_ns[first]).astype(np.float64) / (limits.dt * 1e9))[:, None]
    ratio = np.max(steps / allowed, axis=1) if len(steps) else np.zeros(1)
    out["step_violations"] = float(np.sum(ratio > 1.0))
    out["max_step_ratio"] = float(ratio.max())
    return out


def record(args: argparse.Namespace) -> int:
    from unitree_sdk2py.idl.unitree_hg.msg.dds_ import LowCmd_

    from dit4dit.drivers.dds_io import RawReader
    from dit4dit.drivers.g1_robot import init_dds

    init_dds(args.domain, args.interface)
    reader = RawReader(args.domain, args.topic, LowCmd_, depth=100_000, reliable=True)
    rows: list[tuple[int, float, np.ndarray]] = []
    stop_reading = threading.Event()

    def read_loop() -> None:
        while not stop_reading.is_set():
            received = time.monotonic()
            for data, stamp_ns in reader.take():
                rows.append((stamp_ns, received, hg_codec.lowcmd_from_cdr(data)["motor_cmd"]))
            time.sleep(0.01)

    thread = threading.Thread(target=read_loop, daemon=True)
    thread.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print("recording", flush=True)
    done.wait()
    time.sleep(0.05)
    stop_reading.set()
    thread.join(2.0)
    rows.sort(key=lambda r: r[0])
    t_ns = np.array([r[0] for r in rows], dtype=np.int64)
    received = np.array([r[1] for r in rows], dtype=np.float64)
    mc = np.stack([r[2] for r in rows]) if rows else np.zeros((0, g1_spec.NUM_MOTOR_SLOTS), hg_codec.MOTOR_CMD_DTYPE)
    fields = {k: mc[k][:, :N].astype(np.float64) for k in ("q", "dq", "tau", "kp", "kd")}
    np.savez(args.out, t_ns=t_ns, t=t_ns * 1e-9, received=received, mode=mc["mode"][:, :N],
             weight=mc["q"][:, g1_spec.ARM_SDK_WEIGHT_SLOT].astype(np.float64), **fields)
    print(f"saved {len(t_ns)} commands", flush=True)
    return 0


def check(args: argparse.Namespace) -> int:
    from dit4dit.runtime.config import load_config
    from dit4dit.runtime.realtime.safety import SafetyLimits

    cfg = load_config(args.config)
    limits = SafetyLimits.from_config(cfg.safety, 1.0 / cfg.rates.control_hz)
    with np.load(args.cmds) as z:
        cmds = {k: z[k] for k in z.files}
    joints = g1_spec.ARM_SDK_JOINTS if cfg.robot.mode == "arm_sdk" else None
    rep = wire_report(cmds, limits, joints)
    for k, v in rep.items():
        print(f"{k:18s} {v:.4g}")
    return 0 if rep["step_violations"] == 0 else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dit4dit.runtime.realtime.wire", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("record", help="record rt/lowcmd until SIGINT/SIGTERM")
    r.add_argument("--domain", type=int, required=True)
    r.add_argument("--interface", default="lo")
    r.add_argument("--topic", default=g1_spec.TOPIC_LOWCMD)
    r.add_argument("--out", required=True)
    c = sub.add_parser("check", help="rates and the step/velocity limits of a recording (exit 1 on a violation)")
    c.add_argument("cmds")
    c.add_argument("--config", required=True, help="the deploy.yaml the robot ran with")
    args = p.parse_args(argv)
    return record(args) if args.command == "record" else check(args)


if __name__ == "__main__":
    sys.exit(main())
