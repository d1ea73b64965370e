"""LeRobot v2.1 dataset writer and reader, torch-free (numpy + pyarrow + av).

Layout (one folder per dataset)::

    meta/info.json            codebase_version "v2.1", fps, features, path templates, totals
    meta/episodes.jsonl       {"episode_index", "tasks": [str], "length", "success"} one line per episode
    meta/tasks.jsonl          {"task_index", "task"} one line per distinct instruction
    meta/episodes_stats.jsonl per-episode feature statistics (v2.1)
    meta/stats.json           statistics over the whole dataset (min/max/mean/std/count per feature)
    data/chunk-000/episode_000000.parquet
    videos/chunk-000/observation.images.<cam>/episode_000000.mp4

Columns per frame: ``observation.state``, ``action`` (commanded targets), ``action.executed``,
``intervention``, ``next.success``, ``timestamp`` (frame_index / fps: LeRobot checks it against fps),
``recorded_time`` (seconds since the episode started, by the recorder's clock), ``frame_index``, ``episode_index``, ``index``,
``task_index``; camera images live in the mp4 files, one frame per row.

An episode is buffered in memory and written whole by :meth:`LeRobotWriter.save_episode` (parquet
and videos to temporary names first, then renamed, then the meta files rewritten), so a run that is
interrupted keeps every episode it finished and never leaves a half-written one referenced.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dit4dit.datasets.common import (CACHE_DIR, IMAGE_KEY_PREFIX, DatasetError, feature_vec, import_pyarrow,
                                     read_jsonl, scalar_feature, write_json_atomic, write_jsonl_atomic)
from dit4dit.datasets.stats import array_stats, image_stats, merge_stats
from dit4dit.datasets.video import VIDEO_CODEC, decode_video, encode_video

CODEBASE_VERSION = "v2.1"
CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"


class LeRobotWriter:
    """Records episodes into a LeRobot v2.1 folder; re-opening an existing folder appends to it.

    ``cameras`` maps a camera name (``head``) to its (height, width); frames must come at that size.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        fps: float,
        state_names: Sequence[str],
        action_names: Sequence[str],
        cameras: Mapping[str, tuple[int, int]],
        robot_type: str = "unitree_g1",
        extra_info: Mapping[str, Any] | None = None,
    ) -> None:
        self.root = Path(root)
        self.fps = float(fps)
        self.state_names = list(state_names)
        self.action_names = list(action_names)
        self.cameras = {k: (int(v[0]), int(v[1])) for k, v in cameras.items()}
        self.robot_type = robot_type
        self.extra_info = dict(extra_info or {})
        self._buf: list[dict[str, Any]] = []
        (self.root / "meta").mkdir(parents=True, exist_ok=True)
        info_path = self.root / "meta" / "info.json"
        if info_path.exists():
            info = json.loads(info_path.read_text())
            self._check_compatible(info)
        self.episodes = read_jsonl(self.root / "meta" / "episodes.jsonl")
        self.tasks = {r["task"]: r["task_index"] for r in read_jsonl(self.root / "meta" / "tasks.jsonl")}
        self.episode_stats = read_jsonl(self.root / "meta" / "episodes_stats.jsonl")
        self._write_meta()

    # -- compatibility when appending
    def _features(self) -> dict[str, Any]:
        feats: dict[str, Any] = {
            "observation.state": feature_vec("float32", self.state_names),
            "action": feature_vec("float32", self.action_names),
            "action.executed": feature_vec("float32", self.action_names),
            "intervention": scalar_feature("bool"),
            "next.success": scalar_feature("bool"),
        }
        for cam, (h, w) in self.cameras.items():
            feats[IMAGE_KEY_PREFIX + cam] = {
                "dtype": "video",
                "shape": [h, w, 3],
                "names": ["height", "width", "channels"],
                "info": {
                    "video.fps": self.fps,
                    "video.height": h,
                    "video.width": w,
                    "video.channels": 3,
                    "video.codec": VIDEO_CODEC,
                    "video.pix_fmt": "yuv420p",
                    "video.is_depth_map": False,
                    "has_audio": False,
                },
            }
        for name in ("timestamp", "recorded_time"):
            feats[name] = scalar_feature("float32")
        for name in ("frame_index", "episode_index", "index", "task_index"):
            feats[name] = scalar_feature("int64")
        return feats

    def _check_compatible(self, info: Mapping[str, Any]) -> None:
        mine = self._features()
        theirs = info.get("features", {})
        for key in ("observation.state", "action"):
            if theirs.get(key, {}).get("names") != mine[key]["names"]:
                raise DatasetError(f"{self.root}: existing dataset has different {key} names; use another --out")
        cams = {k[len(IMAGE_KEY_PREFIX) :]: tuple(v["shape"][:2]) for k, v in theirs.items() if v.get("dtype") == "video"}
        if cams != self.cameras:
            raise DatasetError(f"{self.root}: existing dataset has cameras {cams}, this writer {self.cameras}")
        if float(info.get("fps", -1)) != self.fps:
            raise DatasetError(f"{self.root}: existing dataset fps {info.get('fps')} != {self.fps}")

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def num_frames(self) -> int:
        return int(sum(e["length"] for e in self.episodes))

    @property
    def buffered_frames(self) -> int:
        return len(self._buf)

    def add_frame(
        self,
        *,
        state: np.ndarray,
        action: np.ndarray,
        images: Mapping[str, np.ndarray],
        task: str,
        action_executed: np.ndarray | None = None,
        intervention: bool = False,
        recorded_time: float | None = None,
    ) -> None:
        """Buffer one frame of the current episode (nothing is written until :meth:`save_episode`)."""
        state = np.asarray(state, dtype=np.float32).reshape(-1)
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if state.shape != (len(self.state_names),):
            raise DatasetError(f"state: expected shape ({len(self.state_names)},), got {state.shape}")
        if action.shape != (len(self.action_names),):
            raise DatasetError(f"action: expected shape ({len(self.action_names)},), got {action.shape}")
        executed = action if action_executed is None else np.asarray(action_executed, dtype=np.float32).reshape(-1)
        if executed.shape != action.shape:
            raise DatasetError(f"action_executed: expected shape {action.shape}, got {executed.shape}")
        if set(images) != set(self.cameras):
            raise DatasetError(f"images: expected cameras {sorted(self.cameras)}, got {sorted(images)}")
        imgs = {}
        for cam, img in images.items():
            h, w = self.cameras[cam]
            img = np.asarray(img)
            if img.dtype != np.uint8 or img.shape != (h, w, 3):
                raise DatasetError(f"images[{cam!r}]: expected uint8 ({h}, {w}, 3), got {img.dtype} {img.shape}")
            imgs[cam] = img.copy()
        if self._buf and task != self._buf[0]["task"]:
            raise DatasetError("task: one instruction per episode; call save_episode() before changing it")
        ts = float(recorded_time) if recorded_time is not None else len(self._buf) / self.fps
        self._buf.append(
            dict(state=state, action=action, executed=executed, images=imgs, task=task,
                 intervention=bool(intervention), recorded_time=ts)
        )

    def discard_episode(self) -> None:
        """Drop the buffered frames (for example an aborted attempt)."""
        self._buf.clear()

    def save_episode(self, success: bool | None = None, extra: Mapping[str, Any] | None = None) -> int:
        """Write the buffered episode whole; returns its episode index.

        ``extra``: JSON-able fields added to the episode's line in meta/episodes.jsonl (e.g. the sim seed).
        """
        if not self._buf:
            raise DatasetError("save_episode: no frames buffered")
        pa, pq = import_pyarrow()
        ep = self.num_episodes
        chunk = ep // CHUNKS_SIZE
        n = len(self._buf)
        task = self._buf[0]["task"]
        if task not in self.tasks:
            self.tasks[task] = len(self.tasks)
        task_index = self.tasks[task]
        start = self.num_frames
        state = np.stack([f["state"] for f in self._buf])
        action = np.stack([f["action"] for f in self._buf])
        executed = np.stack([f["executed"] for f in self._buf])
        intervention = np.array([f["intervention"] for f in self._buf], dtype=bool)
        # next.success is true on the last frame of a successful episode only (a reward-like flag).
        next_success = np.zeros(n, dtype=bool)
        if success:
            next_success[-1] = True
        timestamp = (np.arange(n) / self.fps).astype(np.float32)
        recorded_time = np.array([f["recorded_time"] for f in self._buf], dtype=np.float32)

        def fixed(arr: np.ndarray) -> Any:
            flat = pa.array(arr.reshape(-1), type=pa.float32())
            return pa.FixedSizeListArray.from_arrays(flat, arr.shape[1])

        table = pa.table(
            {
                "observation.state": fixed(state),
                "action": fixed(action),
                "action.executed": fixed(executed),
                "intervention": pa.array(intervention),
                "next.success": pa.array(next_success),
                "timestamp": pa.array(timestamp, type=pa.float32()),
                "recorded_time": pa.array(recorded_time, type=pa.float32()),
                "frame_index": pa.array(np.arange(n, dtype=np.int64)),
                "episode_index": pa.array(np.full(n, ep, dtype=np.int64)),
                "index": pa.array(np.arange(start, start + n, dtype=np.int64)),
                "task_index": pa.array(np.full(n, task_index, dtype=np.int64)),
            }
        )
        data_path = self.root / DATA_PATH.format(episode_chunk=chunk, episode_index=ep)
        data_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = data_path.with_name(data_path.name + ".tmp")
        pq.write_table(table, tmp)
        stats: dict[str, Any] = {
            "observation.state": array_stats(state),
            "action": array_stats(action),
            "action.executed": array_stats(executed),
            "timestamp": array_stats(timestamp[:, None]),
            "intervention": array_stats(intervention[:, None]),
        }
        video_tmps = []
        for cam in self.cameras:
            frames = np.stack([f["images"][cam] for f in self._buf])
            key = IMAGE_KEY_PREFIX + cam
            vpath = self.root / VIDEO_PATH.format(episode_chunk=chunk, video_key=key, episode_index=ep)
            vpath.parent.mkdir(parents=True, exist_ok=True)
            vtmp = vpath.with_name(vpath.stem + ".tmp.mp4")
            encode_video(vtmp, frames, self.fps)
            video_tmps.append((vtmp, vpath))
            stats[key] = image_stats(frames)
        # Files first, then meta: a crash in between leaves an unreferenced file, never a dangling entry.
        os.replace(tmp, data_path)
        for vtmp, vpath in video_tmps:
            os.replace(vtmp, vpath)
        self.episodes.append({"episode_index": ep, "tasks": [task], "length": n,
                              "success": None if success is None else bool(success), **dict(extra or {})})
        self.episode_stats.append({"episode_index": ep, "stats": stats})
        self._write_meta()
        self._buf.clear()
        return ep

    def _write_meta(self) -> None:
        meta = self.root / "meta"
        n_ep = self.num_episodes
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": n_ep,
            "total_frames": self.num_frames,
            "total_tasks": len(self.tasks),
            "total_videos": n_ep * len(self.cameras),
            "total_chunks": (n_ep - 1) // CHUNKS_SIZE + 1 if n_ep else 0,
            "chunks_size": CHUNKS_SIZE,
            "fps": self.fps,
            "splits": {"train": f"0:{n_ep}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self.cameras else None,
            "features": self._features(),
        }
        if self.extra_info:
            info["dit4dit"] = self.extra_info
        write_jsonl_atomic(meta / "tasks.jsonl", [{"task_index": i, "task": t} for t, i in self.tasks.items()])
        write_jsonl_atomic(meta / "episodes.jsonl", self.episodes)
        write_jsonl_atomic(meta / "episodes_stats.jsonl", self.episode_stats)
        write_json_atomic(meta / "stats.json", merge_stats([e["stats"] for e in self.episode_stats]))
        write_json_atomic(meta / "info.json", info)  # last: info.json's totals describe files that exist


@dataclass
class Episode:
    """One recorded episode as arrays: row t of every array is frame t."""

    index: int
    task: str
    task_index: int
    success: bool | None
    state: np.ndarray  # float32 (T, S)
    action: np.ndarray  # float32 (T, A) commanded targets
    action_executed: np.ndarray  # float32 (T, A)
    intervention: np.ndarray  # bool (T,)
    next_success: np.ndarray  # bool (T,)
    timestamp: np.ndarray  # float32 (T,) frame_index / fps
    frames: dict[str, np.ndarray] = field(default_factory=dict)  # camera -> uint8 (T, H, W, 3)
    recorded_time: np.ndarray | None = None  # float32 (T,) the recorder's clock; None in datasets without it

    @property
    def length(self) -> int:
        return int(self.state.shape[0])


class LeRobotDataset:
    """Reads a LeRobot v2.1 folder (ours or another's with the same columns) episode by episode."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        info_path = self.root / "meta" / "info.json"
        if not info_path.exists():
            raise DatasetError(f"{self.root}: not a LeRobot dataset (no meta/info.json)")
        self.info: dict[str, Any] = json.loads(info_path.read_text())
        version = str(self.info.get("codebase_version", ""))
        if not version.startswith("v2"):
            raise DatasetError(f"{self.root}: codebase_version {version!r}; this reader handles v2.x")
        self.episodes = read_jsonl(self.root / "meta" / "episodes.jsonl")
        self.tasks = {r["task_index"]: r["task"] for r in read_jsonl(self.root / "meta" / "tasks.jsonl")}
        stats_path = self.root / "meta" / "stats.json"
        self.stats: dict[str, Any] = json.loads(stats_path.read_text()) if stats_path.exists() else {}
        feats = self.info["features"]
        self.fps = float(self.info["fps"])
        self.state_names: list[str] = list(feats["observation.state"]["names"])
        self.action_names: list[str] = list(feats["action"]["names"])
        self.cameras: dict[str, tuple[int, int]] = {
            k[len(IMAGE_KEY_PREFIX) :]: (int(v["shape"][0]), int(v["shape"][1]))
            for k, v in feats.items()
            if v.get("dtype") == "video"
        }

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def num_frames(self) -> int:
        return int(sum(e["length"] for e in self.episodes))

    @property
    def instructions(self) -> list[str]:
        return [self.tasks[i] for i in sorted(self.tasks)]

    def _cache_path(self, ep: int) -> Path:
        return self.root / CACHE_DIR / f"episode_{ep:06d}.npz"

    def episode(self, i: int, *, decode: bool = True) -> Episode:
        """Episode ``i`` as arrays; ``decode=False`` skips the videos (fast metadata/array access).

        If ``build_cache()`` was run, the episode comes from its numpy cache (no pyarrow/av needed: a training
        machine with only numpy + torch can read the dataset).
        """
        if not 0 <= i < len(self.episodes):
            raise IndexError(f"episode {i} out of range 0..{len(self.episodes) - 1}")
        meta = self.episodes[i]
        ep = int(meta["episode_index"])
        cached = self._cache_path(ep)
        if cached.exists():
            with np.load(cached, allow_pickle=False) as z:
                if int(z["state"].shape[0]) == int(meta["length"]):
                    frames = {c: z[f"frames.{c}"] for c in self.cameras} if decode else {}
                    return Episode(
                        index=ep, task=str(z["task"]), task_index=int(z["task_index"]), success=meta.get("success"),
                        state=z["state"], action=z["action"], action_executed=z["action_executed"],
                        intervention=z["intervention"], next_success=z["next_success"], timestamp=z["timestamp"],
                        frames=frames, recorded_time=z["recorded_time"] if "recorded_time" in z.files else None,
                    )
        _, pq = import_pyarrow()
        chunk = ep // int(self.info.get("chunks_size", CHUNKS_SIZE))
        table = pq.read_table(self.root / self.info["data_path"].format(episode_chunk=chunk, episode_index=ep))
        cols = set(table.column_names)

        def vec(name: str) -> np.ndarray:
            return np.asarray(table.column(name).to_pylist(), dtype=np.float32)

        state = vec("observation.state")
        action = vec("action")
        n = state.shape[0]
        executed = vec("action.executed") if "action.executed" in cols else action.copy()
        intervention = (np.asarray(table.column("intervention").to_pylist(), dtype=bool)
                        if "intervention" in cols else np.zeros(n, dtype=bool))
        next_success = (np.asarray(table.column("next.success").to_pylist(), dtype=bool)
                        if "next.success" in cols else np.zeros(n, dtype=bool))
        timestamp = np.asarray(table.column("timestamp").to_pylist(), dtype=np.float32)
        recorded_time = (np.asarray(table.column("recorded_time").to_pylist(), dtype=np.float32)
                         if "recorded_time" in cols else None)
        task_index = int(table.column("task_index")[0].as_py())
        frames: dict[str, np.ndarray] = {}
        if decode:
            for cam in self.cameras:
                vpath = self.root / self.info["video_path"].format(
                    episode_chunk=chunk, video_key=IMAGE_KEY_PREFIX + cam, episode_index=ep)
                video = decode_video(vpath)
                if video.shape[0] < n:
                    raise DatasetError(f"{vpath}: {video.shape[0]} frames for {n} rows")
                frames[cam] = video[:n]
        return Episode(
            index=ep, task=self.tasks.get(task_index, meta["tasks"][0]), task_index=task_index,
            success=meta.get("success"), state=state, action=action, action_executed=executed,
            intervention=intervention, next_success=next_success, timestamp=timestamp, frames=frames,
            recorded_time=recorded_time,
        )

    def build_cache(self) -> int:
        """Decode every episode once into ``cache/episode_NNNNNN.npz``; returns how many were written."""
        n = 0
        for i, meta in enumerate(self.episodes):
            path = self._cache_path(int(meta["episode_index"]))
            if path.exists():
                continue
            e = self.episode(i)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.stem + ".tmp.npz")
            np.savez_compressed(tmp, task=np.array(e.task), task_index=np.array(e.task_index), state=e.state, action=e.action,
                     action_executed=e.action_executed, intervention=e.intervention, next_success=e.next_success,
                     timestamp=e.timestamp, **({} if e.recorded_time is None else {"recorded_time": e.recorded_time}),
                     **{f"frames.{c}": v for c, v in e.frames.items()})
            os.replace(tmp, path)
            n += 1
        return n

    def __iter__(self) -> Iterator[Episode]:
        for i in range(len(self)):
            yield self.episode(i)
