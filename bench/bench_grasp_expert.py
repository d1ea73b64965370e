"""The scripted expert's success on the Dex3 grasping tasks, in-process (real MuJoCo, the expert's arm commands
through the SafetyFilter and its hand targets through HandLimiter), with 95% Wilson intervals.

    python bench/bench_grasp_expert.py --episodes 20 --seed0 100000
"""

from __future__ import annotations

import argparse
import time

from dit4dit.drivers.sim import tasks as tasks_mod
from dit4dit.drivers.sim.scene import G1Sim, SceneConfig
from dit4dit.tasks.evaluate import wilson
from dit4dit.tasks.expert import ScriptedExpert, run_episode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default=",".join(tasks_mod.GRASP_TASKS))
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--seed0", type=int, default=100_000)
    args = ap.parse_args()
    sim = G1Sim(SceneConfig(hands=True))
    expert = ScriptedExpert()
    rows = []
    for name in args.tasks.split(","):
        task = tasks_mod.get_task(name)
        t0 = time.perf_counter()
        outs = [run_episode(sim, task, args.seed0 + i, expert, image_size=None) for i in range(args.episodes)]
        k = sum(o.success for o in outs)
        lo, hi = wilson(k, len(outs))
        failed = [o.seed for o in outs if not o.success]
        rows.append((name, f"{k}/{len(outs)}", f"{100 * lo:.0f}-{100 * hi:.0f}%", f"{time.perf_counter() - t0:.0f} s",
                     " ".join(map(str, failed)) or "-"))
    head = ("task", "expert success", "95% Wilson", "wall", "failed seeds")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for j, row in enumerate([head, *rows]):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if j == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


if __name__ == "__main__":
    main()
