"""Record every rt/lowcmd message on a DDS domain (a separate process: DDS is initialised once per process).

    python tests/lowcmd_recorder.py --domain D --out cmds.npz

Runs until SIGTERM/SIGINT, then writes t (the publisher's DDS source timestamp, s), q, dq, tau, kp, kd
(N, 29), mode (N, 29) and the arm_sdk weight slot (N,). Uses a CycloneDDS reader with a deep history on the SDK's participant, so a
starved recorder loses nothing and the times are when the driver wrote each message, not when this
process got around to reading it. Prints "recording" once subscribed.
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
    from cyclonedds.core import Policy, Qos
    from cyclonedds.sub import DataReader
    from cyclonedds.topic import Topic
    from unitree_sdk2py.core.channel import ChannelFactory, ChannelFactoryInitialize
    from unitree_sdk2py.idl.unitree_hg.msg.dds_ import LowCmd_

    ChannelFactoryInitialize(args.domain, args.interface)
    participant = ChannelFactory._ChannelFactory__participant
    reader = DataReader(participant, Topic(participant, args.topic, LowCmd_),
                        qos=Qos(Policy.History.KeepLast(100000), Policy.Reliability.Reliable(0)))  # fmt: skip
    rows: list[tuple] = []
    stop_reading = threading.Event()

    def read_loop() -> None:
        while not stop_reading.is_set():
            samples = reader.take(N=10000)
            for msg in samples:
                mc = msg.motor_cmd[:N]
                t = msg.sample_info.source_timestamp * 1e-9
                rows.append((t, [m.q for m in mc], [m.dq for m in mc], [m.tau for m in mc], [m.kp for m in mc],
                             [m.kd for m in mc], [m.mode for m in mc], msg.motor_cmd[g1_spec.ARM_SDK_WEIGHT_SLOT].q))  # fmt: skip
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
    data = sorted(rows, key=lambda r: r[0])
    if data:
        t, q, dq, tau, kp, kd, mode, weight = (np.array(c) for c in zip(*data, strict=True))
    else:
        t = weight = np.zeros(0)
        q = dq = tau = kp = kd = mode = np.zeros((0, N))
    np.savez(args.out, t=t, q=q, dq=dq, tau=tau, kp=kp, kd=kd, mode=mode, weight=weight)
    print(f"saved {len(t)} commands", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
