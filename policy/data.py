"""Training data for dit4dit-train: LeRobot datasets (through dit4dit.datasets) or a synthetic task.

Everything is held in memory as flat arrays over all frames (the sim datasets are small), and a training
sample at frame j of an episode is gathered by index arithmetic:
  context frames  j - (Tc - 1), ..., j          (clamped at the episode start; the current frame last)
  future frames   j + s, j + 2 s, ..., j + Tf s (s = future_stride; clamped at the episode end)
  state           j
  actions         j, ..., j + H - 1             (clamped: the last command is held past the episode end)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from dit4dit.drivers.cameras.resize import area_resize

SYNTHETIC_TASKS = ("moving_dot",)


class TrainingDataError(ValueError):
    """The training data cannot be used (missing, wrong layout, or not matching the model)."""


@dataclass
class Episode:
    frames: np.ndarray  # uint8 (T, S, S, 3) at the model's image size
    state: np.ndarray  # float32 (T, Ds)
    action: np.ndarray  # float32 (T, Da)
    instruction: str


@dataclass
class TrainingData:
    episodes: list[Episode]
    state_names: list[str]
    action_names: list[str]
    fps: float
    source: str
    camera: str
    # flat views over all episodes, built by finalize()
    frames: np.ndarray = field(init=False, repr=False)
    state: np.ndarray = field(init=False, repr=False)
    action: np.ndarray = field(init=False, repr=False)
    episode_of: np.ndarray = field(init=False, repr=False)
    start_of: np.ndarray = field(init=False, repr=False)
    length_of: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.episodes:
            raise TrainingDataError(f"{self.source}: no episodes")
        self.frames = np.concatenate([e.frames for e in self.episodes])
        self.state = np.concatenate([e.state for e in self.episodes]).astype(np.float32)
        self.action = np.concatenate([e.action for e in self.episodes]).astype(np.float32)
        lengths = np.array([len(e.state) for e in self.episodes])
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self.episode_of = np.repeat(np.arange(len(self.episodes)), lengths)
        self.start_of = np.repeat(starts, lengths)
        self.length_of = np.repeat(lengths, lengths)
        if not (np.isfinite(self.state).all() and np.isfinite(self.action).all()):
            raise TrainingDataError(f"{self.source}: state or action contains NaN/inf")

    @property
    def num_frames(self) -> int:
        return len(self.state)

    @property
    def instructions(self) -> list[str]:
        return list(dict.fromkeys(e.instruction for e in self.episodes))

    def windows(self, index: np.ndarray, context_frames: int, future_frames: int, future_stride: int,
                chunk_length: int) -> dict[str, np.ndarray]:
        """Flat frame indices of each sample's context frames (B, Tc), future frames (B, Tf), action steps (B, H)."""
        start, length = self.start_of[index], self.length_of[index]
        last = start + length - 1
        ctx = index[:, None] + np.arange(-(context_frames - 1), 1)[None]
        ctx = np.maximum(ctx, start[:, None])
        fut = index[:, None] + future_stride * np.arange(1, future_frames + 1)[None]
        fut = np.minimum(fut, last[:, None])
        act = np.minimum(index[:, None] + np.arange(chunk_length)[None], last[:, None])
        return {"context": ctx, "future": fut, "actions": act, "episode": self.episode_of[index]}


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 (T, H, W, 3) -> uint8 (T, size, size, 3), area-averaged (the same resize Policy.infer applies)."""
    return area_resize(frames, (size, size))


def load_training_data(spec: str, image_size: int, camera: str = "head", *, seed: int = 0,
                       synthetic_episodes: int = 32) -> TrainingData:
    """`synthetic:<task>` or the path of a LeRobot v2.1 dataset folder."""
    if spec.startswith("synthetic:"):
        task = spec.split(":", 1)[1]
        if task not in SYNTHETIC_TASKS:
            raise TrainingDataError(f"unknown synthetic task {task!r}; available: {', '.join(SYNTHETIC_TASKS)}")
        return moving_dot_dataset(synthetic_episodes, image_size, seed=seed)
    return load_lerobot(spec, image_size, camera)


def parse_camera(spec: str) -> tuple[str, str]:
    """``--camera``: ``NAME`` (the dataset's camera and the policy's are both NAME) or ``POLICY=DATASET``
    (e.g. ``head=cam_left_high``: train the policy's ``head`` input on the dataset's ``cam_left_high``)."""
    policy_name, _, dataset_key = spec.partition("=")
    dataset_key = dataset_key or policy_name
    if not policy_name or not dataset_key:
        raise TrainingDataError(f"--camera {spec!r}: give NAME or POLICY_NAME=DATASET_CAMERA")
    return policy_name, dataset_key.removeprefix("observation.images.")


def load_lerobot(path: str | Path, image_size: int, camera: str = "head") -> TrainingData:
    """A LeRobot dataset folder. In Unitree's G1 Dex3 layout (28-D, datasets/unitree_g1.py) the policy, which
    is arm-only, trains on the 14 arm joints under the project's joint names."""
    from dit4dit.datasets import DatasetError, LeRobotDataset
    from dit4dit.datasets import unitree_g1

    root = Path(path)
    if not root.exists():
        raise TrainingDataError(f"dataset {root} does not exist (record one with dit4dit-collect, or use "
                                f"--data synthetic:moving_dot)")
    try:
        ds = LeRobotDataset(root)
    except DatasetError as e:
        raise TrainingDataError(str(e)) from e
    _, key = parse_camera(camera)
    if key not in ds.cameras:
        raise TrainingDataError(f"{root}: no camera {key!r} in the dataset (it has {sorted(ds.cameras)}); "
                                f"pass --camera NAME or --camera POLICY_NAME=DATASET_CAMERA")
    state_names, action_names = unitree_g1.flat_names(ds.state_names), unitree_g1.flat_names(ds.action_names)
    cols = None
    if unitree_g1.is_unitree_layout(state_names) and unitree_g1.is_unitree_layout(action_names):
        cols = unitree_g1.arm_columns()
        state_names = action_names = list(unitree_g1.ARM_NAMES)
    episodes = []
    for ep in ds:
        state, action = (ep.state, ep.action) if cols is None else (ep.state[:, cols], ep.action[:, cols])
        episodes.append(Episode(resize_frames(ep.frames[key], image_size), state, action, ep.task))
    return TrainingData(episodes, state_names, action_names, ds.fps, str(root), key)


# -- synthetic: two dots circling in opposite directions; the instruction names the one to follow

DOT_COLOURS = {"red": (230, 40, 40), "blue": (40, 80, 230)}


def moving_dot_dataset(num_episodes: int, image_size: int, *, length: int = 48, seed: int = 0) -> TrainingData:
    """Each episode: a red dot circling counter-clockwise and a blue dot clockwise, each around its own random
    centre and radius; the instruction 'follow the red/blue dot' picks one. State = that dot's (x, y) now,
    actions = its (x, y) at the next steps. The circle's centre is only visible in the image, so the actions
    need the frames (and the instruction), not the state alone."""
    rng = np.random.default_rng(seed)
    render = 64
    episodes = []
    for e in range(num_episodes):
        colour = ("red", "blue")[e % 2]
        paths = {}
        for name, direction in (("red", 1.0), ("blue", -1.0)):
            centre = rng.uniform(0.35, 0.65, size=2)
            radius = rng.uniform(0.12, 0.25)
            phase = rng.uniform(0, 2 * np.pi)
            angle = phase + direction * 0.15 * np.arange(length + 1)
            paths[name] = centre + radius * np.stack([np.cos(angle), np.sin(angle)], axis=-1)  # (T+1, 2) in [0, 1]
        frames = np.full((length, render, render, 3), 30, dtype=np.uint8)
        for t in range(length):
            for name, path in paths.items():
                x, y = (path[t] * render * 16).astype(int)  # 4 fractional bits: sub-pixel positions
                cv2.circle(frames[t], (int(x), int(y)), 3 * 16, DOT_COLOURS[name], -1, cv2.LINE_AA, shift=4)
        target = paths[colour].astype(np.float32)
        episodes.append(Episode(resize_frames(frames, image_size), target[:-1], target[1:],
                                f"follow the {colour} dot"))
    return TrainingData(episodes, ["dot_x", "dot_y"], ["dot_x", "dot_y"], 10.0, "synthetic:moving_dot", "head")
