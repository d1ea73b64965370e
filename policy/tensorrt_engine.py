"""TensorRT: strongly typed engines built from the exported ONNX graphs, and the engine that runs them.

Works on TensorRT 10.12+ and 11.x. TensorRT 11 removed weak typing (BuilderFlag.FP16/BF16/FP8/INT8 and the
precision-constraint flags; NVIDIA's "Migrating from TensorRT 10.x to 11.x"), so no builder flag chooses a
precision here: the network is created strongly typed (required on 10.x for the same behaviour, accepted and
ignored on 11.x) and each layer runs in the type the ONNX graph gives it. `dit4dit-export --precision fp16`
writes graphs whose matmuls are fp16 and whose norms, softmax and flow-time embedding are fp32
(policy.model.to_reduced_precision); those graphs passed the parity gate in ONNX Runtime before they get here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .graphs import FEATURE_INPUTS, SAMPLER_INPUTS, BackendError, engine_parity

log = logging.getLogger("dit4dit.tensorrt")

MIN_VERSION = (10, 12)  # strong typing of bf16/fp16 ONNX graphs as this module uses it; weak typing deprecated here


def tensorrt_available() -> tuple[bool, str]:
    """(usable, reason when not)."""
    try:
        import tensorrt as trt
    except ImportError:
        return False, "TensorRT is not installed (pip install 'dit4dit[tensorrt]', on a machine with an NVIDIA GPU)"
    version = tuple(int(p) for p in trt.__version__.split(".")[:2] if p.isdigit())
    if version < MIN_VERSION:
        return False, f"TensorRT {trt.__version__} is older than {'.'.join(map(str, MIN_VERSION))} (strongly typed builds)"
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


def strongly_typed_network(builder: Any) -> Any:
    """A strongly typed network definition on TensorRT 10.x and 11.x (where every network is)."""
    import tensorrt as trt

    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return builder.create_network(0 if flag is None else 1 << int(flag))


def build_plan(onnx_path: Path, plan_path: Path, max_batch: int, shapes: dict[str, list[int]],
               input_names: tuple[str, ...]) -> None:
    """Build one serialized engine; the precision of every layer is the ONNX graph's."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = strongly_typed_network(builder)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 8 << 30)
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
    """Build (or reuse from the cache) TensorRT engines from the exported graphs of `precision`, then gate them."""
    ok, why = tensorrt_available()
    if not ok:
        raise BackendError(f"cannot build TensorRT engines: {why}")
    graphs = (manifest.get("graphs") or {}).get(precision)
    if not graphs or not graphs.get("passed"):
        raise BackendError(f"{engines_dir} holds no {precision} ONNX graphs that passed the parity gate; "
                           f"run dit4dit-export --precision {precision} first")
    max_batch = int(manifest["max_batch"])
    key, facts = tensorrt_build_key(manifest["checkpoint_sha256"], precision, max_batch)
    folder = engines_dir / "tensorrt" / key
    info_path = folder / "build.json"
    if info_path.is_file():
        print(f"TensorRT engines {key} already built for {facts['gpu']}, TensorRT {facts['tensorrt_version']}: reused")
        return json.loads(info_path.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    build_plan(engines_dir / graphs["features"], folder / "features.plan", max_batch, manifest["shapes"], FEATURE_INPUTS)
    build_plan(engines_dir / graphs["sampler"], folder / "sampler.plan", max_batch, manifest["shapes"], SAMPLER_INPUTS)
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
                dtype = torch.from_numpy(np.empty(0, trt.nptype(engine.get_tensor_dtype(name)))).dtype
                buffers[name] = torch.empty((max_batch, *shapes[name]), dtype=dtype, device=self.device)
            out_dtype = buffers[output].dtype
            self._parts[part] = {"engine": engine, "context": context, "inputs": inputs, "output": output,
                                 "buffers": buffers, "bound_batch": None,
                                 "host_out": torch.empty((max_batch, *shapes[output]), dtype=out_dtype).pin_memory()}

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
                buffer = p["buffers"][name][:batch]
                buffer.copy_(torch.from_numpy(np.ascontiguousarray(array)).to(buffer.dtype), non_blocking=False)
            self._launch(part, batch)
            out = p["host_out"][:batch]
            out.copy_(p["buffers"][p["output"]][:batch], non_blocking=True)
        self.stream.synchronize()
        return out.float().numpy().copy()

    def features(self, frames: np.ndarray, text_tokens: np.ndarray) -> np.ndarray:
        return self._run("features", {"frames": frames.astype(np.float32, copy=False),
                                      "text_tokens": text_tokens.astype(np.int64, copy=False)})

    def sample(self, features: np.ndarray, state: np.ndarray, noise: np.ndarray, prefix: np.ndarray,
               prefix_weight: np.ndarray) -> np.ndarray:
        arrays = dict(zip(SAMPLER_INPUTS, (features, state, noise, prefix, prefix_weight)))
        return self._run("sampler", {k: v.astype(np.float32, copy=False) for k, v in arrays.items()})
