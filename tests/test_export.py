"""dit4dit-export: ONNX graphs, the parity gate in ONNX Runtime, backend selection, TensorRT (skipped without it)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from dit4dit.policy import backends, export, graphs, tensorrt_engine
from dit4dit.policy.checkpoint import make_random_checkpoint
from dit4dit.policy.inference import Policy
from dit4dit.policy.model import ActionSampler, FeatureNet
from dit4dit.policy.onnxruntime_engine import OnnxRuntimeEngine



@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny random checkpoint and its export, done once per module."""
    root = tmp_path_factory.mktemp("export")
    ckpt = make_random_checkpoint(root / "g1.pt", "tiny")
    out = root / "engines"
    # The TorchScript exporter takes ~1 s here against ~30 s for dynamo; dynamo is tested on its own below.
    proc = subprocess.run([sys.executable, "-m", "dit4dit.policy.export", "--ckpt", str(ckpt), "--out", str(out),
                           "--max-batch", "4", "--exporter", "torchscript"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "TensorRT engines not built" in proc.stdout  # auto mode says why when TensorRT is absent
    return ckpt, out


def test_export_writes_gated_graphs_and_manifest(exported: tuple[Path, Path]) -> None:
    ckpt, out = exported
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["checkpoint_sha256"] == export.checkpoint_sha256(ckpt)
    assert manifest["onnx"] == {"features": "features.onnx", "sampler": "sampler.onnx"}
    assert manifest["graphs"]["fp32"]["passed"] and manifest["graphs"]["fp32"]["checked_in"] == "onnxruntime-cpu"
    assert {r["graph"] for r in manifest["parity"]} == {"features", "sampler", "policy", "displacement"}
    for r in manifest["parity"]:
        assert r["passed"] and r["cosine"] >= export.COSINE_GATE and r["max_abs_error"] < 1e-3
    sampler = onnx.load(str(out / "sampler.onnx"))
    ops = {n.op_type for n in sampler.graph.node}
    assert "Loop" not in ops and "If" not in ops  # the Euler loop is unrolled: one straight graph
    assert [i.name for i in sampler.graph.input] == list(export.SAMPLER_INPUTS)


@pytest.mark.slow
def test_dynamo_exporter_passes_the_gate(exported: tuple[Path, Path], tmp_path: Path) -> None:
    """The exporter `auto` picks first: dynamo, on the sampler (the graph with the unrolled Euler loop; ~20-60 s
    on 2 busy cores). The features graph comes from the module's TorchScript export."""
    ckpt, out = exported
    model = Policy.from_checkpoint(ckpt).model
    inputs = {k: torch.from_numpy(v) for k, v in export.example_inputs(model.cfg, 2).items()}
    with torch.no_grad():
        inputs["features"] = FeatureNet(model)(inputs["frames"], inputs["text_tokens"])
    used = export._export_one(ActionSampler(model), tuple(inputs[n] for n in export.SAMPLER_INPUTS),
                              export.SAMPLER_INPUTS, "actions", tmp_path / "sampler.onnx", 2, "dynamo")
    assert used == "dynamo"
    engine = OnnxRuntimeEngine(out / "features.onnx", tmp_path / "sampler.onnx")
    reports = export.engine_parity(engine, model, batch=2)
    assert all(r.passed for r in reports), [r.line() for r in reports]


def test_onnxruntime_engine_in_the_policy_matches_torch(exported: tuple[Path, Path]) -> None:
    ckpt, out = exported
    reference = Policy.from_checkpoint(ckpt)
    policy = Policy.from_checkpoint(ckpt)
    policy.engine = OnnxRuntimeEngine(out / "features.onnx", out / "sampler.onnx")
    rng = np.random.default_rng(1)
    meta = policy.metadata
    obs = {"images": {"head": rng.integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)},
           "state": np.asarray(meta["normalization"]["state"]["mean"], np.float32)[None].repeat(3, 0),
           "instruction": ["pick up the red block"] * 3}
    noise = rng.standard_normal((3, 8, 14)).astype(np.float32)
    prefix = (np.asarray(meta["normalization"]["action"]["mean"], np.float32)[None, None].repeat(3, 0).repeat(5, 1), 2)
    want = reference.infer(obs, noise=noise, prefix=prefix)
    got = policy.infer(obs, noise=noise, prefix=prefix)  # batch 3: the graphs' batch axis is dynamic
    cosine, err = export.compare(want - want.mean(), got - want.mean())
    assert cosine >= export.COSINE_GATE and err < 1e-4, (cosine, err)


def test_parity_gate_catches_a_wrong_graph(exported: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, out = exported
    model = onnx.load(str(out / "sampler.onnx"))
    # Corrupt the widest weight matrix of the graph, as a bad export or a wrong precision would.
    widest = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)) if t.data_type == onnx.TensorProto.FLOAT else 0)
    arr = onnx.numpy_helper.to_array(widest).copy()
    arr += np.random.default_rng(0).standard_normal(arr.shape).astype(np.float32) * 5 * (np.abs(arr).max() + 1e-3)
    widest.CopyFrom(onnx.numpy_helper.from_array(arr, widest.name))
    onnx.save(model, str(tmp_path / "sampler.onnx"))
    engine = OnnxRuntimeEngine(out / "features.onnx", tmp_path / "sampler.onnx")
    torch_model = Policy.from_checkpoint(ckpt).model
    reports = {r.graph: r for r in export.engine_parity(engine, torch_model)}
    assert reports["features"].passed
    # The raw chunk of an untrained model is mostly its initial noise, so only the displacement shows it.
    assert not reports["displacement"].passed and reports["displacement"].cosine < export.COSINE_GATE


def test_backend_selection_rule(exported: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, out = exported
    choice = backends.select_backend(ckpt, "auto", "cpu", out)
    assert choice.backend == "onnxruntime" and "passed parity" in choice.reason
    assert backends.select_backend(ckpt, "auto", "cpu", None).backend == "torch"
    assert backends.select_backend(ckpt, "torch", "cpu", out).backend == "torch"
    other = make_random_checkpoint(tmp_path / "other.pt", "tiny", seed=1)
    choice = backends.select_backend(other, "auto", "cpu", out)
    assert choice.backend == "torch" and "another checkpoint" in choice.reason
    with pytest.raises(backends.BackendError, match="needs --device cuda"):
        backends.select_backend(ckpt, "tensorrt", "cpu", out)
    with pytest.raises(backends.BackendError, match="unknown backend"):
        backends.select_backend(ckpt, "openvino", "cpu", out)


def test_failed_gate_is_never_picked(exported: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, out = exported
    copy = tmp_path / "engines"
    shutil.copytree(out, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["onnx"] = None  # what export writes when the gate fails
    manifest["graphs"]["fp32"]["passed"] = False
    (copy / "manifest.json").write_text(json.dumps(manifest))
    choice = backends.select_backend(ckpt, "auto", "cpu", copy)
    assert choice.backend == "torch" and "failed the parity gate" in choice.reason


def test_export_is_cached_by_checkpoint_hash(exported: tuple[Path, Path]) -> None:
    ckpt, out = exported
    before = (out / "sampler.onnx").stat().st_mtime_ns
    proc = subprocess.run([sys.executable, "-m", "dit4dit.policy.export", "--ckpt", str(ckpt), "--out", str(out),
                           "--max-batch", "4", "--tensorrt", "no"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "fp32 ONNX graphs" in proc.stdout and "already match" in proc.stdout, proc.stdout + proc.stderr
    assert (out / "sampler.onnx").stat().st_mtime_ns == before


def test_server_runs_the_exported_graphs(exported: tuple[Path, Path], free_port: int) -> None:
    from server_harness import ServerProcess

    from dit4dit.runtime.client import PolicyClient

    ckpt, out = exported
    endpoint = f"tcp://127.0.0.1:{free_port}"
    server = ServerProcess(["--ckpt", str(ckpt), "--engines", str(out), "--device", "cpu", "--bind", endpoint])
    try:
        assert "backend onnxruntime on cpu" in server.banner, server.banner
        reference = Policy.from_checkpoint(ckpt)
        obs = {"images": {"head": np.full((32, 32, 3), 90, np.uint8)},
               "state": np.asarray(reference.metadata["normalization"]["state"]["mean"], np.float32),
               "instruction": "push the blue block to the target"}
        with PolicyClient(endpoint, timeout_s=10.0) as client:
            assert client.metadata()["model"] == reference.metadata["model"]
            got = client.infer(obs, seed=77).actions
        want = reference.infer(obs, noise=np.random.default_rng(77).standard_normal((8, 14)).astype(np.float32))
        np.testing.assert_allclose(got, want, atol=1e-5)
    finally:
        server.close()


def _tensorrt_skip_reason() -> str | None:
    ok, why = backends.tensorrt_available()
    return None if ok else why


@pytest.mark.gpu
@pytest.mark.skipif(_tensorrt_skip_reason() is not None, reason=f"TensorRT tests need TensorRT and a CUDA GPU: {_tensorrt_skip_reason()}")
def test_tensorrt_engines_pass_the_gate_and_are_cached(exported: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, out = exported
    copy = tmp_path / "engines"
    shutil.copytree(out, copy)
    manifest = export.export(ckpt, copy, max_batch=4, tensorrt=True, precision="fp16")
    entry = manifest["tensorrt"][0]
    assert entry["passed"] and entry["gpu"] == torch.cuda.get_device_name() and entry["precision"] == "fp16"
    again = export.export(ckpt, copy, max_batch=4, tensorrt=True, precision="fp16")
    assert again["tensorrt"][0]["build_s"] == entry["build_s"]  # reused, not rebuilt
    assert backends.select_backend(ckpt, "auto", "cuda", copy).backend == "tensorrt"


# ----------------------------------------------------------------------------- reduced precision


def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value the graph declares (inputs, outputs, initializers, inferred values)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.input,
                                                          *inferred.graph.output]}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


def _op_input_types(model: onnx.ModelProto, op: str) -> set[int]:
    types = _tensor_types(model)
    return {types[n.input[0]] for n in model.graph.node if n.op_type == op and n.input[0] in types}


def _matmuls_by_type(model: onnx.ModelProto) -> dict[int, list[str]]:
    types = _tensor_types(model)
    out: dict[int, list[str]] = {}
    for n in model.graph.node:
        if n.op_type in ("MatMul", "Gemm"):
            out.setdefault(types.get(n.input[0], 0), []).append(n.name)
    return out


def _assert_reduced_matmuls(model: onnx.ModelProto, low: int) -> None:
    """Every matmul in the low precision, except the flow-time embedding's, which stays float32 by design."""
    by_type = _matmuls_by_type(model)
    assert set(by_type) <= {low, onnx.TensorProto.FLOAT} and len(by_type.get(low, [])) > 0, by_type
    assert all("time_embed" in name for name in by_type.get(onnx.TensorProto.FLOAT, [])), by_type


@pytest.fixture(scope="module")
def exported_fp16(exported: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    ckpt, out = exported
    copy = tmp_path_factory.mktemp("fp16") / "engines"
    shutil.copytree(out, copy)  # the fp32 graphs are reused (same checkpoint): only the fp16 ones are exported
    manifest = export.export(ckpt, copy, max_batch=4, precision="fp16", exporter="torchscript")
    return ckpt, copy, manifest


def test_fp16_graphs_carry_their_precision_and_pass_the_gate_in_onnxruntime(exported_fp16) -> None:
    """What TensorRT (strongly typed) receives: fp16 matmuls, fp32 norms and softmax, float32 in and out,
    checked against PyTorch float32 in ONNX Runtime before any TensorRT build."""
    ckpt, out, manifest = exported_fp16
    entry = manifest["graphs"]["fp16"]
    assert entry["features"] == "features.fp16.onnx" and entry["sampler"] == "sampler.fp16.onnx"
    assert entry["passed"] and entry["checked_in"] == "onnxruntime-cpu"
    assert {r["graph"] for r in entry["parity"]} == {"features", "sampler", "policy", "displacement"}
    assert all(r["cosine"] >= graphs.COSINE_GATE for r in entry["parity"])
    F16, F32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    for name in (entry["features"], entry["sampler"]):
        model = onnx.load(str(out / name))
        assert all(i.type.tensor_type.elem_type in (F32, onnx.TensorProto.INT64) for i in model.graph.input)
        assert all(o.type.tensor_type.elem_type == F32 for o in model.graph.output)
        _assert_reduced_matmuls(model, F16)
        assert _op_input_types(model, "LayerNormalization") == {F32}, name
        assert _op_input_types(model, "Softmax") == {F32}, name
    # the fp16 graphs serve too, and agree with the float32 ones
    policy = Policy.from_checkpoint(ckpt)
    reference = Policy.from_checkpoint(ckpt)
    policy.engine = OnnxRuntimeEngine(out / entry["features"], out / entry["sampler"])
    obs = {"images": {"head": np.full((32, 32, 3), 120, np.uint8)},
           "state": np.asarray(policy.metadata["normalization"]["state"]["mean"], np.float32),
           "instruction": "pick up the red block"}
    noise = np.random.default_rng(3).standard_normal((8, 14)).astype(np.float32)
    want, got = reference.infer(obs, noise=noise), policy.infer(obs, noise=noise)
    cosine, _ = graphs.compare(want - want.mean(), got - want.mean())
    assert cosine >= graphs.COSINE_GATE


def test_bf16_graphs_are_checked_where_onnxruntime_cannot_run_them(exported_fp16) -> None:
    ckpt, out, _ = exported_fp16
    manifest = export.export(ckpt, out, max_batch=4, precision="bf16", exporter="torchscript")
    entry = manifest["graphs"]["bf16"]
    assert entry["passed"] and entry["checked_in"].startswith("torch-bf16")
    assert manifest["graphs"]["fp16"]["passed"]  # earlier precisions are kept
    model = onnx.load(str(out / entry["sampler"]))
    _assert_reduced_matmuls(model, onnx.TensorProto.BFLOAT16)
    assert _op_input_types(model, "LayerNormalization") == {onnx.TensorProto.FLOAT}


def test_tensorrt_build_uses_no_weak_typing_api() -> None:
    """TensorRT 11 removed every precision builder flag and the per-layer precision hints; none may appear."""
    import ast

    tree = ast.parse(Path(tensorrt_engine.__file__).read_text())
    removed = {"FP16", "BF16", "FP8", "INT8", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS",
               "DIRECT_IO"}
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Attribute) and n.value.attr == "BuilderFlag"}
    assert not used & removed, used & removed
    setters = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in ("set_output_type", "precision")}
    assert not setters, setters
    assert "STRONGLY_TYPED" in Path(tensorrt_engine.__file__).read_text()


def test_fp8_is_not_offered(exported: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, _ = exported
    proc = subprocess.run([sys.executable, "-m", "dit4dit.policy.export", "--ckpt", str(ckpt), "--out", str(tmp_path),
                           "--precision", "fp8"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "invalid choice: 'fp8'" in proc.stderr


def test_compiled_backend_is_not_offered_on_cpu(exported: tuple[Path, Path]) -> None:
    ckpt, out = exported
    with pytest.raises(backends.BackendError, match="measured it slower than ONNX Runtime"):
        backends.select_backend(ckpt, "compiled", "cpu", out)
    assert backends.select_backend(ckpt, "auto", "cpu", None).backend == "torch"


@pytest.mark.slow
def test_compiled_engine_passes_the_parity_gate(exported: tuple[Path, Path]) -> None:
    """The same CompiledEngine the server uses on CUDA (there with bf16 and CUDA graphs), here float32 on CPU:
    inductor really compiles both graphs (C++ code generation) and the gate compares it with eager."""
    from dit4dit.policy.compiled_engine import CompiledEngine

    ckpt, _ = exported
    model = Policy.from_checkpoint(ckpt).model
    engine = CompiledEngine(model, "cpu")
    assert engine.name == "compiled-fp32"
    reports = graphs.engine_parity(engine, model, batch=1)
    assert all(r.passed for r in reports), [r.line() for r in reports]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bf16 + CUDA graphs)")
def test_compiled_bf16_cuda_graphs_pass_the_gate_and_auto_picks_them(exported: tuple[Path, Path]) -> None:
    ok, why = backends.compiled_available()
    if not ok:
        pytest.skip(why)
    ckpt, _ = exported
    policy, choice = backends.load_policy(ckpt, "auto", "cuda", None)
    assert choice.backend == "compiled" and policy.engine.name == "compiled-bf16-cudagraphs", choice
