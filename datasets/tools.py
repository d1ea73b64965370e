"""Dataset tools: a summary, the numpy cache, subsets (``python -m dit4dit.datasets``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dit4dit.datasets.common import CACHE_DIR, DatasetError
from dit4dit.datasets.v21 import LeRobotDataset, LeRobotWriter


def copy_subset(src: str | Path, dst: str | Path, per_task: int) -> int:
    """Copy the first ``per_task`` episodes of every task of ``src`` into a new dataset ``dst`` (the same
    demonstrations, fewer of them: for learning curves). Returns the number of episodes written."""
    ds = LeRobotDataset(src)
    if Path(dst).exists():
        raise DatasetError(f"{dst} exists; subset into a new folder")
    writer = LeRobotWriter(dst, fps=ds.fps, state_names=ds.state_names, action_names=ds.action_names,
                           cameras=ds.cameras, robot_type=ds.info.get("robot_type") or "unitree_g1",
                           extra_info={**ds.info.get("dit4dit", {}), "subset_of": str(src), "per_task": per_task})
    kept: dict[str, int] = {}
    for i, meta in enumerate(ds.episodes):
        task = meta["tasks"][0]
        if kept.get(task, 0) >= per_task:
            continue
        kept[task] = kept.get(task, 0) + 1
        e = ds.episode(i)
        for t in range(e.length):
            writer.add_frame(state=e.state[t], action=e.action[t], action_executed=e.action_executed[t],
                             images={c: f[t] for c, f in e.frames.items()}, task=e.task,
                             intervention=bool(e.intervention[t]), recorded_time=None if e.recorded_time is None else float(e.recorded_time[t]))
        extra = {k: v for k, v in meta.items() if k not in ("episode_index", "tasks", "length", "success")}
        writer.save_episode(success=meta.get("success"), extra=extra)
    return writer.num_episodes


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m dit4dit.datasets {info,cache,subset} ROOT [DST --per-task N]``: summarise a dataset,
    build its numpy cache, or copy the first N episodes per task into a new dataset."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m dit4dit.datasets", description=main.__doc__)
    ap.add_argument("command", choices=["info", "cache", "subset"])
    ap.add_argument("root")
    ap.add_argument("dst", nargs="?", help="subset: the new dataset folder")
    ap.add_argument("--per-task", type=int, default=None, help="subset: episodes kept per task")
    args = ap.parse_args(argv)
    if args.command == "subset":
        if not args.dst or not args.per_task:
            ap.error("subset needs DST and --per-task N")
        n = copy_subset(args.root, args.dst, args.per_task)
        LeRobotDataset(args.dst).build_cache()
        print(f"{args.dst}: {n} episodes (first {args.per_task} per task of {args.root}), cache built")
        return
    ds = LeRobotDataset(args.root)
    if args.command == "cache":
        print(f"cached {ds.build_cache()} episode(s) under {ds.root / CACHE_DIR}")
        return
    print(f"{ds.root}: {len(ds)} episodes, {ds.num_frames} frames at {ds.fps:g} fps, cameras {ds.cameras}")
    print(f"  state {len(ds.state_names)}: {ds.state_names}")
    print(f"  action {len(ds.action_names)}: {ds.action_names}")
    for idx, task in sorted(ds.tasks.items()):
        eps = [e for e in ds.episodes if e["tasks"][0] == task]
        ok = sum(1 for e in eps if e.get("success"))
        print(f"  task {idx} {task!r}: {len(eps)} episodes, {ok} marked successful")
