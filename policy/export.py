"""dit4dit-export: the policy's two inference graphs to ONNX, a parity gate, and TensorRT engines.

    dit4dit-export --ckpt g1.pt --out engines/ [--max-batch 8] [--tensorrt auto|yes|no] [--precision fp32|fp16|bf16]

Writes into --out (graph names and shapes: policy/graphs.py):
    features.onnx, sampler.onnx         float32 graphs (ONNX Runtime serves these)
    features.fp16.onnx, sampler.fp16.onnx (or .bf16.)  with --precision fp16/bf16: the same graphs with fp16/bf16
                                        matmuls and fp32 norms, softmax and flow-time embedding; float32 in and out
    manifest.json                       checkpoint sha256, shapes, exporter, each precision's parity report, TensorRT builds
    tensorrt/<key>/                     features.plan, sampler.plan, build.json (key = hash of checkpoint, TensorRT
                                        version, GPU, precision, max batch: a build is reused only when all match)

Parity gate: with fixed inputs and noise, each graph is run and compared with PyTorch float32; cosine
similarity must be >= 0.999 on features, actions and the actions' displacement. float32 and fp16 graphs run
in ONNX Runtime on CPU; bf16 graphs do not (ONNX Runtime has no bf16 CPU kernels), so there the exported
module is checked in PyTorch bf16 and the TensorRT engines are gated again after their build. A graph that
fails the gate is not registered, so neither TensorRT nor the server ever uses it.
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_checkpoint
from .graphs import (COSINE_GATE, FEATURE_INPUTS, FEATURES_ONNX, MANIFEST, OPSET, PRECISIONS, SAMPLER_INPUTS,
                     SAMPLER_ONNX, BackendError, Parity, ParityError, checkpoint_sha256, compare, engine_parity,
                     example_inputs, graph_shapes, onnx_file, read_manifest, torch_reference, write_manifest)
from .model import ActionSampler, DiT4DiT, FeatureNet, to_reduced_precision
from .onnxruntime_engine import OnnxRuntimeEngine
from .tensorrt_engine import build_tensorrt_engines, tensorrt_available

log = logging.getLogger("dit4dit.export")

__all__ = ["COSINE_GATE", "FEATURES_ONNX", "FEATURE_INPUTS", "SAMPLER_INPUTS", "SAMPLER_ONNX", "ParityError",
           "checkpoint_sha256", "compare", "engine_parity", "example_inputs", "export", "export_onnx", "graph_shapes",
           "main", "torch_reference"]


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


def export_onnx(model: DiT4DiT, out_dir: Path, max_batch: int = 8, exporter: str = "auto",
                precision: str = "fp32") -> dict[str, str]:
    """Write the features and sampler graphs of `precision` (file names: graphs.onnx_file); returns
    {graph: exporter used}. `model` itself is not changed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    cpu_model = copy.deepcopy(model).float().cpu().eval()
    ex = {k: torch.from_numpy(v) for k, v in example_inputs(cfg, 2).items()}
    with torch.no_grad():
        ex["features"] = FeatureNet(cpu_model)(ex["frames"], ex["text_tokens"])
    if precision != "fp32":
        to_reduced_precision(cpu_model, precision, for_onnx=True)
    used = {
        "features": _export_one(FeatureNet(cpu_model), (ex["frames"], ex["text_tokens"]), FEATURE_INPUTS, "features",
                                out_dir / onnx_file("features", precision), max_batch, exporter),
        "sampler": _export_one(ActionSampler(cpu_model), tuple(ex[n] for n in SAMPLER_INPUTS), SAMPLER_INPUTS, "actions",
                               out_dir / onnx_file("sampler", precision), max_batch, exporter),
    }
    return used


class _TorchModuleEngine:
    """The exported modules themselves (reduced precision, on CPU) behind the engine interface: the check of a
    bf16 graph where ONNX Runtime cannot run it."""

    def __init__(self, model: DiT4DiT, precision: str) -> None:
        reduced = to_reduced_precision(copy.deepcopy(model).float().cpu().eval(), precision, for_onnx=True)
        self.feature_net, self.sampler = FeatureNet(reduced), ActionSampler(reduced)
        self.name = f"torch-{precision}"

    @torch.no_grad()
    def features(self, frames: Any, text_tokens: Any) -> Any:
        return self.feature_net(torch.from_numpy(frames), torch.from_numpy(text_tokens)).numpy()

    @torch.no_grad()
    def sample(self, *arrays: Any) -> Any:
        return self.sampler(*(torch.from_numpy(a) for a in arrays)).numpy()


def gate_graphs(out_dir: Path, model: DiT4DiT, precision: str, parity_batches: Sequence[int]) -> dict[str, Any]:
    """Run the parity gate on the exported graphs of `precision`; returns their manifest entry."""
    features, sampler = onnx_file("features", precision), onnx_file("sampler", precision)
    try:
        engine: Any = OnnxRuntimeEngine(out_dir / features, out_dir / sampler, device="cpu")
        checked_in = "onnxruntime-cpu"
    except BackendError as exc:
        if precision != "bf16":
            raise
        log.info("bf16 graphs: %s; checking the exported bf16 modules in PyTorch instead", exc)
        engine, checked_in = _TorchModuleEngine(model, precision), "torch-bf16 (ONNX Runtime has no bf16 CPU kernels)"
    reports = [r for b in parity_batches for r in engine_parity(engine, model, batch=b)]
    for r in reports:
        print(f"parity [{precision}] " + r.line(), flush=True)
    return {"features": features, "sampler": sampler, "checked_in": checked_in,
            "parity": [asdict(r) for r in reports], "passed": all(r.passed for r in reports)}


def export(ckpt: str | Path, out_dir: str | Path, *, max_batch: int = 8, tensorrt: bool = False,
           precision: str = "fp32", parity_batches: Sequence[int] = (1, 2), exporter: str = "auto") -> dict[str, Any]:
    """Export and gate the float32 graphs and, for precision fp16/bf16, the reduced ones; optionally build
    TensorRT engines from the graphs of `precision`. Returns the manifest. Raises ParityError on a failed gate."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    ckpt, out_dir = Path(ckpt), Path(out_dir)
    sha = checkpoint_sha256(ckpt)
    model, _, metadata = load_checkpoint(ckpt, device="cpu")
    batches = [b for b in parity_batches if b <= max_batch]
    manifest = read_manifest(out_dir) or {}
    if manifest.get("checkpoint_sha256") != sha or manifest.get("max_batch") != max_batch \
            or manifest.get("format_version") != 2:
        manifest = {
            "format": "dit4dit-engines", "format_version": 2, "checkpoint": str(ckpt.resolve()), "checkpoint_sha256": sha,
            "preset": model.cfg.preset, "max_batch": max_batch, "opset": OPSET, "exporters": {},
            "torch_version": torch.__version__, "shapes": {k: list(v[1:]) for k, v in graph_shapes(model.cfg, 1).items()},
            "parity_gate": {"cosine_min": COSINE_GATE}, "onnx": None, "graphs": {}, "tensorrt": [],
        }
    for prec in dict.fromkeys(["fp32", precision]):  # the float32 graphs always: ONNX Runtime serves them
        if (manifest["graphs"].get(prec) or {}).get("passed"):
            print(f"{prec} ONNX graphs in {out_dir} already match {ckpt.name} (sha256 {sha[:12]}); not re-exported", flush=True)
            continue
        t0 = time.perf_counter()
        manifest["exporters"][prec] = export_onnx(model, out_dir, max_batch, exporter, prec)
        log.info("exported %s ONNX graphs in %.1f s (%s)", prec, time.perf_counter() - t0, manifest["exporters"][prec])
        entry = gate_graphs(out_dir, model, prec, batches)
        manifest["graphs"][prec] = entry
        if prec == "fp32":
            manifest["parity"] = entry["parity"]
            manifest["onnx"] = {"features": FEATURES_ONNX, "sampler": SAMPLER_ONNX} if entry["passed"] else None
        write_manifest(out_dir, manifest)  # a failure is recorded too: the graphs stay unregistered
        if not entry["passed"]:
            bad = "; ".join(Parity(**r).line() for r in entry["parity"] if not r["passed"])
            raise ParityError(f"{prec} ONNX graphs failed the parity gate against PyTorch float32: {bad}")
    if tensorrt:
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
    p.add_argument("--precision", choices=list(PRECISIONS), default=None,
                   help="inner precision of the graphs TensorRT builds from (default fp16 when building TensorRT "
                        "engines, else fp32); fp16/bf16 keep norms, softmax and the flow-time embedding in fp32. "
                        "FP8 is not offered: it needs explicit Q/DQ quantization")
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
    trt_ok, why = tensorrt_available()
    if args.tensorrt == "yes" and not trt_ok:
        raise SystemExit(f"dit4dit-export: --tensorrt yes, but {why}")
    build_trt = args.tensorrt == "yes" or (args.tensorrt == "auto" and trt_ok)
    if args.tensorrt == "auto" and not trt_ok:
        print(f"TensorRT engines not built: {why}. The ONNX graphs serve with --backend onnxruntime.", flush=True)
    precision = args.precision or ("fp16" if build_trt else "fp32")
    try:
        manifest = export(args.ckpt, args.out, max_batch=args.max_batch, tensorrt=build_trt, precision=precision,
                          exporter=args.exporter)
    except (ParityError, BackendError) as exc:
        print(f"dit4dit-export: {exc}", flush=True)
        return 2
    graphs = {p: g["passed"] for p, g in manifest["graphs"].items()}
    print(f"wrote {args.out / MANIFEST}: onnx={manifest['onnx']} gated={graphs} tensorrt={[e['key'] for e in manifest['tensorrt']]}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
