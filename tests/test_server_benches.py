"""The benchmarks behind the transport and backend tables still run (tiny settings; no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_transport_prints_its_table() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_transport.py"), "--n", "20", "--warmup", "2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for row in ("dit4dit ZeroMQ DEALER/ROUTER, raw uint8", "openpi-style websocket + msgpack, raw"):
        assert row in proc.stdout


def test_bench_backends_prints_its_table() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_backends.py"), "--device", "cpu", "--presets", "tiny",
                           "--backends", "eager", "--repeats", "2", "--warmup", "1", "--threads", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| tiny | eager |" in proc.stdout and "1.000000" in proc.stdout


def test_bench_serving_prints_its_table() -> None:
    """bench/gpu.sh's table, on CPU: eager, ONNX Runtime and auto's choice, in-process and through the server."""
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_serving.py"), "--device", "cpu", "--presets", "tiny",
                           "--backends", "eager-fp32,eager-bf16,compiled,onnxruntime,auto", "--requests", "5",
                           "--warmup", "1", "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    rows = {line.split("|")[2].strip(): line for line in out.splitlines() if line.startswith("| tiny (")}
    assert set(rows) == {"eager-fp32", "eager-bf16", "compiled", "onnxruntime", "auto"}, out
    assert "1.000000" in rows["onnxruntime"] and "auto picks onnxruntime" in rows["auto"], out
    assert "measured on cuda only" in rows["eager-bf16"] and "not offered" in rows["compiled"], out
    assert "| tiny | onnxruntime |" in out  # the server's split of where the time goes
    assert "round-trip speed-up over eager-fp32" in out


def test_gpu_sh_refuses_without_a_gpu_and_runs_end_to_end_in_smoke_mode() -> None:
    import os

    import torch

    if not torch.cuda.is_available():
        proc = subprocess.run(["bash", str(REPO / "bench" / "gpu.sh")], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "sees no CUDA GPU" in proc.stderr
    env = dict(os.environ, GPU_SH_SMOKE="1", PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu.sh"), "--backends", "eager-fp32,onnxruntime"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "| tiny (1M) | onnxruntime |" in proc.stdout and "bench/gpu.sh: finished" in proc.stdout


def test_make_curve_keys_cli(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "dit4dit.runtime.server", "--make-curve-keys", str(tmp_path / "keys"),
                           "--clients", "robot1,robot2"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    names = {p.name for p in (tmp_path / "keys").iterdir()}
    assert {"server.key", "server.key_secret", "robot1.key_secret", "robot2.key_secret", "authorized"} <= names
    assert {p.name for p in (tmp_path / "keys" / "authorized").iterdir()} == {"robot1.key", "robot2.key"}
    assert (tmp_path / "keys" / "server.key_secret").stat().st_mode & 0o077 == 0  # secrets are private


def test_bench_fairness_prints_its_table() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_fairness.py"), "--n", "10"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for row in ("|                    4 | alone ", "|                    4 | beside a flooder ", "|                   64 | beside a flooder "):
        assert row in proc.stdout, proc.stdout
