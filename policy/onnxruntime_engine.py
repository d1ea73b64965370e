"""OnnxRuntimeEngine: the exported features and sampler graphs in ONNX Runtime (CPU, or the CUDA provider)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .graphs import SAMPLER_INPUTS, BackendError


class OnnxRuntimeEngine:
    """Runs features.onnx and sampler.onnx (or their fp16 variants) in ONNX Runtime.

    On CPU a float16 graph runs through ONNX Runtime's own fp32 fallback for the nodes without fp16 kernels;
    that is how the reduced-precision graphs are checked here before TensorRT gets them. bfloat16 graphs do
    not run on ONNX Runtime's CPU provider (no bf16 MatMul): session creation fails with a clear error."""

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
        options.log_severity_level = 3  # its warnings about constant folding fp16 nodes are about its own fallback
        if threads:
            options.intra_op_num_threads = threads
        self.providers = providers
        try:
            self._features = ort.InferenceSession(str(features_path), options, providers=providers)
            self._sampler = ort.InferenceSession(str(sampler_path), options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own unrelated exception classes
            raise BackendError(f"ONNX Runtime ({'/'.join(providers)}) cannot run {features_path} / {sampler_path}: "
                               f"{str(exc)[:400]}") from exc
        self.name = "onnxruntime" if device == "cpu" else "onnxruntime-cuda"

    def features(self, frames: np.ndarray, text_tokens: np.ndarray) -> np.ndarray:
        feeds = {"frames": np.ascontiguousarray(frames, np.float32), "text_tokens": np.ascontiguousarray(text_tokens, np.int64)}
        return self._features.run(None, feeds)[0]

    def sample(self, features: np.ndarray, state: np.ndarray, noise: np.ndarray, prefix: np.ndarray,
               prefix_weight: np.ndarray) -> np.ndarray:
        arrays = (features, state, noise, prefix, prefix_weight)
        feeds = {n: np.ascontiguousarray(a, np.float32) for n, a in zip(SAMPLER_INPUTS, arrays)}
        return self._sampler.run(None, feeds)[0]
