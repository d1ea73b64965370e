"""Mean/std normalisation of state and action vectors (numpy; statistics live in the checkpoint metadata)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# A joint that never moved in the data would get std ~ 0 and blow up any deviation at inference;
# 0.01 rad (~0.6 deg) is below anything the policy needs to resolve.
MIN_STD = 1e-2


@dataclass
class Normalizer:
    mean: np.ndarray  # float32 (D,)
    std: np.ndarray  # float32 (D,)

    @classmethod
    def fit(cls, x: np.ndarray) -> Normalizer:
        x = np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1])
        if not np.isfinite(x).all():
            raise ValueError("cannot compute normalisation statistics: the data contains NaN or inf")
        return cls(x.mean(0).astype(np.float32), np.maximum(x.std(0), MIN_STD).astype(np.float32))

    @classmethod
    def from_dict(cls, d: dict[str, Sequence[float]]) -> Normalizer:
        mean, std = np.asarray(d["mean"], dtype=np.float32), np.asarray(d["std"], dtype=np.float32)
        if mean.shape != std.shape or mean.ndim != 1:
            raise ValueError(f"normalisation mean {mean.shape} and std {std.shape} must be equal 1-D shapes")
        if (std <= 0).any():
            raise ValueError("normalisation std must be > 0 everywhere")
        return cls(mean, std)

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    def normalize(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32)

    def unnormalize(self, x: np.ndarray) -> np.ndarray:
        return (x * self.std + self.mean).astype(np.float32)
