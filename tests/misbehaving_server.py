"""A small policy server that speaks the real dit4dit protocol (runtime/protocol.py) but answers badly on purpose.

    python tests/misbehaving_server.py --bind tcp://127.0.0.1:PORT --script good,nan,good,huge,...

Each `infer` reply follows the next entry of --script (cycled):
  good         a chunk that holds the observed state plus a slow sine on every joint (a plausible policy)
  nan          the good chunk with NaNs in it
  inf          the good chunk with +inf in it
  huge         the good chunk + 1e6 rad
  beyond_soft  every joint at its hard upper limit (valid G1 positions, outside the soft limits)
  wrong_shape  (H, A + 3) actions
  short        a (1, A) chunk
  late         the good chunk, sent after --late-s seconds (longer than the client's timeout)
  error        an error reply naming a field
  silent       no reply at all
Metadata: the 14 arm joints, a 'head' camera, chunk_length 16, 30 Hz. Prints one line per reply to stdout.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import zmq

from dit4dit.drivers import g1_spec
from dit4dit.runtime import protocol

ARM = [g1_spec.JOINT_NAMES[i] for i in g1_spec.ARM_JOINTS]
H = 16
RATE = 30.0


def metadata() -> dict:
    return {
        "model": "misbehaving-test-server", "version": "0", "preset": "none",
        "cameras": {"head": {"height": 96, "width": 128}}, "context_frames": 1,
        "state_names": ARM, "action_names": ARM, "action_space": "joint_position",
        "chunk_length": H, "control_rate_hz": RATE, "normalization": {}, "instructions": None, "training": {},
    }  # fmt: skip


def good_chunk(state: np.ndarray, t: float) -> np.ndarray:
    steps = t + np.arange(H) / RATE
    wave = 0.1 * np.sin(2 * np.pi * 0.3 * steps)[:, None]
    home = g1_spec.HOME_POSE[list(g1_spec.ARM_JOINTS)][None, :]
    return (home + wave).astype(np.float32) + 0 * state[None, :]


def reply_for(kind: str, state: np.ndarray, t: float) -> np.ndarray | None:
    a = good_chunk(state, t)
    if kind == "nan":
        a[3:, 2] = np.nan
    elif kind == "inf":
        a[5, :] = np.inf
    elif kind == "huge":
        a = a + 1e6
    elif kind == "beyond_soft":
        a = np.tile(g1_spec.UPPER[list(g1_spec.ARM_JOINTS)], (H, 1)).astype(np.float32)
    elif kind == "wrong_shape":
        a = np.zeros((H, len(ARM) + 3), np.float32)
    elif kind == "short":
        a = a[:1]
    return a


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--bind", required=True)
    p.add_argument("--script", default="good")
    p.add_argument("--late-s", type=float, default=1.5)
    args = p.parse_args()
    script = args.script.split(",")
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(args.bind)
    print(f"listening {args.bind} script={script}", flush=True)
    n = 0
    t0 = time.monotonic()
    while True:
        frames = sock.recv_multipart()
        envelope, payload = frames[:-1], frames[-1]
        req = protocol.parse_request(payload)
        if req.endpoint == "metadata":
            sock.send_multipart(envelope + [protocol.pack_reply(req.id, {"metadata": metadata()})])
            continue
        if req.endpoint in ("ping", "reset"):
            sock.send_multipart(envelope + [protocol.pack_reply(req.id, {})])
            continue
        obs = protocol.decode_observation(req.data["observation"])
        kind = script[n % len(script)]
        n += 1
        print(f"reply {n} {kind}", flush=True)
        if kind == "silent":
            continue
        if kind == "error":
            sock.send_multipart(envelope + [protocol.pack_error(req.id, protocol.E_INVALID, "observation.state", "test error")])
            continue
        if kind == "late":
            time.sleep(args.late_s)
        actions = reply_for(kind, obs["state"], time.monotonic() - t0)
        data = {"actions": protocol.encode_array(actions, "actions"), "timing": {"total": 0.001}}
        sock.send_multipart(envelope + [protocol.pack_reply(req.id, data)])


if __name__ == "__main__":
    sys.exit(main())
