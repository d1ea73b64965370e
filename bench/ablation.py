"""The paper's central claim at small scale: DiT4DiT vs the same action DiT on plain image features.

    python bench/ablation.py collect --data data                       # demonstrations: 60 and 20 per task
    python bench/ablation.py train   --data data --runs runs/ablation  # 2 conditionings x 2 demo counts
    python bench/ablation.py eval    --runs runs/ablation --episodes 20  # closed loop, prints the table
    python bench/ablation.py all     ...                               # the three in a row

``train`` runs the four ``dit4dit-train`` jobs (small preset, same seed, same steps) in parallel: meant for a
GPU machine (on a 2-core CPU use ``--steps`` small and expect hours). ``eval`` runs ``dit4dit-eval``'s
in-process path (the same sim, policy, chunk scheduling and safety layer as the runtime, simulated time,
no inference latency) on unseen seeds, and prints success per task with 95% Wilson intervals, next to the
expert's own success rate on the same seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

CONDITIONINGS = {"dit4dit": [], "image_features": ["--ablation", "image_features"]}
DEMOS = (60, 20)  # demonstrations per task


def dataset_for(data: Path, demos: int) -> Path:
    return data / f"g1_sim_{demos}"


def run_name(cond: str, demos: int) -> str:
    return f"{cond}_{demos}"


def cmd_collect(args: argparse.Namespace) -> None:
    from dit4dit.tasks.collect import collect
    from dit4dit.datasets import copy_subset

    big = dataset_for(args.data, max(args.demos))
    collect(big, ["reach_red", "reach_blue", "push_green"], max(args.demos))
    for n in args.demos:
        if n != max(args.demos) and not dataset_for(args.data, n).exists():
            copy_subset(big, dataset_for(args.data, n), per_task=n)
            from dit4dit.datasets import LeRobotDataset

            LeRobotDataset(dataset_for(args.data, n)).build_cache()


def cmd_train(args: argparse.Namespace) -> None:
    args.runs.mkdir(parents=True, exist_ok=True)
    procs = []
    t0 = time.time()
    for n in args.demos:
        for cond, extra in CONDITIONINGS.items():
            name = run_name(cond, n)
            out = args.runs / name / "g1.pt"
            out.parent.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "dit4dit.policy.train", "--data", str(dataset_for(args.data, n)),
                   "--preset", args.preset, "--out", str(out), "--steps", str(args.steps),
                   *[a for kv in args.override for a in ("--override", kv)],
                   "--tokenizer-steps", str(args.tokenizer_steps), "--batch-size",
                   str(args.batch_size), "--seed", "0", "--save-every", str(args.save_every), "--no-progress",
                   "--threads", str(args.threads), *extra]
            log = (args.runs / name / "train.log").open("w")
            procs.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
            print(f"started {name}: {' '.join(cmd)}", flush=True)
    deadline = None if args.time_limit is None else t0 + args.time_limit
    for name, p, log in procs:
        try:
            p.wait(None if deadline is None else max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            # Past the budget: stop it; the last periodic save (--save-every) stays as g1.pt, marked incomplete.
            p.terminate()
            p.wait(30)
        log.close()
        print(f"{name}: exit {p.returncode} after {time.time() - t0:.0f} s", flush=True)
    for name, _, _ in procs:
        print((args.runs / name / "train.log").read_text().strip().splitlines()[-1:], flush=True)


def _expert_rates(seeds: range, tasks: list[str]) -> dict[str, tuple[int, int]]:
    from dit4dit.drivers.sim import tasks as tasks_mod
    from dit4dit.tasks.expert import ScriptedExpert, run_episode
    from dit4dit.drivers.sim.scene import G1Sim

    sim, ex = G1Sim(), ScriptedExpert()
    out = {}
    for t in tasks:
        k = sum(run_episode(sim, tasks_mod.get_task(t), s, ex, image_size=None).success for s in seeds)
        out[t] = (k, len(seeds))
    return out


def cmd_eval(args: argparse.Namespace) -> None:
    import torch
    from dit4dit.policy.checkpoint import read_checkpoint
    from dit4dit.tasks.evaluate import EVAL_SEED0, evaluate, summarize, wilson

    torch.set_num_threads(args.threads)
    tasks = ["reach_red", "reach_blue", "push_green"]
    seeds = range(EVAL_SEED0, EVAL_SEED0 + args.episodes)
    results: dict[str, dict] = {}
    res_path = args.runs / "eval.json"
    if res_path.exists():
        results = json.loads(res_path.read_text())
    expert_key = f"expert@{args.episodes}"
    if expert_key not in results:
        results[expert_key] = {t: list(v) for t, v in _expert_rates(seeds, tasks).items()}
    for n in args.demos:
        for cond in CONDITIONINGS:
            name = run_name(cond, n)
            ckpt = args.runs / name / "g1.pt"
            if not ckpt.exists():
                print(f"{name}: no checkpoint at {ckpt}, skipped", file=sys.stderr)
                continue
            key = f"{name}@{args.episodes}"
            if key in results:
                continue
            t0 = time.time()
            rs, _ = evaluate(ckpt, tasks, args.episodes, path="inprocess", seed0=EVAL_SEED0)
            training = read_checkpoint(ckpt)["metadata"].get("training", {})
            results[key] = {"tasks": {t: [s.successes, s.episodes] for t, s in summarize(rs).items()},
                            "training": {k: training.get(k) for k in ("steps", "complete", "wall_time_s", "final_loss",
                                                                      "episodes", "batch_size")},
                            "eval_s": round(time.time() - t0, 1)}
            res_path.write_text(json.dumps(results, indent=1))
            print(f"{name}: {results[key]['tasks']} ({results[key]['eval_s']} s)", file=sys.stderr, flush=True)
    res_path.write_text(json.dumps(results, indent=1))

    def cell(k: int, m: int) -> str:
        lo, hi = wilson(k, m)
        return f"{k}/{m} [{lo:.0%}-{hi:.0%}]"

    header = f"| model | demos/task | {' | '.join(tasks)} | all |"
    title = (f"Closed-loop success, {args.episodes} unseen seeds per task ({EVAL_SEED0}..), in-process path, "
             "95% Wilson CI")
    lines = [title, header, "|" + "---|" * (len(tasks) + 3)]
    exp = results[expert_key]
    lines.append(f"| scripted expert | - | {' | '.join(cell(*exp[t]) for t in tasks)} | "
                 f"{cell(sum(exp[t][0] for t in tasks), sum(exp[t][1] for t in tasks))} |")
    for n in args.demos:
        for cond in CONDITIONINGS:
            key = f"{run_name(cond, n)}@{args.episodes}"
            if key not in results:
                continue
            r = results[key]["tasks"]
            tr = results[key]["training"]
            label = "DiT4DiT (video-DiT features)" if cond == "dit4dit" else "ablation (image features)"
            if not tr.get("complete", True):
                label += f" [incomplete: {tr.get('steps')} steps]"
            lines.append(f"| {label} | {n} | {' | '.join(cell(*r[t]) for t in tasks)} | "
                         f"{cell(sum(r[t][0] for t in tasks), sum(r[t][1] for t in tasks))} |")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["collect", "train", "eval", "all"])
    ap.add_argument("--data", type=Path, default=Path("data"), help="folder holding g1_sim_<N> datasets")
    ap.add_argument("--runs", type=Path, default=Path("runs/ablation"), help="checkpoints and results")
    ap.add_argument("--demos", type=lambda s: tuple(int(x) for x in s.split(",")), default=DEMOS,
                    help="demonstrations per task, comma-separated (default 60,20)")
    ap.add_argument("--steps", type=int, default=4000, help="policy training steps per model")
    ap.add_argument("--preset", default="small", help="model preset (small; tiny for a CPU-sized run)")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                    help="model config override passed to dit4dit-train (repeatable)")
    ap.add_argument("--tokenizer-steps", type=int, default=1500, help="frame autoencoder steps per model")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--save-every", type=int, default=500)
    ap.add_argument("--time-limit", type=float, default=None, help="train: stop every job after this many seconds")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads per job")
    ap.add_argument("--episodes", type=int, default=20, help="eval: seeds per task")
    args = ap.parse_args(argv)
    if args.command in ("collect", "all"):
        cmd_collect(args)
    if args.command in ("train", "all"):
        cmd_train(args)
    if args.command in ("eval", "all"):
        cmd_eval(args)


if __name__ == "__main__":
    main()
