"""dit4dit-export: the policy's two inference graphs to ONNX, a parity gate, and TensorRT engines.

    dit4dit-export --ckpt g1.pt --out engines/ [--max-batch 8] [--tensorrt] [--precision fp16|bf16|fp8|fp32]

Writes into --out:
    features.onnx   FeatureNet: frames (B,T,3,H,W) float32, text_tokens (B,L) int64 -> features (B,N,D)
    sampler.onnx    ActionSampler, the whole fixed-step Euler loop unrolled in one graph:
                    features, state (B,S), noise (B,H,A), prefix (B,H,A), prefix_weight (B,H) -> actions (B,H,A)
    manifest.json   checkpoint sha256, shapes, exporter, parity report, TensorRT builds
    tensorrt/<key>/ features.plan, sampler.plan, build.json (key = hash of checkpoint, TensorRT version, GPU,
                    precision, max batch: a build is reused only when all of them match)

Parity gate: with fixed inputs and noise, each ONNX graph (in ONNX Runtime, float32) and each TensorRT engine is
compared with PyTorch float32; cosine similarity must be >= 0.999, max abs error is reported. A graph that
fails the gate is not registered in the manifest, so the server never picks it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import load_checkpoint
from .model import ActionSampler, DiT4DiT, DiT4DiTConfig, FeatureNet

log = logging.getLogger("dit4dit.export")

MANIFEST = "manifest.json"
FEATURES_ONNX = "features.onnx"
SAMPLER_ONNX = "sampler.onnx"
FEATURE_INPUTS = ("frames", "text_tokens")
SAMPLER_INPUTS = ("features", "state", "noise", "prefix", "prefix_weight")
COSINE_GATE = 0.999
OPSET = 18


class ParityError(RuntimeError):
    """A compiled graph disagrees with PyTorch beyond the gate."""


@dataclass
class Parity:
    graph: str  # "features", "sampler", "policy" (features -> sampler chained), "displacement"
    backend: str
    cosine: float
    max_abs_error: float
    passed: bool

    def line(self) -> str:
        return (f"{self.graph:<12} {self.backend:<22} cosine {self.cosine:.6f}  max abs err {self.max_abs_error:.3e}  "
                f"{'PASS' if self.passed else 'FAIL'} (gate cosine >= {COSINE_GATE})")


def checkpoint_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def compare(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """(cosine similarity of the flattened arrays, max abs error), both in float64."""
    a = np.asarray(reference, np.float64).ravel()
    b = np.asarray(candidate, np.float64).ravel()
    if a.shape != b.shape:
        raise ParityError(f"shape mismatch: reference {np.shape(reference)} vs candidate {np.shape(candidate)}")
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    cosine = float(a @ b / denom) if denom > 0 else float(np.array_equal(a, b))
    return cosine, float(np.max(np.abs(a - b))) if a.size else 0.0


# ---------------------------------------------------------------------------------------- inputs


def graph_shapes(cfg: DiT4DiTConfig, batch: int) -> dict[str, tuple[int, ...]]:
    """The fixed (per-batch) shapes of every graph input and output."""
    s = cfg.image_size
    return {
        "frames": (batch, cfg.context_frames, 3, s, s),
        "text_tokens": (batch, cfg.max_text_len),
        "features": (batch, cfg.condition_tokens, cfg.condition_width),
        "state": (batch, cfg.state_dim),
        "noise": (batch, cfg.chunk_length, cfg.action_dim),
        "prefix": (batch, cfg.chunk_length, cfg.action_dim),
        "prefix_weight": (batch, cfg.chunk_length),
        "actions": (batch, cfg.chunk_length, cfg.action_dim),
    }


def example_inputs(cfg: DiT4DiTConfig, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs that exercise every path (random frames and words, a frozen prefix and a ramp)."""
    rng = np.random.default_rng(seed)
    shapes = graph_shapes(cfg, batch)
    weight = np.zeros(shapes["prefix_weight"], np.float32)
    frozen = min(3, cfg.chunk_length)
    weight[:, :frozen] = 1.0
    ramp = np.linspace(1.0, 0.0, num=min(4, cfg.chunk_length - frozen) + 2, dtype=np.float32)[1:-1]
    weight[:, frozen : frozen + len(ramp)] = ramp
    return {
        "frames": rng.uniform(-1, 1, shapes["frames"]).astype(np.float32),
        "text_tokens": rng.integers(0, cfg.vocab_size, shapes["text_tokens"]).astype(np.int64),
        "state": rng.standard_normal(shapes["state"]).astype(np.float32),
        "noise": rng.standard_normal(shapes["noise"]).astype(np.float32),
        "prefix": rng.standard_normal(shapes["prefix"]).astype(np.float32),
        "prefix_weight": weight,
    }


@torch.no_grad()
def torch_reference(model: DiT4DiT, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """PyTorch float32 outputs of both graphs on `inputs` (features feed the sampler)."""
    device = next(model.parameters()).device
    t = {k: torch.from_numpy(v).to(device) for k, v in inputs.items()}
    features = FeatureNet(model).eval()(t["frames"], t["text_tokens"])
    actions = ActionSampler(model).eval()(features, t["state"], t["noise"], t["prefix"], t["prefix_weight"])
    return {"features": features.float().cpu().numpy(), "actions": actions.float().cpu().numpy()}


# ------------------------------------------------------------------------------------------ ONNX


EXPORTERS = ("auto", "dynamo", "torchscript")


def _export_one(module: torch.nn.Module, args: tuple[torch.Tensor, ...], names: Sequence[str], output: str,
                path: Path, max_batch: int, exporter: str = "auto") -> str:
    """Export with a dynamic batch dimension. auto: the dynamo exporter (PyTorch's supported path), falling back
    to the TorchScript exporter; that one is ~20x faster on these graphs, so tests may ask for it directly."""
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; choose one of {EXPORTERS}")
    module = module.eval()
    errors = []
    if exporter in ("auto", "dynamo"):
        try:
            batch = torch.export.Dim("batch", min=1, max=max(2, max_batch))
            dynamic = {name: {0: batch} for name in names}
            program = torch.onnx.export(module, args, input_names=list(names), output_names=[output],
                                        dynamic_shapes=dynamic, opset_version=OPSET, dynamo=True, verbose=False)
            program.save(str(path))
            return "dynamo"
        except Exception as exc:  # noqa: BLE001 - any exporter failure: try the other exporter, then report both
            errors.append(f"dynamo: {type(exc).__name__}: {str(exc)[:500]}")
            if exporter == "dynamo":
                raise RuntimeError(f"could not export {path.name} to ONNX: {errors[0]}") from exc
            log.warning("dynamo ONNX export of %s failed (%s); trying the TorchScript exporter", path.name, errors[-1])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its deprecation and tracer warnings are about other models' control flow
            torch.onnx.export(module, args, str(path), input_names=list(names), output_names=[output],
                              dynamic_axes={n: {0: "batch"} for n in [*names, output]}, opset_version=OPSET, dynamo=False)
        return "torchscript"
    except Exception as exc:  # noqa: BLE001
        errors.append(f"torchscript: {type(exc).__name__}: {str(exc)[:500]}")
        raise RuntimeError(f"could not export {path.name} to ONNX: " + " | ".join(errors)) from exc


def export_onnx(model: DiT4DiT, out_dir: Path, max_batch: int = 8, exporter: str = "auto") -> dict[str, str]:
    """Write features.onnx and sampler.onnx; returns {graph: exporter used}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    cpu_model = model.float().cpu().eval()
    ex = {k: torch.from_numpy(v) for k, v in example_inputs(cfg, 2).items()}
    with torch.no_grad():
        ex["features"] = FeatureNet(cpu_model)(ex["frames"], ex["text_tokens"])
    used = {
        "features": _export_one(FeatureNet(cpu_model), (ex["frames"], ex["text_tokens"]), FEATURE_INPUTS, "features",
                                out_dir / FEATURES_ONNX, max_batch, exporter),
        "sampler": _export_one(ActionSampler(cpu_model), tuple(ex[n] for n in SAMPLER_INPUTS), SAMPLER_INPUTS, "actions",
                               out_dir / SAMPLER_ONNX, max_batch, exporter),
    }
    return used


def engine_parity(engine: Any, model: DiT4DiT, batch: int = 1, seed: int = 0) -> list[Parity]:
    """Compare an InferenceEngine with PyTorch float32 on fixed inputs and noise.

    features: the feature graph; sampler: the action graph on PyTorch's features (with a frozen prefix and a
    ramp); policy: both chained; displacement: the sampler without prefix, compared on sigma * noise - actions,
    i.e. only what the network moved the chunk. The raw outputs of a barely trained model are mostly the
    initial noise, so their cosine hides a wrong network; the displacement does not.
    """
    inputs = example_inputs(model.cfg, batch, seed)
    ref = torch_reference(model, inputs)
    features = engine.features(inputs["frames"], inputs["text_tokens"])
    sampled = engine.sample(ref["features"], inputs["state"], inputs["noise"], inputs["prefix"], inputs["prefix_weight"])
    chained = engine.sample(features, inputs["state"], inputs["noise"], inputs["prefix"], inputs["prefix_weight"])
    free = dict(inputs, prefix_weight=np.zeros_like(inputs["prefix_weight"]))
    ref_free = torch_reference(model, free)["actions"]
    got_free = engine.sample(ref["features"], free["state"], free["noise"], free["prefix"], free["prefix_weight"])
    start = model.cfg.flow.action_noise_scale * free["noise"]
    reports = []
    for graph, reference, candidate in (("features", ref["features"], features), ("sampler", ref["actions"], sampled),
                                        ("policy", ref["actions"], chained),
                                        ("displacement", start - ref_free, start - got_free)):
        cosine, err = compare(reference, candidate)
        reports.append(Parity(graph, engine.name, cosine, err, bool(cosine >= COSINE_GATE)))
    return reports


# -------------------------------------------------------------------------------------- manifest


def read_manifest(engines_dir: str | Path) -> dict[str, Any] | None:
    path = Path(engines_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return None


def write_manifest(engines_dir: Path, manifest: dict[str, Any]) -> None:
    tmp = engines_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(engines_dir / MANIFEST)


def export(ckpt: str | Path, out_dir: str | Path, *, max_batch: int = 8, tensorrt: bool = False,
           precision: str = "fp16", parity_batches: Sequence[int] = (1, 2), exporter: str = "auto") -> dict[str, Any]:
    """Export, gate, optionally build TensorRT engines; returns the manifest. Raises ParityError on a failed gate."""
    from .backends import OnnxRuntimeEngine  # late: backends imports this module

    ckpt, out_dir = Path(ckpt), Path(out_dir)
    sha = checkpoint_sha256(ckpt)
    model, _, metadata = load_checkpoint(ckpt, device="cpu")
    manifest = read_manifest(out_dir) or {}
    if manifest.get("checkpoint_sha256") != sha or manifest.get("max_batch") != max_batch or not manifest.get("onnx"):
        t0 = time.perf_counter()
        exporters = export_onnx(model, out_dir, max_batch, exporter)
        log.info("exported ONNX in %.1f s (%s)", time.perf_counter() - t0, exporters)
        engine = OnnxRuntimeEngine(out_dir / FEATURES_ONNX, out_dir / SAMPLER_ONNX, device="cpu")
        reports = [r for b in parity_batches if b <= max_batch for r in engine_parity(engine, model, batch=b)]
        for r in reports:
            print("parity " + r.line(), flush=True)
        manifest = {
            "format": "dit4dit-engines", "format_version": 1, "checkpoint": str(ckpt.resolve()), "checkpoint_sha256": sha,
            "preset": model.cfg.preset, "max_batch": max_batch, "opset": OPSET, "exporters": exporters,
            "torch_version": torch.__version__, "shapes": {k: list(v[1:]) for k, v in graph_shapes(model.cfg, 1).items()},
            "parity_gate": {"cosine_min": COSINE_GATE}, "parity": [asdict(r) for r in reports],
            "onnx": None, "tensorrt": [],
        }
        if not all(r.passed for r in reports):
            write_manifest(out_dir, manifest)  # record the failure; onnx stays None so no server picks the graphs
            bad = "; ".join(r.line() for r in reports if not r.passed)
            raise ParityError(f"ONNX graphs failed the parity gate against PyTorch: {bad}")
        manifest["onnx"] = {"features": FEATURES_ONNX, "sampler": SAMPLER_ONNX}
        write_manifest(out_dir, manifest)
    else:
        print(f"ONNX graphs in {out_dir} already match {ckpt.name} (sha256 {sha[:12]}); not re-exported", flush=True)
    if tensorrt:
        from .backends import build_tensorrt_engines

        entry = build_tensorrt_engines(out_dir, manifest, model, precision=precision)
        manifest["tensorrt"] = [e for e in manifest.get("tensorrt", []) if e["key"] != entry["key"]] + [entry]
        write_manifest(out_dir, manifest)
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dit4dit-export", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", type=Path, required=True, help="policy checkpoint (.pt)")
    p.add_argument("--out", type=Path, required=True, help="output folder (ONNX graphs, manifest, TensorRT engines)")
    p.add_argument("--max-batch", type=int, default=8, help="largest batch the graphs and engines accept")
    p.add_argument("--tensorrt", choices=["auto", "yes", "no"], default="auto",
                   help="build TensorRT engines: auto = when TensorRT and a CUDA GPU are present")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16", "fp8"], default="fp16",
                   help="TensorRT precision (fp8 needs compute capability >= 8.9 and uses FP8 only where the graph allows)")
    p.add_argument("--exporter", choices=list(EXPORTERS), default="auto",
                   help="ONNX exporter: auto = dynamo, falling back to the TorchScript exporter")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("dit4dit").setLevel(args.log_level.upper())
    if not args.ckpt.is_file():
        raise SystemExit(f"dit4dit-export: checkpoint {args.ckpt} does not exist")
    if args.max_batch < 1:
        raise SystemExit("dit4dit-export: --max-batch must be >= 1")
    from .backends import tensorrt_available

    trt_ok, why = tensorrt_available()
    if args.tensorrt == "yes" and not trt_ok:
        raise SystemExit(f"dit4dit-export: --tensorrt yes, but {why}")
    build_trt = args.tensorrt == "yes" or (args.tensorrt == "auto" and trt_ok)
    if args.tensorrt == "auto" and not trt_ok:
        print(f"TensorRT engines not built: {why}. The ONNX graphs serve with --backend onnxruntime.", flush=True)
    try:
        manifest = export(args.ckpt, args.out, max_batch=args.max_batch, tensorrt=build_trt, precision=args.precision,
                          exporter=args.exporter)
    except ParityError as exc:
        print(f"dit4dit-export: {exc}", flush=True)
        return 2
    print(f"wrote {args.out / MANIFEST}: onnx={manifest['onnx']} tensorrt={[e['key'] for e in manifest['tensorrt']]}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
