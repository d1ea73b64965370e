"""Feature statistics as LeRobot stores them: per episode, and pooled over a dataset."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def array_stats(x: np.ndarray) -> dict[str, list]:
    """min/max/mean/std/count over axis 0 of an (N, D) array."""
    x = np.asarray(x, dtype=np.float64)
    return {
        "min": x.min(axis=0).tolist(),
        "max": x.max(axis=0).tolist(),
        "mean": x.mean(axis=0).tolist(),
        "std": x.std(axis=0).tolist(),
        "count": [int(x.shape[0])],
    }


def image_stats(frames: np.ndarray) -> dict[str, list]:
    """Per-channel stats of uint8 (T, H, W, 3) frames scaled to [0, 1], shaped (3, 1, 1) as LeRobot stores them."""
    x = frames.astype(np.float64) / 255.0
    per = {
        "min": x.min(axis=(0, 1, 2)),
        "max": x.max(axis=(0, 1, 2)),
        "mean": x.mean(axis=(0, 1, 2)),
        "std": x.std(axis=(0, 1, 2)),
    }
    out: dict[str, list] = {k: v.reshape(3, 1, 1).tolist() for k, v in per.items()}
    out["count"] = [int(frames.shape[0])]
    return out


def merge_stats(parts: Sequence[Mapping[str, Mapping[str, list]]]) -> dict[str, dict[str, list]]:
    """Combine per-episode stats into dataset stats (exact pooled mean/variance, weighted by count)."""
    merged: dict[str, dict[str, list]] = {}
    if not parts:
        return merged
    for key in parts[0]:
        entries = [p[key] for p in parts if key in p]
        counts = np.array([e["count"][0] for e in entries], dtype=np.float64)
        means = np.stack([np.asarray(e["mean"], dtype=np.float64) for e in entries])
        stds = np.stack([np.asarray(e["std"], dtype=np.float64) for e in entries])
        w = (counts / counts.sum()).reshape((-1,) + (1,) * (means.ndim - 1))
        mean = (w * means).sum(axis=0)
        var = (w * (stds**2 + (means - mean) ** 2)).sum(axis=0)
        merged[key] = {
            "min": np.min(np.stack([np.asarray(e["min"]) for e in entries]), axis=0).tolist(),
            "max": np.max(np.stack([np.asarray(e["max"]) for e in entries]), axis=0).tolist(),
            "mean": mean.tolist(),
            "std": np.sqrt(np.maximum(var, 0.0)).tolist(),
            "count": [int(counts.sum())],
        }
    return merged

