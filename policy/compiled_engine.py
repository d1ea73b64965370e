"""CompiledEngine: FeatureNet and the whole Euler sampler through torch.compile (inductor).

On CUDA: bf16 (norms, softmax accumulation and the flow-time embedding stay fp32, policy.model
.to_reduced_precision) and CUDA graphs (mode "reduce-overhead": one graph replay per call, no per-kernel
launch cost, which dominates at batch 1). On CPU: float32 inductor, for tests; the server does not offer it
there (bench/bench_backends.py measured it slower than ONNX Runtime on CPU).

Compilation happens at construction (`warmup_batches`), so the first robot request does not pay for it.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence

import numpy as np
import torch

from .graphs import example_inputs
from .model import ActionSampler, DiT4DiT, FeatureNet, to_reduced_precision

log = logging.getLogger("dit4dit.compiled")


class CompiledEngine:
    name = "compiled"

    def __init__(self, model: DiT4DiT, device: str | torch.device = "cuda", precision: str | None = None,
                 cuda_graphs: bool | None = None, warmup_batches: Sequence[int] = (1,)) -> None:
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        self.precision = precision or ("bf16" if cuda else "fp32")
        self.cuda_graphs = cuda if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and not cuda:
            raise ValueError("CUDA graphs need a CUDA device")
        model = copy.deepcopy(model).to(self.device).eval()  # the caller's fp32 model stays the parity reference
        if self.precision != "fp32":
            to_reduced_precision(model, self.precision)
        mode = "reduce-overhead" if self.cuda_graphs else "default"
        # dynamic=False: one specialised graph per batch size (the server uses 1 and its measured max batch)
        self._features = torch.compile(FeatureNet(model), mode=mode, dynamic=False, fullgraph=True)
        self._sampler = torch.compile(ActionSampler(model), mode=mode, dynamic=False, fullgraph=True)
        self.name = f"compiled-{self.precision}" + ("-cudagraphs" if self.cuda_graphs else "")
        t0 = time.perf_counter()
        for batch in warmup_batches:
            self.warm_up(model, batch)
        self.compile_s = time.perf_counter() - t0
        log.info("%s compiled for batches %s in %.1f s", self.name, list(warmup_batches), self.compile_s)

    def warm_up(self, model: DiT4DiT, batch: int) -> None:
        """Compile (and capture the CUDA graphs) for one batch size: CUDA graph trees record on the 2nd-3rd call."""
        x = example_inputs(model.cfg, batch)
        for _ in range(3):
            features = self.features(x["frames"], x["text_tokens"])
            self.sample(features, x["state"], x["noise"], x["prefix"], x["prefix_weight"])

    def _t(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).to(self.device, non_blocking=True)

    @torch.no_grad()
    def features(self, frames: np.ndarray, text_tokens: np.ndarray) -> np.ndarray:
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the previous replay's outputs were copied out already
        return self._features(self._t(frames), self._t(text_tokens)).float().cpu().numpy()

    @torch.no_grad()
    def sample(self, features: np.ndarray, state: np.ndarray, noise: np.ndarray, prefix: np.ndarray,
               prefix_weight: np.ndarray) -> np.ndarray:
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        out = self._sampler(*(self._t(a) for a in (features, state, noise, prefix, prefix_weight)))
        return out.float().cpu().numpy()
