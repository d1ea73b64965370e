"""The client library stays importable on the robot, which has no torch."""

from __future__ import annotations

import subprocess
import sys


def test_client_and_protocol_import_without_torch() -> None:
    code = (
        "import sys\n"
        "import dit4dit.runtime.client, dit4dit.runtime.protocol\n"
        "from dit4dit.runtime.client import PolicyClient, InferResult, ServerError, ServerTimeout\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnxruntime', 'tensorrt', 'onnx'))\n"
        "assert not heavy, heavy\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_server_module_imports_without_torch_until_it_loads_a_policy() -> None:
    # PolicyServer can front any policy object; torch is only imported by main() when it loads a checkpoint.
    code = "import sys, dit4dit.runtime.server\nassert 'torch' not in sys.modules\nprint('ok')\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
