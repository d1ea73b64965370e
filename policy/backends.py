"""Which inference engine serves a checkpoint, and loading it (policy.inference.InferenceEngine interface).

    torch        policy.inference.TorchEngine: eager PyTorch float32 on cpu or cuda (the reference)
    compiled     policy.compiled_engine.CompiledEngine: torch.compile + CUDA graphs + bf16 (cuda)
    onnxruntime  policy.onnxruntime_engine.OnnxRuntimeEngine: the graphs written by dit4dit-export (cpu, or
                 the CUDA provider)
    tensorrt     policy.tensorrt_engine.TensorRTEngine: strongly typed engines built from those graphs (cuda)

Selection rule (`select_backend`, backend="auto"):
    1. on cuda: TensorRT, if TensorRT imports and --engines holds an engine that passed the parity gate and
       whose build key matches this checkpoint's sha256, this TensorRT version and this GPU's name;
    2. on cuda otherwise: compiled, if torch.compile can target this GPU (Triton imports); it must pass the
       parity gate at start, or the server falls back to torch and says why;
    3. on cuda otherwise: torch;
    4. on cpu: onnxruntime, if --engines holds float32 graphs exported from this checkpoint that passed the
       gate (ONNX Runtime is several times faster than eager PyTorch for these small graphs on CPU);
    5. on cpu otherwise: torch.
`compiled` is not offered on cpu: bench/bench_backends.py measured inductor slower than ONNX Runtime there
(bench/RESULTS.md). An explicit --backend is honoured or refused with the reason (never silently replaced).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .export import export
from .graphs import BackendError, checkpoint_sha256, engine_parity, read_manifest
from .onnxruntime_engine import OnnxRuntimeEngine
from .tensorrt_engine import TensorRTEngine, tensorrt_available

log = logging.getLogger("dit4dit.backends")

BACKENDS = ("auto", "tensorrt", "compiled", "torch", "onnxruntime")
COMPILED_ON_CPU = ("torch.compile is not offered on cpu: bench/bench_backends.py measured it slower than ONNX Runtime "
                   "there (small preset, 2 cores: 68.5 ms against 53.4 ms; bench/RESULTS.md); use --backend onnxruntime")


@dataclass(frozen=True)
class BackendChoice:
    backend: str
    device: str
    reason: str


def compiled_available() -> tuple[bool, str]:
    """(torch.compile with CUDA graphs can run here, reason when not)."""
    if not torch.cuda.is_available():
        return False, "no CUDA GPU is visible"
    try:
        import triton  # noqa: F401 - inductor's GPU code generator
    except ImportError:
        return False, "Triton is not installed (inductor needs it to compile for the GPU)"
    return True, ""


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
    if backend == "compiled":
        if device != "cuda":
            raise BackendError(COMPILED_ON_CPU)
        ok, why = compiled_available()
        if not ok:
            raise BackendError(f"--backend compiled: {why}")
        return BackendChoice("compiled", device, "requested")
    if backend == "onnxruntime":
        manifest, why = _onnx_ready(engines, sha)
        return BackendChoice("onnxruntime", device, "requested" + ("" if manifest else f"; exporting now ({why})"))
    # auto
    if device == "cuda":
        entry, why = _tensorrt_ready(engines, sha)
        if entry is not None:
            return BackendChoice("tensorrt", device, f"auto: matching engine {entry['key']} ({entry['precision']})")
        ok, why_not_compiled = compiled_available()
        if ok:
            return BackendChoice("compiled", device, f"auto: no TensorRT engine ({why})")
        return BackendChoice("torch", device, f"auto: no TensorRT engine ({why}); not compiled ({why_not_compiled})")
    manifest, why = _onnx_ready(engines, sha)
    if manifest is not None:
        return BackendChoice("onnxruntime", device, f"auto: ONNX graphs in {engines} match the checkpoint and passed parity")
    return BackendChoice("torch", device, f"auto: no ONNX graphs ({why})")


def gated_compiled_engine(model: Any, device: str) -> Any:
    """A CompiledEngine for `model` that passed the parity gate against `model` itself (eager fp32)."""
    from .compiled_engine import CompiledEngine

    engine = CompiledEngine(model, device)
    reports = engine_parity(engine, model, batch=1)
    for r in reports:
        log.info("parity %s", r.line())
    failed = [r.line() for r in reports if not r.passed]
    if failed:
        raise BackendError(f"the compiled engine failed the parity gate: {'; '.join(failed)}")
    return engine


def make_engine(choice: BackendChoice, ckpt: str | Path, policy: Any, engines_dir: str | Path | None,
                threads: int | None = None) -> Any:
    """The engine for `choice` (the torch engine is the one the Policy already has); threads: ONNX Runtime's
    intra-op threads on cpu (default: its own choice)."""
    if choice.backend == "torch":
        return policy.engine
    if choice.backend == "compiled":
        return gated_compiled_engine(policy.model, choice.device)
    engines = Path(engines_dir) if engines_dir is not None else _default_engines_dir(ckpt)
    sha = checkpoint_sha256(ckpt)
    manifest, _ = _onnx_ready(engines, sha)
    if manifest is None:
        manifest = export(ckpt, engines, tensorrt=False)
    if choice.backend == "onnxruntime":
        return OnnxRuntimeEngine(engines / manifest["onnx"]["features"], engines / manifest["onnx"]["sampler"],
                                 device=choice.device, threads=threads if choice.device == "cpu" else None)
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
                engines_dir: str | Path | None = None, threads: int | None = None) -> tuple[Any, BackendChoice]:
    """Policy.from_checkpoint with the engine chosen by the selection rule. Under auto, a compiled engine that
    fails to build or to pass the gate falls back to torch, and the choice's reason says so."""
    from .inference import Policy

    choice = select_backend(ckpt, backend, device, engines_dir)
    on_device = choice.backend in ("torch", "compiled")
    policy = Policy.from_checkpoint(ckpt, device=choice.device if on_device else "cpu")
    try:
        policy.engine = make_engine(choice, ckpt, policy, engines_dir, threads)
    except Exception as exc:  # noqa: BLE001 - inductor and Triton raise many kinds
        if backend != "auto" or choice.backend != "compiled":
            raise
        log.warning("compiled engine unusable (%s: %s); serving eager torch", type(exc).__name__, exc)
        choice = BackendChoice("torch", choice.device, f"{choice.reason}; compiled failed ({type(exc).__name__}: {exc})")
    return policy, choice


__all__ = ["BACKENDS", "BackendChoice", "BackendError", "OnnxRuntimeEngine", "TensorRTEngine", "compiled_available",
           "gated_compiled_engine", "load_policy", "make_engine", "select_backend", "tensorrt_available"]
