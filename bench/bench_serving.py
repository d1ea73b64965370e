"""Where a served chunk's time goes, per preset and backend: in-process and through dit4dit-serve's server.

For each preset an untrained model of that shape (built here, nothing downloaded) is served by each backend
the way dit4dit-serve serves it (policy/backends.py), batch 1:
    eager-fp32    PyTorch eager float32 (the reference)
    eager-bf16    PyTorch eager, the model in bf16 with fp32 norms and flow-time embedding (cuda)
    compiled      torch.compile + CUDA graphs + bf16, after its parity gate (cuda)
    onnxruntime   the exported float32 graphs in ONNX Runtime (the CUDA provider on cuda, where it exists)
    tensorrt      strongly typed fp16 engines built from the exported fp16 graphs (where TensorRT exists)
    auto          what `dit4dit-serve --backend auto` picks here (its reason is printed)
Columns: features (the video pass), sampling (the whole Euler sampler), total in-process (Policy.infer on
numpy, with preprocessing), and the round trip through a real PolicyServer and PolicyClient over ZeroMQ on
localhost; p50 / p99 over --requests calls after warm-up; the cosine of the actions' displacement against
eager-fp32; peak GPU memory (torch's allocator; ONNX Runtime and TensorRT allocate outside it, shown as the
device memory in use). A backend that cannot run here is a row with the reason.

    python bench/bench_serving.py --device cpu --presets small --requests 200
    bash bench/gpu.sh            # cuda, small and paper shape (what README's GPU table comes from)
"""

from __future__ import annotations

import argparse
import copy
import gc
import socket
import statistics
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from dit4dit.policy.backends import BackendChoice, compiled_available, gated_compiled_engine
from dit4dit.policy.checkpoint import random_policy_parts, save_checkpoint
from dit4dit.policy.export import export
from dit4dit.policy.graphs import compare, example_inputs
from dit4dit.policy.inference import Policy, TorchEngine
from dit4dit.policy.model import to_reduced_precision
from dit4dit.policy.onnxruntime_engine import OnnxRuntimeEngine
from dit4dit.policy.tensorrt_engine import TensorRTEngine, tensorrt_available
from dit4dit.runtime.client import PolicyClient
from dit4dit.runtime.server import PolicyServer, dummy_observation

BACKENDS = ("eager-fp32", "eager-bf16", "compiled", "onnxruntime", "tensorrt", "auto")


def percentiles(times_s: list[float]) -> tuple[float, float]:
    ms = np.asarray(times_s) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def timed(fn: Callable[[], Any], n: int, sync: Callable[[], None]) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return out


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def make_engine(name: str, policy: Policy, device: torch.device, workdir: Path, ckpt: Path | None) -> tuple[Any, str]:
    """(engine, note). Raises with the reason when the backend cannot run here."""
    model = policy.model
    cuda = device.type == "cuda"
    if name == "eager-fp32":
        return TorchEngine(model, device), ""
    if name == "eager-bf16":
        if not cuda:
            raise RuntimeError("bf16 eager is measured on cuda only (CPUs here have no fast bf16 matmul)")
        return TorchEngine(to_reduced_precision(copy.deepcopy(model), "bf16"), device), ""
    if name == "compiled":
        ok, why = compiled_available()
        if not ok:
            raise RuntimeError(f"not offered: {why}")
        return gated_compiled_engine(model, device.type), "passed the parity gate"
    if name in ("onnxruntime", "tensorrt"):
        if ckpt is None:
            raise RuntimeError("skipped: the model is too large to export here (--onnx-param-limit)")
        if name == "tensorrt":
            ok, why = tensorrt_available()
            if not ok:
                raise RuntimeError(why)
        if name == "onnxruntime" and cuda:
            import onnxruntime

            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise RuntimeError(f"no CUDAExecutionProvider in this onnxruntime {onnxruntime.__version__} "
                                   "(pip install onnxruntime-gpu)")
        out = workdir / "engines"
        manifest = export(ckpt, out, max_batch=1, tensorrt=name == "tensorrt",
                          precision="fp16" if name == "tensorrt" else "fp32", exporter="torchscript")
        if name == "onnxruntime":
            return OnnxRuntimeEngine(out / "features.onnx", out / "sampler.onnx", device=device.type,
                                     threads=torch.get_num_threads() if not cuda else None), ""
        entry = manifest["tensorrt"][-1]
        folder = out / entry["folder"]
        return TensorRTEngine(folder / "features.plan", folder / "sampler.plan", manifest["shapes"], 1), \
            f"TensorRT {entry['tensorrt_version']}, {entry['precision']}"
    raise ValueError(name)


def auto_choice(ckpt: Path | None, device: torch.device, workdir: Path) -> BackendChoice:
    from dit4dit.policy.backends import select_backend

    if ckpt is None:
        return BackendChoice("torch", device.type, "model too large to save here")
    engines = workdir / "engines"
    return select_backend(ckpt, "auto", device.type, engines if engines.is_dir() else None)


def bench_preset(preset: str, backends: list[str], device: torch.device, requests: int, warmup: int,
                 onnx_param_limit: float) -> list[dict[str, Any]]:
    model, vocab, metadata = random_policy_parts(preset, device=device)
    model.eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    x = example_inputs(model.cfg, 1)
    obs = dummy_observation(metadata)
    obs["instruction"] = metadata["instructions"][0]
    rows: list[dict[str, Any]] = []
    reference = None
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        ckpt = None
        if params <= onnx_param_limit:
            ckpt = workdir / f"{preset}.pt"
            save_checkpoint(ckpt, copy.deepcopy(model).cpu(), vocab, metadata)
        for name in backends:
            row: dict[str, Any] = {"preset": preset, "params_m": params, "backend": name, "note": ""}
            rows.append(row)
            policy = Policy(model, vocab, metadata, device)
            try:
                if cuda:
                    gc.collect()
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                    free_before = torch.cuda.mem_get_info()[0]
                t0 = time.perf_counter()
                if name == "auto":
                    choice = auto_choice(ckpt, device, workdir)
                    row["note"] = f"auto picks {choice.backend}: {choice.reason}"
                    engine_name = {"torch": "eager-fp32"}.get(choice.backend, choice.backend)
                    engine, _ = make_engine(engine_name, policy, device, workdir, ckpt)
                else:
                    engine, row["note"] = make_engine(name, policy, device, workdir, ckpt)
                policy.engine = engine
                for _ in range(warmup):
                    policy.infer(obs, noise=x["noise"][0])
                row["setup_s"] = time.perf_counter() - t0
                feats = engine.features(x["frames"], x["text_tokens"])
                sample_args = (feats, x["state"], x["noise"], np.zeros_like(x["prefix"]), np.zeros_like(x["prefix_weight"]))
                actions = engine.sample(*sample_args)
                displacement = model.cfg.flow.action_noise_scale * x["noise"] - actions
                if name == "eager-fp32":
                    reference = displacement
                if reference is not None:
                    row["cosine"] = compare(reference, displacement)[0]
                row["features"] = percentiles(timed(lambda: engine.features(x["frames"], x["text_tokens"]), requests, sync))
                row["sampling"] = percentiles(timed(lambda: engine.sample(*sample_args), requests, sync))
                row["in_process"] = percentiles(timed(lambda: policy.infer(obs, noise=x["noise"][0]), requests, sync))
                row["round_trip"], row["server_split"] = round_trip(policy, obs, requests, name)
                if cuda:
                    row["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
                    row["in_use_mib"] = (free_before - torch.cuda.mem_get_info()[0]) / 2**20
            except Exception as exc:  # noqa: BLE001 - one backend failing must not lose the rest of the table
                row["note"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
                if not isinstance(exc, RuntimeError):
                    traceback.print_exc()
            finally:
                policy = engine = None  # noqa: F841
                gc.collect()
    del model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return rows


def round_trip(policy: Policy, obs: dict[str, Any], requests: int, backend: str) -> tuple[tuple[float, float], dict[str, float]]:
    """p50/p99 of the client's round trip through a real PolicyServer, and the server's median split."""
    endpoint = free_endpoint()
    server = PolicyServer(policy, endpoint, max_batch=1, backend=backend, seed=0)
    server.start()
    times, splits = [], []
    try:
        with PolicyClient(endpoint, timeout_s=60.0) as client:
            for _ in range(5):
                client.infer(obs, seed=1)
            for i in range(requests):
                t0 = time.perf_counter()
                result = client.infer(obs, seed=i)
                times.append(time.perf_counter() - t0)
                splits.append(result.timing)
    finally:
        server.stop()
    keys = ("queue", "decode", "preprocess", "features", "sample", "encode", "total")
    split = {k: statistics.median(s[k] for s in splits) * 1e3 for k in keys if all(k in s for s in splits)}
    return percentiles(times), split


def fmt(pair: tuple[float, float] | None) -> str:
    return "-" if pair is None else f"{pair[0]:.2f} / {pair[1]:.2f}"


def print_tables(rows: list[dict[str, Any]], title: str) -> None:
    print(f"\n{title}\n")
    print("| preset | backend | features ms p50 / p99 | sampling ms p50 / p99 | total in-process ms p50 / p99 | "
          "server round trip ms p50 / p99 | cosine vs eager-fp32 | peak GPU MiB (torch / in use) | setup s | note |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mem = f"{r['peak_mib']:.0f} / {r['in_use_mib']:.0f}" if "peak_mib" in r else "-"
        cos = f"{r['cosine']:.6f}" if "cosine" in r else "-"
        setup = f"{r['setup_s']:.1f}" if "setup_s" in r else "-"
        print(f"| {r['preset']} ({r['params_m']:.0f}M) | {r['backend']} | {fmt(r.get('features'))} | {fmt(r.get('sampling'))} | "
              f"{fmt(r.get('in_process'))} | {fmt(r.get('round_trip'))} | {cos} | {mem} | {setup} | {r['note']} |")
    print("\nwhere the server's time goes (median ms per reply, from each reply's timing):\n")
    keys = ("queue", "decode", "preprocess", "features", "sample", "encode", "total")
    print("| preset | backend | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for r in rows:
        if "server_split" in r:
            print(f"| {r['preset']} | {r['backend']} | " + " | ".join(f"{r['server_split'].get(k, float('nan')):.2f}" for k in keys) + " |")
    eager = {r["preset"]: r for r in rows if r["backend"] == "eager-fp32" and "round_trip" in r}
    ratios = [f"{r['preset']} {r['backend']}: {eager[r['preset']]['round_trip'][0] / r['round_trip'][0]:.2f}x"
              for r in rows if r["preset"] in eager and "round_trip" in r and r["backend"] != "eager-fp32"]
    if ratios:
        print("\nround-trip speed-up over eager-fp32, measured side by side in this run: " + ", ".join(ratios))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--presets", default="small")
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--requests", type=int, default=200, help="timed calls per column (p99 needs >= 100)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--onnx-param-limit", type=float, default=1500.0,
                   help="export (ONNX Runtime, TensorRT) only models below this many million parameters (the 2 GB protobuf limit)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # eager-fp32 is the float32 reference
        torch.backends.cudnn.allow_tf32 = False
    import onnxruntime

    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    trt_ok, trt_why = tensorrt_available()
    rows: list[dict[str, Any]] = []
    for preset in [s for s in args.presets.split(",") if s]:
        rows += bench_preset(preset, [b for b in args.backends.split(",") if b], device, args.requests, args.warmup,
                             args.onnx_param_limit)
    print_tables(rows, f"dit4dit serving, batch 1, {args.requests} requests per column, {where}; torch {torch.__version__}, "
                       f"onnxruntime {onnxruntime.__version__} ({','.join(onnxruntime.get_available_providers())}), "
                       f"TensorRT: {'yes' if trt_ok else trt_why}")


if __name__ == "__main__":
    main()
