"""Camera stream costs: the ZeroMQ image stream (drivers/cameras/zmq_stream.py) end to end on localhost.

For each resolution and encoding, a publisher thread sends frames at --fps (a synthetic textured
image, so JPEG has realistic work); a ZmqCamera reads them with its background reader. The table gives
encode time per frame (publisher side), the capture-to-available latency (frame stamp to the moment
the reader stored it, p50 / p99), the delivered rate and the message size. Run:

    python bench/bench_cameras.py [--seconds 3] [--fps 30]
"""

from __future__ import annotations

import argparse
import socket
import threading
import time

import numpy as np
from dit4dit.drivers.cameras import ImageStreamPublisher, ZmqCamera, ZmqCameraConfig
from dit4dit.drivers.cameras.zmq_stream import decode_frame, encode_frame


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def synthetic(h: int, w: int, i: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx + i * 3) % 256, (yy * 2 + i) % 256, ((xx ^ yy) + i) % 256], axis=-1).astype(np.uint8)
    return img


def run_case(h: int, w: int, encoding: str, fps: float, seconds: float) -> dict[str, float]:
    frames = [synthetic(h, w, i) for i in range(8)]
    t0 = time.perf_counter()
    for i in range(20):
        msg = encode_frame(frames[i % 8], camera="head", frame_id=i, stamp_mono=time.monotonic(), encoding=encoding)
    enc_ms = (time.perf_counter() - t0) / 20 * 1e3
    t0 = time.perf_counter()
    for _ in range(20):
        decode_frame(msg)
    dec_ms = (time.perf_counter() - t0) / 20 * 1e3

    ep = f"tcp://127.0.0.1:{free_port()}"
    pub = ImageStreamPublisher(ep, "head", encoding=encoding)
    cam = ZmqCamera(ZmqCameraConfig(name="head", endpoint=ep, connect_timeout_s=5.0))
    stop = threading.Event()

    def feed() -> None:
        i, next_t = 0, time.monotonic()
        while not stop.is_set():
            pub.publish(frames[i % 8])
            i += 1
            next_t += 1.0 / fps
            time.sleep(max(0.0, next_t - time.monotonic()))

    th = threading.Thread(target=feed, daemon=True)
    th.start()
    cam.connect()
    latencies, ids = [], []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        f = cam.read_new(timeout_s=1.0)
        latencies.append(time.monotonic() - f.stamp)
        ids.append(f.frame_id)
    stop.set()
    th.join(2)
    cam.disconnect()
    pub.close()
    lat = np.array(latencies) * 1e3
    return {
        "enc_ms": enc_ms,
        "dec_ms": dec_ms,
        "lat_p50": float(np.percentile(lat, 50)),
        "lat_p99": float(np.percentile(lat, 99)),
        "rate": (len(ids) - 1) / seconds,
        "kb": len(msg) / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--fps", type=float, default=30.0)
    args = ap.parse_args()
    print(f"ZeroMQ image stream on localhost, {args.fps:.0f} fps offered, {args.seconds:.0f} s per case")
    print(f"{'resolution':>10} {'enc':>5} | {'encode ms':>9} {'decode ms':>9} | {'latency p50 ms':>14} "
          f"{'p99 ms':>7} | {'delivered fps':>13} | {'msg KiB':>7}")  # fmt: skip
    for h, w in ((224, 224), (480, 640)):
        for enc in ("jpeg", "raw"):
            r = run_case(h, w, enc, args.fps, args.seconds)
            print(f"{w:>4}x{h:<5} {enc:>5} | {r['enc_ms']:9.2f} {r['dec_ms']:9.2f} | {r['lat_p50']:14.2f} "
                  f"{r['lat_p99']:7.2f} | {r['rate']:13.1f} | {r['kb']:7.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
