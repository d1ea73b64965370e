"""Inference backends behind one interface (policy.inference.InferenceEngine), and how the server picks one.

    torch        policy.inference.TorchEngine (the reference; eager PyTorch on cpu or cuda)
    onnxruntime  OnnxRuntimeEngine: the two ONNX graphs written by dit4dit-export (CPU, or the CUDA provider)
    tensorrt     TensorRTEngine: the TensorRT engines built from those graphs (CUDA only)

Selection rule (`select_backend`, backend="auto"):
    1. on cuda: TensorRT, if TensorRT imports and --engines holds an engine whose build key matches this
       checkpoint's sha256, this TensorRT version, this GPU's name (and passed the parity gate);
    2. on cuda otherwise: torch;
    3. on cpu: onnxruntime, if --engines holds ONNX graphs exported from this checkpoint that passed the
       parity gate (ONNX Runtime is several times faster than eager PyTorch for these small graphs on CPU);
    4. on cpu otherwise: torch.
An explicit --backend is honoured or refused with the reason (never silently replaced).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .export import (FEATURE_INPUTS, FEATURES_ONNX, SAMPLER_INPUTS, SAMPLER_ONNX, checkpoint_sha256, engine_parity,
                     read_manifest, write_manifest)

log = logging.getLogger("dit4dit.backends")

BACKENDS = ("auto", "tensorrt", "torch", "onnxruntime")


class BackendError(RuntimeError):
    """The requested backend cannot run here; the message says why and what to do."""


@dataclass(frozen=True)
class BackendChoice:
    backend: str
    device: str
    reason: str


# ---------------------------------------------------------------------------------- ONNX Runtime


class OnnxRuntimeEngine:
    """Runs features.onnx and sampler.onnx in ONNX Runtime (CPUExecutionProvider, or CUDA when asked and present)."""

    name = "onnxruntime"

    def __init__(self, features_path: str | Path, sampler_path: str | Path, device: str = "cpu",
                 threads: int | None = None) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        if device == "cuda":
            if "CUDAExecutionProvider" not in available:
                raise BackendError(f"onnxruntime on cuda needs the CUDAExecutionProvider (pip install onnxruntime-gpu); "
                                   f"this onnxruntime has {available}")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self.providers = providers
        self._features = ort.InferenceSession(str(features_path), options, providers=providers)
        self._sampler = ort.InferenceSession(str(sampler_path), options, providers=providers)
        self.name = "onnxruntime" if device == "cpu" else "onnxruntime-cuda"

    def features(self, frames: np.ndarray, text_tokens: np.ndarray) -> np.ndarray:
        feeds = {"frames": np.ascontiguousarray(frames, np.float32), "text_tokens": np.ascontiguousarray(text_tokens, np.int64)}
        return self._features.run(None, feeds)[0]

    def sample(self, features: np.ndarray, state: np.ndarray, noise: np.ndarray, prefix: np.ndarray,
               prefix_weight: np.ndarray) -> np.ndarray:
        arrays = (features, state, noise, prefix, prefix_weight)
        feeds = {n: np.ascontiguousarray(a, np.float32) for n, a in zip(SAMPLER_INPUTS, arrays)}
        return self._sampler.run(None, feeds)[0]


# -------------------------------------------------------------------------------------- TensorRT


def tensorrt_available() -> tuple[bool, str]:
    """(usable, reason when not)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False, "TensorRT is not installed (pip install tensorrt, on a machine with an NVIDIA GPU)"
    if not torch.cuda.is_available():
        return False, "no CUDA GPU is visible"
    return True, ""


def tensorrt_build_key(checkpoint_sha: str, precision: str, max_batch: int) -> tuple[str, dict[str, str]]:
    """The cache key of a TensorRT build: checkpoint, TensorRT version, GPU name, precision, max batch."""
    import tensorrt as trt

    facts = {"checkpoint_sha256": checkpoint_sha, "tensorrt_version": trt.__version__,
             "gpu": torch.cuda.get_device_name(), "precision": precision, "max_batch": str(max_batch)}
    key = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]
    return key, facts


def _build_plan(onnx_path: Path, plan_path: Path, precision: str, max_batch: int,
                shapes: dict[str, list[int]], input_names: tuple[str, ...]) -> None:
    """Build one serialized engine with TensorRT's Python builder API (TensorRT 10)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 8 << 30)
    if precision in ("fp16", "fp8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    if precision == "fp8":
        major, minor = torch.cuda.get_device_capability()
        if (major, minor) < (8, 9):
            raise BackendError(f"fp8 needs compute capability >= 8.9 (Ada/Hopper); {torch.cuda.get_device_name()} "
                               f"is {major}.{minor}; use --precision fp16 or bf16")
        config.set_flag(trt.BuilderFlag.FP8)  # TensorRT uses FP8 where the graph has Q/DQ nodes
    if precision in ("fp16", "bf16", "fp8"):
        # Layer norms over wide rows overflow or drift in half precision (TensorRT warns about exactly this);
        # pin them to float32 so the parity gate holds, and let everything else run in the lower precision.
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.type == trt.LayerType.NORMALIZATION:
                layer.precision = trt.float32
                for j in range(layer.num_outputs):
                    layer.set_output_type(j, trt.float32)
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    profile = builder.create_optimization_profile()
    for name in input_names:
        rest = tuple(shapes[name])
        profile.set_shape(name, (1, *rest), (1, *rest), (max_batch, *rest))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    plan_path.write_bytes(bytes(serialized))


def build_tensorrt_engines(engines_dir: Path, manifest: dict[str, Any], model: Any, precision: str = "fp16") -> dict[str, Any]:
    """Build (or reuse from the cache) the TensorRT engines of the exported graphs, then gate them."""
    ok, why = tensorrt_available()
    if not ok:
        raise BackendError(f"cannot build TensorRT engines: {why}")
    if not manifest.get("onnx"):
        raise BackendError(f"{engines_dir} holds no ONNX graphs that passed the parity gate; run dit4dit-export first")
    max_batch = int(manifest["max_batch"])
    key, facts = tensorrt_build_key(manifest["checkpoint_sha256"], precision, max_batch)
    folder = engines_dir / "tensorrt" / key
    info_path = folder / "build.json"
    if info_path.is_file():
        print(f"TensorRT engines {key} already built for {facts['gpu']}, TensorRT {facts['tensorrt_version']}: reused")
        return json.loads(info_path.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    _build_plan(engines_dir / FEATURES_ONNX, folder / "features.plan", precision, max_batch, manifest["shapes"], FEATURE_INPUTS)
    _build_plan(engines_dir / SAMPLER_ONNX, folder / "sampler.plan", precision, max_batch, manifest["shapes"], SAMPLER_INPUTS)
    build_s = time.perf_counter() - t0
    engine = TensorRTEngine(folder / "features.plan", folder / "sampler.plan", manifest["shapes"], max_batch)
    reports = engine_parity(engine, model.to("cuda"), batch=1)
    for r in reports:
        print("parity " + r.line(), flush=True)
    entry = {"key": key, **facts, "build_s": build_s, "folder": f"tensorrt/{key}",
             "parity": [r.__dict__ for r in reports], "passed": all(r.passed for r in reports)}
    info_path.write_text(json.dumps(entry, indent=2))
    if not entry["passed"]:
        log.error("TensorRT %s engines failed the parity gate; the server will not pick them", precision)
    return entry


class TensorRTEngine:
    """Runs the two TensorRT engines on one CUDA stream with preallocated device buffers.

    The action sampler's whole Euler loop is inside its engine, so there is no host round trip and no
    synchronisation between denoising steps. For batch 1 (a robot's normal request) the engine launch is
    captured once in a CUDA graph and replayed; each call does: copy inputs host->device into fixed buffers,
    replay, copy the output device->host into a fixed pinned buffer, one stream synchronisation.
    """

    name = "tensorrt"

    def __init__(self, features_plan: str | Path, sampler_plan: str | Path, shapes: dict[str, list[int]],
                 max_batch: int = 1, cuda_graphs: bool = True) -> None:
        import tensorrt as trt

        self._trt = trt
        self.max_batch = max_batch
        self.device = torch.device("cuda")
        self.stream = torch.cuda.Stream()
        logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(logger)
        self._graphs: dict[tuple[str, int], torch.cuda.CUDAGraph] = {}
        self._cuda_graphs = cuda_graphs
        self._parts: dict[str, dict[str, Any]] = {}
        for part, plan, inputs, output in (("features", features_plan, FEATURE_INPUTS, "features"),
                                           ("sampler", sampler_plan, SAMPLER_INPUTS, "actions")):
            engine = self._runtime.deserialize_cuda_engine(Path(plan).read_bytes())
            if engine is None:
                raise BackendError(f"TensorRT could not load {plan} (built by another TensorRT version or GPU?)")
            context = engine.create_execution_context()
            buffers = {}
            for name in (*inputs, output):
                dtype = torch.int64 if name == "text_tokens" else torch.float32
                buffers[name] = torch.empty((max_batch, *shapes[name]), dtype=dtype, device=self.device)
            self._parts[part] = {"engine": engine, "context": context, "inputs": inputs, "output": output,
                                 "buffers": buffers, "bound_batch": None,
                                 "host_out": torch.empty((max_batch, *shapes[output]), dtype=torch.float32).pin_memory()}

    def _bind(self, part: str, batch: int) -> None:
        p = self._parts[part]
        if p["bound_batch"] == batch:
            return
        ctx = p["context"]
        for name in p["inputs"]:
            view = p["buffers"][name][:batch]
            ctx.set_input_shape(name, tuple(view.shape))
            ctx.set_tensor_address(name, view.data_ptr())
        ctx.set_tensor_address(p["output"], p["buffers"][p["output"]][:batch].data_ptr())
        p["bound_batch"] = batch

    def _launch(self, part: str, batch: int) -> None:
        p = self._parts[part]
        self._bind(part, batch)
        key = (part, batch)
        if self._cuda_graphs and batch == 1:
            graph = self._graphs.get(key)
            if graph is None:
                # TensorRT needs one plain enqueue before capture (it flushes deferred shape work).
                p["context"].execute_async_v3(self.stream.cuda_stream)
                self.stream.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=self.stream):
                    p["context"].execute_async_v3(self.stream.cuda_stream)
                self._graphs[key] = graph
            graph.replay()
        elif not p["context"].execute_async_v3(self.stream.cuda_stream):
            raise BackendError(f"TensorRT {part} engine failed to enqueue")

    def _run(self, part: str, arrays: dict[str, np.ndarray]) -> np.ndarray:
        p = self._parts[part]
        batch = next(iter(arrays.values())).shape[0]
        if batch > self.max_batch:
            raise BackendError(f"batch {batch} exceeds the engine's max batch {self.max_batch}; rebuild with --max-batch")
        with torch.cuda.stream(self.stream):
            for name, array in arrays.items():
                p["buffers"][name][:batch].copy_(torch.from_numpy(np.ascontiguousarray(array)), non_blocking=False)
            self._launch(part, batch)
            out = p["host_out"][:batch]
            out.copy_(p["buffers"][p["output"]][:batch], non_blocking=True)
        self.stream.synchronize()
        return out.numpy().copy()

    def features(self, frames: np.ndarray, text_tokens: np.ndarray) -> np.ndarray:
        return self._run("features", {"frames": frames.astype(np.float32, copy=False),
                                      "text_tokens": text_tokens.astype(np.int64, copy=False)})

    def sample(self, features: np.ndarray, state: np.ndarray, noise: np.ndarray, prefix: np.ndarray,
               prefix_weight: np.ndarray) -> np.ndarray:
        arrays = dict(zip(SAMPLER_INPUTS, (features, state, noise, prefix, prefix_weight)))
        return self._run("sampler", {k: v.astype(np.float32, copy=False) for k, v in arrays.items()})


# -------------------------------------------------------------------------------------- selection


def _onnx_ready(engines_dir: Path | None, sha: str) -> tuple[dict[str, Any] | None, str]:
    if engines_dir is None:
        return None, "no --engines folder given"
    manifest = read_manifest(engines_dir)
    if manifest is None:
        return None, f"{engines_dir} has no manifest.json (run dit4dit-export)"
    if manifest.get("checkpoint_sha256") != sha:
        return None, f"the graphs in {engines_dir} were exported from another checkpoint (sha256 differs)"
    if not manifest.get("onnx"):
        return None, f"the graphs in {engines_dir} failed the parity gate"
    return manifest, "ok"


def _tensorrt_ready(engines_dir: Path | None, sha: str) -> tuple[dict[str, Any] | None, str]:
    ok, why = tensorrt_available()
    if not ok:
        return None, why
    manifest, why = _onnx_ready(engines_dir, sha)
    if manifest is None:
        return None, why
    import tensorrt as trt

    gpu = torch.cuda.get_device_name()
    for entry in manifest.get("tensorrt", []):
        if entry.get("checkpoint_sha256") == sha and entry.get("tensorrt_version") == trt.__version__ \
                and entry.get("gpu") == gpu and entry.get("passed"):
            return entry, "ok"
    return None, f"no TensorRT engine in {engines_dir} built for this checkpoint with TensorRT {trt.__version__} on {gpu}"


def select_backend(ckpt: str | Path, backend: str = "auto", device: str | None = None,
                   engines_dir: str | Path | None = None) -> BackendChoice:
    """Apply the selection rule (module docstring) without loading anything heavy."""
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendError("--device cuda, but PyTorch sees no CUDA GPU; use --device cpu")
    engines = Path(engines_dir) if engines_dir is not None else None
    sha = checkpoint_sha256(ckpt)
    if backend == "torch":
        return BackendChoice("torch", device, "requested")
    if backend == "tensorrt":
        if device != "cuda":
            raise BackendError("the tensorrt backend needs --device cuda")
        entry, why = _tensorrt_ready(engines, sha)
        if entry is None:
            raise BackendError(f"--backend tensorrt: {why}; build with `dit4dit-export --ckpt {ckpt} --out DIR --tensorrt yes`")
        return BackendChoice("tensorrt", device, f"requested; engine {entry['key']} ({entry['precision']})")
    if backend == "onnxruntime":
        manifest, why = _onnx_ready(engines, sha)
        return BackendChoice("onnxruntime", device, "requested" + ("" if manifest else f"; exporting now ({why})"))
    # auto
    if device == "cuda":
        entry, why = _tensorrt_ready(engines, sha)
        if entry is not None:
            return BackendChoice("tensorrt", device, f"auto: matching engine {entry['key']} ({entry['precision']})")
        return BackendChoice("torch", device, f"auto: no TensorRT engine ({why})")
    manifest, why = _onnx_ready(engines, sha)
    if manifest is not None:
        return BackendChoice("onnxruntime", device, f"auto: ONNX graphs in {engines} match the checkpoint and passed parity")
    return BackendChoice("torch", device, f"auto: no ONNX graphs ({why})")


def make_engine(choice: BackendChoice, ckpt: str | Path, policy: Any, engines_dir: str | Path | None) -> Any:
    """The engine for `choice` (the torch engine is the one the Policy already has)."""
    if choice.backend == "torch":
        return policy.engine
    engines = Path(engines_dir) if engines_dir is not None else _default_engines_dir(ckpt)
    sha = checkpoint_sha256(ckpt)
    manifest, _ = _onnx_ready(engines, sha)
    if manifest is None:
        from .export import export

        manifest = export(ckpt, engines, tensorrt=False)
    if choice.backend == "onnxruntime":
        return OnnxRuntimeEngine(engines / manifest["onnx"]["features"], engines / manifest["onnx"]["sampler"], device=choice.device)
    entry, why = _tensorrt_ready(engines, sha)
    if entry is None:
        raise BackendError(why)
    folder = engines / entry["folder"]
    return TensorRTEngine(folder / "features.plan", folder / "sampler.plan", manifest["shapes"], int(manifest["max_batch"]))


def _default_engines_dir(ckpt: str | Path) -> Path:
    """Next to the checkpoint: g1.pt -> g1.engines/ (so an on-demand export is found again next start)."""
    ckpt = Path(ckpt)
    return ckpt.with_name(ckpt.stem + ".engines")


def load_policy(ckpt: str | Path, backend: str = "auto", device: str | None = None,
                engines_dir: str | Path | None = None) -> tuple[Any, BackendChoice]:
    """Policy.from_checkpoint with the engine chosen by the selection rule."""
    from .inference import Policy

    choice = select_backend(ckpt, backend, device, engines_dir)
    policy = Policy.from_checkpoint(ckpt, device=choice.device if choice.backend == "torch" else "cpu")
    policy.engine = make_engine(choice, ckpt, policy, engines_dir)
    return policy, choice


__all__ = ["BACKENDS", "BackendChoice", "BackendError", "OnnxRuntimeEngine", "TensorRTEngine", "build_tensorrt_engines",
           "load_policy", "make_engine", "select_backend", "tensorrt_available", "write_manifest"]
