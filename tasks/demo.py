"""``dit4dit-demo``: the whole product on one machine, no robot, no GPU.

Uses the shipped checkpoint (``checkpoints/g1_small.pt``) or, when it is missing or ``--retrain`` is given,
produces one: scripted demonstrations with ``dit4dit-collect`` and a small DiT4DiT with ``dit4dit-train``
(on a CPU this takes long: see README). Then it runs one closed-loop episode through the real runtime path
(``dit4dit-sim`` + ``dit4dit-serve`` + ``dit4dit-robot`` over DDS and ZeroMQ), saves the head-camera video
(mp4) and prints whether the task succeeded.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CKPT = REPO / "checkpoints" / "g1_small.pt"


def produce_checkpoint(out: Path, data: Path, episodes: int, steps: int) -> Path:
    """Collect ``episodes`` demonstrations per task into ``data`` and train the small preset into ``out``."""
    from dit4dit.tasks.collect import collect

    print(f"[demo] collecting {episodes} scripted demonstrations per task into {data}", flush=True)
    collect(data, ["reach_red", "reach_blue", "push_green"], episodes)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "dit4dit.policy.train", "--data", str(data), "--preset", "small", "--out", str(out),
           "--steps", str(steps), "--batch-size", "32", "--tokenizer-steps", "600", "--save-every", "200"]
    print(f"[demo] training: {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, check=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dit4dit-demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", type=Path, default=DEFAULT_CKPT, help="checkpoint to run (default: the shipped one)")
    ap.add_argument("--task", default="reach_red", help="reach_red | reach_blue | push_green")
    ap.add_argument("--seed", type=int, default=100_000, help="scene seed (unseen in training)")
    ap.add_argument("--out", type=Path, default=Path("out/demo"), help="folder for the video and the logs")
    ap.add_argument("--path", choices=["runtime", "inprocess"], default="runtime",
                    help="runtime: sim, server and controller processes (default); inprocess: one process")
    ap.add_argument("--retrain", action="store_true", help="collect and train even if the checkpoint exists")
    ap.add_argument("--data", type=Path, default=Path("data/demo"), help="where --retrain collects demonstrations")
    ap.add_argument("--episodes", type=int, default=60, help="--retrain: demonstrations per task")
    ap.add_argument("--steps", type=int, default=1000, help="--retrain: policy training steps")
    args = ap.parse_args(argv)

    from dit4dit.drivers.sim import tasks as tasks_mod
    from dit4dit.tasks.evaluate import (
        EpisodeResult,
        InProcessEvaluator,
        RuntimeEvaluator,
        write_video,
    )

    try:
        task = tasks_mod.get_task(args.task)
    except KeyError as e:
        ap.error(str(e.args[0]))
    ckpt = args.ckpt
    if args.retrain or not ckpt.exists():
        if not args.retrain:
            print(f"[demo] no checkpoint at {ckpt}: producing one", flush=True)
        ckpt = produce_checkpoint(ckpt, args.data, args.episodes, args.steps)
    else:
        print(f"[demo] using {ckpt} ({ckpt.stat().st_size / 1e6:.1f} MB)", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    frames: list = []
    t0 = time.monotonic()
    print(f"[demo] task {task.name!r}: \"{task.instruction}\", seed {args.seed}, path {args.path}", flush=True)
    r: EpisodeResult
    if args.path == "runtime":
        print("[demo] starting dit4dit-sim, dit4dit-serve and dit4dit-robot ...", flush=True)
        with RuntimeEvaluator(ckpt, log_dir=args.out / "logs") as ev:
            r = ev.run(task.name, args.seed, video=frames)
        fps = 10.0
    else:
        ev = InProcessEvaluator(ckpt)
        r = ev.run(task.name, args.seed, video=frames)
        fps = ev.hz
    video = write_video(args.out / f"{task.name}_seed{args.seed}.mp4", frames, fps) if frames else None
    when = f" after {r.success_time_s:.1f} s" if r.success_time_s is not None else ""
    print(f"[demo] {'SUCCESS' if r.success else 'FAILURE'}{when}: {task.instruction} "
          f"({ {k: v for k, v in r.info.items() if k != 'controller_states'} })")
    print(f"[demo] video: {video}  ({len(frames)} frames; {time.monotonic() - t0:.0f} s)")
    return 0 if r.success else 1


if __name__ == "__main__":
    raise SystemExit(main())
