"""What the exporter, the inference engines and the backend selection share: the two graphs' names and
shapes, the parity gate, and the engines folder's manifest.

    features   FeatureNet: frames (B,T,3,H,W) float32, text_tokens (B,L) int64 -> features (B,N,D) float32
    sampler    ActionSampler, the whole fixed-step Euler loop in one graph:
               features, state (B,S), noise (B,H,A), prefix (B,H,A), prefix_weight (B,H) -> actions (B,H,A)

Every graph has float32 inputs and outputs whatever its inner precision, so engines and callers never
convert. The parity gate compares an engine with eager PyTorch float32 on fixed inputs and noise.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .model import ActionSampler, DiT4DiT, DiT4DiTConfig, FeatureNet

log = logging.getLogger("dit4dit.graphs")

MANIFEST = "manifest.json"
FEATURES_ONNX = "features.onnx"
SAMPLER_ONNX = "sampler.onnx"
FEATURE_INPUTS = ("frames", "text_tokens")
SAMPLER_INPUTS = ("features", "state", "noise", "prefix", "prefix_weight")
COSINE_GATE = 0.999
OPSET = 18
# Inner precisions of exported graphs. FP8 is not offered: it needs explicit Q/DQ nodes and a calibration
# that this project does not have (TensorRT 11 removed the FP8 builder flag that used to imply it).
PRECISIONS = ("fp32", "fp16", "bf16")


class BackendError(RuntimeError):
    """The requested backend cannot run here; the message says why and what to do."""


def onnx_file(graph: str, precision: str = "fp32") -> str:
    """features.onnx / sampler.onnx for float32, features.fp16.onnx / sampler.bf16.onnx for the others."""
    return f"{graph}.onnx" if precision == "fp32" else f"{graph}.{precision}.onnx"


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
