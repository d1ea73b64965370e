"""``dit4dit-collect``: scripted demonstrations in the in-process simulator, recorded as a LeRobot v2.1 dataset.

For each seed (``--seed0`` .. ``--seed0 + N - 1``) every requested task is played by the scripted expert
(tasks/expert.py, IK through the safety layer) in :class:`G1Sim` and recorded at the policy rate:
the head camera at the policy's resolution, the measured arm joint positions (``observation.state``), the
commanded arm targets (``action``; the safety-filtered command as ``action.executed``), the instruction.
Seeds are shared by the tasks, so one scene is shown with each instruction. Failed expert episodes are
dropped unless ``--keep-failures``; the expert's success rate is printed either way.

Re-running on an existing folder resumes: (task, seed) pairs already recorded are skipped. Each episode is
written whole when it ends, so an interrupted run keeps every finished episode.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

from dit4dit.datasets import LeRobotDataset, LeRobotWriter

DEFAULT_FPS = 10.0  # policy rate: chunk 16 = 1.6 s, future frames every 8 steps
DEFAULT_IMAGE = 64  # the small preset's input size


def parse_tasks(spec: str) -> list[str]:
    from dit4dit.drivers.sim import tasks as tasks_mod

    names = tasks_mod.task_names() if spec in ("all", "") else [s.strip() for s in spec.split(",") if s.strip()]
    for n in names:
        tasks_mod.get_task(n)  # KeyError naming the known tasks
    return names


def collect(
    out: str | Path,
    task_names: Sequence[str],
    episodes: int,
    *,
    seed0: int = 0,
    fps: float = DEFAULT_FPS,
    image_size: int = DEFAULT_IMAGE,
    keep_failures: bool = False,
    build_cache: bool = True,
    quiet: bool = False,
) -> dict[str, dict[str, int]]:
    """Record ``episodes`` seeds of each task into ``out``; returns {task: {"attempts", "successes", "recorded"}}."""
    from dit4dit.drivers.sim import tasks as tasks_mod
    from dit4dit.tasks.expert import CONTROLLED_NAMES, ScriptedExpert, run_episode
    from dit4dit.drivers.sim.scene import G1Sim

    writer = LeRobotWriter(
        out, fps=fps, state_names=CONTROLLED_NAMES, action_names=CONTROLLED_NAMES,
        cameras={"head": (image_size, image_size)},
        extra_info={"source": "dit4dit-collect (scripted expert, G1Sim)", "camera": "head_camera",
                    "tasks": {n: tasks_mod.get_task(n).instruction for n in task_names}},
    )
    done = {(e.get("task_name"), e.get("seed")) for e in writer.episodes}
    tried = {(e.get("task_name"), e.get("seed")) for e in _read_attempts(Path(out))}
    sim = G1Sim()
    expert = ScriptedExpert(control_hz=fps)
    stats = {n: {"attempts": 0, "successes": 0, "recorded": 0} for n in task_names}
    t_start = time.monotonic()
    for j in range(episodes):
        seed = seed0 + j
        for name in task_names:
            if (name, seed) in done or (name, seed) in tried and not keep_failures:
                continue
            task = tasks_mod.get_task(name)

            def on_frame(f, _task=task) -> None:
                writer.add_frame(state=f.state, action=f.action, action_executed=f.executed,
                                 images={"head": f.image}, task=_task.instruction)

            outcome = run_episode(sim, task, seed, expert, image_size=(image_size, image_size), on_frame=on_frame)
            stats[name]["attempts"] += 1
            stats[name]["successes"] += int(outcome.success)
            _log_attempt(Path(out), name, seed, outcome.success, outcome.final_info)
            if outcome.success or keep_failures:
                writer.save_episode(success=outcome.success,
                                    extra={"task_name": name, "seed": seed, "success_step": outcome.success_step})
                stats[name]["recorded"] += 1
            else:
                writer.discard_episode()
        if not quiet:
            el = time.monotonic() - t_start
            print(f"\rseed {seed} ({j + 1}/{episodes})  {writer.num_episodes} episodes, {writer.num_frames} frames, "
                  f"{el:.0f} s", end="", file=sys.stderr, flush=True)
    if not quiet:
        print(file=sys.stderr)
    if build_cache:
        LeRobotDataset(out).build_cache()
    return stats


def _attempts_path(out: Path) -> Path:
    return out / "meta" / "dit4dit_attempts.jsonl"  # every expert attempt, including dropped failures


def _read_attempts(out: Path) -> list[dict]:
    p = _attempts_path(out)
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []


def _log_attempt(out: Path, task: str, seed: int, success: bool, info: dict) -> None:
    with _attempts_path(out).open("a") as f:
        f.write(json.dumps({"task_name": task, "seed": seed, "success": bool(success), "info": info}) + "\n")


def expert_success(out: str | Path) -> dict[str, tuple[int, int]]:
    """{task: (successes, attempts)} over every expert attempt logged in a collected dataset."""
    res: dict[str, tuple[int, int]] = {}
    for a in _read_attempts(Path(out)):
        k, n = res.get(a["task_name"], (0, 0))
        res[a["task_name"]] = (k + int(a["success"]), n + 1)
    return res


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dit4dit-collect", description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=int, required=True, help="seeds per task")
    ap.add_argument("--task", default="all", help="task name(s), comma-separated, or 'all'")
    ap.add_argument("--out", required=True, help="dataset folder (created; an existing one is resumed)")
    ap.add_argument("--seed0", type=int, default=0, help="first seed (dit4dit-eval uses 100000.. by default)")
    ap.add_argument("--fps", type=float, default=DEFAULT_FPS, help="recording = policy rate, Hz")
    ap.add_argument("--image-size", type=int, default=DEFAULT_IMAGE, help="square head-camera frames, pixels")
    ap.add_argument("--keep-failures", action="store_true", help="also record episodes the expert failed")
    ap.add_argument("--no-cache", action="store_true", help="skip the decoded numpy cache (cache/*.npz)")
    args = ap.parse_args(argv)
    if args.episodes < 1:
        ap.error("--episodes must be >= 1")
    if args.image_size % 2:
        ap.error("--image-size must be even (H.264 yuv420p)")
    try:
        names = parse_tasks(args.task)
    except KeyError as e:
        ap.error(str(e.args[0]))
    t0 = time.monotonic()
    stats = collect(args.out, names, args.episodes, seed0=args.seed0, fps=args.fps, image_size=args.image_size,
                    keep_failures=args.keep_failures, build_cache=not args.no_cache)
    ds = LeRobotDataset(args.out)
    print(f"{args.out}: {len(ds)} episodes, {ds.num_frames} frames ({time.monotonic() - t0:.0f} s)")
    print("expert success this run / all attempts logged in the dataset:")
    total = expert_success(args.out)
    for n in names:
        s = stats[n]
        k, m = total.get(n, (0, 0))
        print(f"  {n:12s} {s['successes']}/{s['attempts']} this run, {k}/{m} overall")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
