"""Policy latency per backend and model size, split into the video-feature pass and the action denoising.

For each preset a random model of that shape (no weights are downloaded) runs through each backend's
InferenceEngine interface (numpy in, numpy out, as the server calls it; batch 1):
    eager          PyTorch eager, float32 (the reference)
    eager-bf16     PyTorch eager under bf16 autocast (cuda only)
    compile        torch.compile (inductor, no CUDA graphs)
    compile-graphs torch.compile mode="reduce-overhead" (inductor + CUDA graphs; cuda only)
    compile-graphs-bf16  the same under bf16 autocast (cuda only)
    onnxruntime    the dit4dit-export ONNX graphs in ONNX Runtime (CPU provider, or CUDA provider on cuda)
    tensorrt       strongly typed TensorRT engines built from the fp16 graphs (when TensorRT is installed)
Each row gives the median and p90 over --repeats calls after warm-up, and the cosine of the action chunk's
displacement (sigma * noise - actions) against eager float32 (the parity gate's hardest check).
"paper-action" benchmarks only the paper-shape action DiT (16 layers, width 1536, 32 queries, 4 Euler steps)
conditioned on paper-shape features (980 tokens x 2048), without the 2B video DiT.

    python bench/bench_backends.py --device cpu --presets tiny,small
    python bench/bench_backends.py --device cuda --presets tiny,small,paper-action,paper
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from dit4dit.policy.checkpoint import perturb_zero_init
from dit4dit.policy.export import export_onnx
from dit4dit.policy.graphs import compare, example_inputs
from dit4dit.policy.model import ActionSampler, DiT4DiT, FeatureNet, preset_config


class ModuleEngine:
    """FeatureNet / ActionSampler (possibly compiled) behind the numpy InferenceEngine interface."""

    def __init__(self, name: str, feature_net: Callable, sampler: Callable, device: torch.device,
                 autocast: torch.dtype | None = None) -> None:
        self.name, self.feature_net, self.sampler, self.device, self.autocast = name, feature_net, sampler, device, autocast

    def _ctx(self) -> contextlib.AbstractContextManager:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def _t(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).to(self.device, non_blocking=True)

    @torch.inference_mode()
    def features(self, frames: np.ndarray, text_tokens: np.ndarray) -> np.ndarray:
        with self._ctx():
            return self.feature_net(self._t(frames), self._t(text_tokens)).float().cpu().numpy()

    @torch.inference_mode()
    def sample(self, features: np.ndarray, state: np.ndarray, noise: np.ndarray, prefix: np.ndarray,
               prefix_weight: np.ndarray) -> np.ndarray:
        with self._ctx():
            out = self.sampler(*(self._t(a) for a in (features, state, noise, prefix, prefix_weight)))
            return out.float().cpu().numpy()


def build_model(preset: str, device: torch.device) -> DiT4DiT:
    """A random model of the preset's shape. paper-action keeps the paper's action DiT and condition shape
    (980 tokens x 2048) but a 1-block video DiT and text encoder, which it never runs."""
    if preset == "paper-action":
        cfg = preset_config("paper", state_dim=14, action_dim=14, video_depth=1, extract_layer=1, text_depth=1)
    else:
        cfg = preset_config(preset, state_dim=14, action_dim=14)
    torch.manual_seed(0)
    model = DiT4DiT(cfg)  # built on the CPU (the model's own init draws from CPU generators), then moved
    perturb_zero_init(model, 0.02, torch.Generator().manual_seed(0))
    return model.to(device).eval()


def timed(fn: Callable[[], Any], repeats: int, warmup: int) -> tuple[float, float, Any]:
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()  # numpy out: the device is synchronised by the copy back
        times.append(time.perf_counter() - t0)
    t = np.array(times) * 1e3
    return float(np.median(t)), float(np.percentile(t, 90)), out


def make_engines(backends: list[str], model: DiT4DiT, device: torch.device, preset: str, workdir: Path,
                 onnx_param_limit: float) -> list[tuple[str, Callable[[], Any], str]]:
    """(name, factory, note) per backend; factories run lazily so one failure does not stop the table."""
    feature_net, sampler = FeatureNet(model).eval(), ActionSampler(model).eval()
    cuda = device.type == "cuda"
    out: list[tuple[str, Callable[[], Any], str]] = []
    for b in backends:
        if b == "eager":
            out.append((b, lambda: ModuleEngine("eager", feature_net, sampler, device), ""))
        elif b == "eager-bf16" and cuda:
            out.append((b, lambda: ModuleEngine("eager-bf16", feature_net, sampler, device, torch.bfloat16), ""))
        elif b == "compile":
            out.append((b, lambda: ModuleEngine("compile", torch.compile(feature_net), torch.compile(sampler), device), ""))
        elif b == "compile-graphs" and cuda:
            out.append((b, lambda: ModuleEngine("compile-graphs", torch.compile(feature_net, mode="reduce-overhead"),
                                                torch.compile(sampler, mode="reduce-overhead"), device), ""))
        elif b == "compile-graphs-bf16" and cuda:
            out.append((b, lambda: ModuleEngine("compile-graphs-bf16", torch.compile(feature_net, mode="reduce-overhead"),
                                                torch.compile(sampler, mode="reduce-overhead"), device, torch.bfloat16), ""))
        elif b in ("onnxruntime", "tensorrt"):
            params = sum(p.numel() for p in model.parameters()) / 1e6
            if preset == "paper-action":
                out.append((b, lambda: None, "skipped: paper-action has no real feature graph to export"))
                continue
            if params > onnx_param_limit:
                out.append((b, lambda: None, f"skipped: {params:.0f}M parameters > --onnx-param-limit"))
                continue
            out.append((b, lambda b=b: _compiled_engine(b, model, device, workdir / preset), ""))
    return out


def _compiled_engine(backend: str, model: DiT4DiT, device: torch.device, folder: Path) -> Any:
    from dit4dit.policy.graphs import FEATURE_INPUTS, SAMPLER_INPUTS, graph_shapes, onnx_file
    from dit4dit.policy.onnxruntime_engine import OnnxRuntimeEngine
    from dit4dit.policy.tensorrt_engine import TensorRTEngine, build_plan, tensorrt_available

    # Fail before the (slow) export when the backend cannot run here.
    if backend == "onnxruntime" and device.type == "cuda":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise RuntimeError("no CUDAExecutionProvider in this onnxruntime (pip install onnxruntime-gpu)")
    if backend == "tensorrt":
        ok, why = tensorrt_available()
        if not ok:
            raise RuntimeError(why)
    precision = "fp16" if backend == "tensorrt" else "fp32"  # TensorRT: strongly typed fp16 graphs
    if not (folder / onnx_file("sampler", precision)).is_file():
        cpu_copy = DiT4DiT(model.cfg)
        cpu_copy.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()}, strict=False)
        export_onnx(cpu_copy, folder, max_batch=1, precision=precision)
        del cpu_copy
    if backend == "onnxruntime":
        return OnnxRuntimeEngine(folder / "features.onnx", folder / "sampler.onnx", device=device.type,
                                 threads=torch.get_num_threads() if device.type == "cpu" else None)
    shapes = {k: list(v[1:]) for k, v in graph_shapes(model.cfg, 1).items()}
    build_plan(folder / onnx_file("features", precision), folder / "features.plan", 1, shapes, FEATURE_INPUTS)
    build_plan(folder / onnx_file("sampler", precision), folder / "sampler.plan", 1, shapes, SAMPLER_INPUTS)
    return TensorRTEngine(folder / "features.plan", folder / "sampler.plan", shapes, 1)


def bench_preset(preset: str, backends: list[str], device: torch.device, repeats: int, warmup: int,
                 workdir: Path, onnx_param_limit: float) -> list[dict[str, Any]]:
    model = build_model(preset, device)
    cfg = model.cfg
    inputs = example_inputs(cfg, 1)
    rows = []
    reference_disp = None
    features_only = preset != "paper-action"
    rng = np.random.default_rng(0)
    paper_features = rng.standard_normal((1, cfg.condition_tokens, cfg.condition_width)).astype(np.float32)
    for name, factory, note in make_engines(backends, model, device, preset, workdir, onnx_param_limit):
        row: dict[str, Any] = {"preset": preset, "backend": name, "device": device.type, "note": note}
        rows.append(row)
        if note:
            continue
        try:
            t0 = time.perf_counter()
            engine = factory()
            if features_only:
                feats = engine.features(inputs["frames"], inputs["text_tokens"])
            else:
                feats = paper_features
            zeros_prefix = np.zeros_like(inputs["prefix"])
            engine.sample(feats, inputs["state"], inputs["noise"], zeros_prefix, np.zeros_like(inputs["prefix_weight"]))
            row["setup_s"] = time.perf_counter() - t0  # construction + first call (compile, export, build)
            if features_only:
                row["features_ms"], row["features_p90"], feats = timed(
                    lambda: engine.features(inputs["frames"], inputs["text_tokens"]), repeats, warmup)
            args = (feats, inputs["state"], inputs["noise"], np.zeros_like(inputs["prefix"]), np.zeros_like(inputs["prefix_weight"]))
            row["sample_ms"], row["sample_p90"], actions = timed(lambda: engine.sample(*args), repeats, warmup)
            disp = cfg.flow.action_noise_scale * inputs["noise"] - actions
            if name == "eager":
                reference_disp = disp
            if reference_disp is not None:
                row["cosine"] = compare(reference_disp, disp)[0]
        except Exception as exc:  # noqa: BLE001 - one backend failing must not lose the rest of the table
            row["note"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:90] if str(exc) else ''}"
            traceback.print_exc()
        finally:
            engine = None
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    del model
    gc.collect()
    return rows


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    print(f"\n{title}\n")
    print("| preset | backend | features ms (p50 / p90) | action denoising ms (p50 / p90) | total p50 ms | cosine vs eager | setup s | note |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        f = f"{r['features_ms']:.2f} / {r['features_p90']:.2f}" if "features_ms" in r else "-"
        s = f"{r['sample_ms']:.2f} / {r['sample_p90']:.2f}" if "sample_ms" in r else "-"
        total = f"{r.get('features_ms', 0.0) + r['sample_ms']:.2f}" if "sample_ms" in r else "-"
        cos = f"{r['cosine']:.6f}" if "cosine" in r else "-"
        setup = f"{r['setup_s']:.1f}" if "setup_s" in r else "-"
        print(f"| {r['preset']} | {r['backend']} | {f} | {s} | {total} | {cos} | {setup} | {r['note']} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--presets", default="tiny,small")
    p.add_argument("--backends", default="eager,eager-bf16,compile,compile-graphs,compile-graphs-bf16,onnxruntime,tensorrt")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--onnx-param-limit", type=float, default=1500.0,
                   help="skip ONNX/TensorRT for models above this many million parameters (export time and the 2 GB protobuf limit)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32: the parity reference
        torch.backends.cudnn.allow_tf32 = False
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    import onnxruntime

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in [s for s in args.presets.split(",") if s]:
            rows += bench_preset(preset, [b for b in args.backends.split(",") if b], device, args.repeats, args.warmup,
                                 Path(tmp), args.onnx_param_limit)
            print_table([r for r in rows if r["preset"] == preset], f"(partial) {preset}")
    print_table(rows, f"policy latency, batch 1, {name}; torch {torch.__version__}, onnxruntime {onnxruntime.__version__} "
                      f"({','.join(onnxruntime.get_available_providers())})")


if __name__ == "__main__":
    main()
