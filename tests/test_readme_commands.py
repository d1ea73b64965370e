"""README's by-hand commands, as written, with the shipped deploy.yaml and checkpoint, work together.

The three commands are read from README's "Running the pieces by hand" block. Only what keeps this test
apart from other tests and developers on the same machine is changed: the DDS domain and the ports (the
simulator's flags, the server's --bind, and the same three values in a copy of deploy.yaml).
"""

from __future__ import annotations

import re
import shlex
import signal
from pathlib import Path

import pytest
import yaml

from tests.robot_rig import Proc, free_port

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def readme_commands() -> dict[str, list[str]]:
    text = (REPO / "README.md").read_text()
    block = text.split("## Running the pieces by hand", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    cmds = {}
    for line in block.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            argv = shlex.split(line)
            cmds[argv[0]] = argv
    assert set(cmds) == {"dit4dit-sim", "dit4dit-serve", "dit4dit-robot"}, cmds
    return cmds


def test_readme_by_hand_commands_run_together_with_the_shipped_files(tmp_path, dds_domain) -> None:
    cmds = readme_commands()
    cam, ctl, srv = free_port(), free_port(), free_port()
    shipped = yaml.safe_load((REPO / "deploy.yaml").read_text())
    assert shipped["cameras"]["head"]["endpoint"] == "tcp://127.0.0.1:55555"  # what plain dit4dit-sim streams to
    assert shipped["server"]["address"] == "tcp://127.0.0.1:5555"  # what plain dit4dit-serve binds
    deploy = dict(shipped)
    deploy["robot"] = {**shipped["robot"], "domain": dds_domain}
    deploy["cameras"] = {"head": {**shipped["cameras"]["head"], "endpoint": f"tcp://127.0.0.1:{cam}"}}
    deploy["server"] = {**shipped["server"], "address": f"tcp://127.0.0.1:{srv}"}
    cfg_path = tmp_path / "deploy.yaml"
    cfg_path.write_text(yaml.safe_dump(deploy, sort_keys=False))

    sim_argv = cmds["dit4dit-sim"] + ["--domain", str(dds_domain), "--camera-port", str(cam), "--control-port", str(ctl)]
    serve_argv = [REPO / a if a.startswith("checkpoints/") else a for a in cmds["dit4dit-serve"]]
    serve_argv = [str(a) for a in serve_argv] + ["--bind", f"tcp://127.0.0.1:{srv}"]
    robot_argv = [str(cfg_path) if a == "deploy.yaml" else a for a in cmds["dit4dit-robot"]]
    robot_argv += ["--summary", str(tmp_path / "summary.json")]
    procs = []
    try:
        sim = Proc("sim", sim_argv, tmp_path)
        procs.append(sim)
        serve = Proc("serve", serve_argv, tmp_path)
        procs.append(serve)
        sim.wait_for("dit4dit-sim ready", 90)
        robot = Proc("robot", robot_argv, tmp_path)
        procs.append(robot)
        robot.wait_for(r"state READY -> RUNNING", 180)
        mark = len(robot.text())
        robot.wait_for(r"chunk accepted|real-time process", 30, after=0)
        # a few seconds of the policy driving the arm, then Ctrl-C as a person would
        import time

        time.sleep(3.0)
        assert "RUNNING -> HOLD" not in robot.text()[mark:], robot.text()[-3000:]
        robot.send_signal(signal.SIGINT)
        assert robot.p.wait(60) == 0, robot.text()[-3000:]
    finally:
        for p in reversed(procs):
            p.stop()
    import json

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["exit_code"] == 0 and summary["chunks"]["accepted"] >= 3, summary["chunks"]
    reasons = [s[3] for s in summary["states"]]
    assert any(re.search("SIGINT received", r) for r in reasons), reasons
    assert summary["realtime"]["counters"]["published"] > 1000
