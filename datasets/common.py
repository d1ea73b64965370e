"""What every dataset module shares: the error, feature descriptors, atomic JSON writes, lazy pyarrow."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

IMAGE_KEY_PREFIX = "observation.images."
CACHE_DIR = "cache"  # optional decoded copy (numpy .npz per episode), not part of the LeRobot format


class DatasetError(ValueError):
    """A dataset folder or frame that does not match the expected LeRobot layout."""


def import_pyarrow():  # imported lazily: the robot-side runtime must import without it
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("LeRobot datasets need pyarrow: pip install 'dit4dit[dev]' or pip install pyarrow") from exc
    return pa, pq


def feature_vec(dtype: str, names: Sequence[str]) -> dict[str, Any]:
    return {"dtype": dtype, "shape": [len(names)], "names": list(names)}


def scalar_feature(dtype: str) -> dict[str, Any]:
    return {"dtype": dtype, "shape": [1], "names": None}


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def write_jsonl_atomic(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

