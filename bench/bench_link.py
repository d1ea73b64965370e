"""The policy server on the far side of a simulated link: what one request costs a robot on 1 GbE.

    sudo python bench/bench_link.py [--requests 300] [--ckpt g1.pt]

Makes a network namespace with a veth pair, shapes both ends with ``tc netem`` (1 Gbit/s, 0.1 ms each
way: 0.2 ms round trip, a wired GbE link; where the kernel lacks sch_netem, ``tbf`` at the rate alone,
and the table says so), runs ``dit4dit-serve`` inside it and a PolicyClient outside,
and removes the namespace afterwards (also on Ctrl-C or an error). It reports the client's round trip,
p50 / p99, side by side in one run:

* over loopback and over the link;
* sending the RealSense's full 640x480 frame with every request (what the controller did) and sending it
  area-resized on the robot to the size the server's metadata asks for (what it does now,
  runtime/observation.py), so the ratio shows what the resize saves on the wire.

Needs root (or CAP_NET_ADMIN) for ``ip netns`` and ``tc``; without it, it says so and exits 2.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dit4dit.drivers.cameras.resize import area_resize
from dit4dit.runtime.client import PolicyClient

SUBNET = "10.203.{k}.{host}"


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


class Link:
    """A namespace ``ns`` with ``veth`` ends, both shaped; removed by close()."""

    def __init__(self, rate: str = "1gbit", delay: str = "0.1ms") -> None:
        k = os.getpid() % 200 + 20
        self.ns, self.host_if, self.ns_if = f"d4d{os.getpid()}", f"d4dh{os.getpid() % 100000}", f"d4dn{os.getpid() % 100000}"
        self.host_ip, self.ns_ip = SUBNET.format(k=k, host=1), SUBNET.format(k=k, host=2)
        self.created = False
        try:
            sh("ip", "netns", "add", self.ns)
            self.created = True
            sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            sh("ip", "link", "set", self.ns_if, "netns", self.ns)
            sh("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            sh("ip", "link", "set", self.host_if, "up")
            sh("ip", "netns", "exec", self.ns, "ip", "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
            sh("ip", "netns", "exec", self.ns, "ip", "link", "set", self.ns_if, "up")
            sh("ip", "netns", "exec", self.ns, "ip", "link", "set", "lo", "up")
            self.shaping = f"{rate}, +{delay} each way (netem)"
            for prefix, dev in (((), self.host_if), (("ip", "netns", "exec", self.ns), self.ns_if)):
                try:
                    sh(*prefix, "tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", delay, "rate", rate)
                except subprocess.CalledProcessError:
                    # A kernel without sch_netem (some VMs): the rate alone, with a token bucket.
                    sh(*prefix, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", "256kb",
                       "latency", "50ms")
                    self.shaping = f"{rate} (tbf; this kernel has no sch_netem, so no delay added)"
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.created:
            subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)  # takes the veth pair with it
            subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
            self.created = False


def start_server(ckpt: Path, bind: str, netns: str | None, log: Path) -> subprocess.Popen:
    cmd = ["dit4dit-serve", "--ckpt", str(ckpt), "--bind", bind, "--device", "cpu", "--max-batch", "1"]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def round_trips(address: str, n: int, frames: dict[str, np.ndarray], state_dim: int,
                instruction: str) -> dict[str, np.ndarray]:
    """Round trips (ms) per frame kind, the kinds interleaved request by request so drift hits all alike."""
    client = PolicyClient(address, timeout_s=5.0)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                client.metadata()
                break
            except Exception:  # noqa: BLE001 - still starting
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        obs = {name: {"images": {"head": f}, "state": np.zeros(state_dim, np.float32), "instruction": instruction}
               for name, f in frames.items()}
        for o in obs.values():
            for _ in range(5):
                client.infer(o, seed=0)  # warm-up
        rtts: dict[str, list[float]] = {name: [] for name in frames}
        for _ in range(n):
            for name, o in obs.items():
                t0 = time.perf_counter()
                client.infer(o, seed=0)
                rtts[name].append(time.perf_counter() - t0)
        return {name: np.array(v) * 1e3 for name, v in rtts.items()}
    finally:
        client.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--ckpt", type=Path, default=None, help="checkpoint to serve (default: a tiny random one)")
    ap.add_argument("--rate", default="1gbit")
    ap.add_argument("--delay", default="0.1ms", help="one-way delay added at each end")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_link.py needs root (or CAP_NET_ADMIN) for `ip netns` and `tc`; run it with sudo", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="bench_link_"))
    ckpt = args.ckpt
    if ckpt is None:
        from dit4dit.policy.checkpoint import make_random_checkpoint

        ckpt = make_random_checkpoint(tmp / "tiny.pt", "tiny", instructions=["move the right hand to the red block"])
    from dit4dit.policy.checkpoint import read_checkpoint

    md = read_checkpoint(ckpt)["metadata"]
    h, w = int(md["cameras"]["head"]["height"]), int(md["cameras"]["head"]["width"])
    state_dim = len(md["state_names"])
    instruction = (md.get("instructions") or ["move the right hand to the red block"])[0]
    rng = np.random.default_rng(0)
    full = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)  # a RealSense colour frame: 0.9 MB
    frames = {"full 640x480": full, f"resized on the robot to {w}x{h}": area_resize(full, (h, w))}
    rows = []
    link = Link(args.rate, args.delay)
    servers = []
    try:
        port = 5600 + os.getpid() % 300
        servers.append(start_server(ckpt, f"tcp://127.0.0.1:{port}", None, tmp / "serve_lo.log"))
        servers.append(start_server(ckpt, f"tcp://{link.ns_ip}:{port}", link.ns, tmp / "serve_link.log"))
        for where, address in (("loopback", f"tcp://127.0.0.1:{port}"),
                               ("veth", f"tcp://{link.ns_ip}:{port}")):
            for name, rtt in round_trips(address, args.requests, frames, state_dim, instruction).items():
                rows.append((where, name, frames[name].nbytes, np.percentile(rtt, 50), np.percentile(rtt, 99)))
    finally:
        for s in servers:
            s.terminate()
            try:
                s.wait(10)
            except subprocess.TimeoutExpired:
                s.kill()
        link.close()
    print(f"\nclient round trip, {args.requests} requests each (dit4dit-serve, {md.get('preset', '?')} policy on CPU, "
          f"{os.cpu_count()} CPUs); veth shaped to {link.shaping}; the namespace is removed")
    print(f"| {'path':<34} | {'image sent':<28} | {'bytes':>8} | {'p50 ms':>7} | {'p99 ms':>7} |")
    print(f"|{'-' * 36}|{'-' * 30}|{'-' * 10}|{'-' * 9}|{'-' * 9}|")
    for where, name, nbytes, p50, p99 in rows:
        print(f"| {where:<34} | {name:<28} | {nbytes:>8d} | {p50:7.2f} | {p99:7.2f} |")
    link_rows = [r for r in rows if r[0] == "veth"]
    if len(link_rows) == 2:
        print(f"\nover the link, resizing on the robot saves {link_rows[0][3] - link_rows[1][3]:.2f} ms at p50 "
              f"({link_rows[0][3] / link_rows[1][3]:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
