"""Record every rt/lowcmd message on a DDS domain (a separate process: DDS is initialised once per process).

    python tests/lowcmd_recorder.py --domain D --out cmds.npz

Runs until SIGTERM/SIGINT, then writes t (receipt, monotonic), q, dq, tau, kp, kd (N, 29) and mode (N, 29).
Prints "recording" once subscribed.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time

import numpy as np

from dit4dit.drivers import g1_spec

N = g1_spec.NUM_JOINTS


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--domain", type=int, required=True)
    p.add_argument("--interface", default="lo")
    p.add_argument("--topic", default=g1_spec.TOPIC_LOWCMD)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    from unitree_sdk2py.core.channel import ChannelFactoryInitialize, ChannelSubscriber
    from unitree_sdk2py.idl.unitree_hg.msg.dds_ import LowCmd_

    ChannelFactoryInitialize(args.domain, args.interface)
    rows: list[tuple] = []
    lock = threading.Lock()

    def on_cmd(msg: LowCmd_) -> None:
        t = time.monotonic()
        mc = msg.motor_cmd[:N]
        row = (t, [m.q for m in mc], [m.dq for m in mc], [m.tau for m in mc], [m.kp for m in mc],
               [m.kd for m in mc], [m.mode for m in mc])  # fmt: skip
        with lock:
            rows.append(row)

    sub = ChannelSubscriber(args.topic, LowCmd_)
    sub.Init(on_cmd, 0)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print("recording", flush=True)
    done.wait()
    sub.Close()
    with lock:
        data = list(rows)
    if data:
        t, q, dq, tau, kp, kd, mode = (np.array(c) for c in zip(*data))
    else:
        t = np.zeros(0)
        q = dq = tau = kp = kd = mode = np.zeros((0, N))
    np.savez(args.out, t=t, q=q, dq=dq, tau=tau, kp=kp, kd=kd, mode=mode)
    print(f"saved {len(t)} commands", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
