"""Policy inference: numpy preprocessing -> engine.features -> engine.sample -> un-normalise.

    policy = Policy.from_checkpoint("g1.pt", device="cpu")
    chunk = policy.infer({"images": {"head": rgb_uint8}, "state": q_arm, "instruction": "pick up the red block"})

The engine is swappable (`policy.engine = ...`): anything with the InferenceEngine interface over fixed-shape
float32/int64 numpy arrays (torch here; onnxruntime / TensorRT in policy/backends*.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from dit4dit.drivers.cameras.resize import area_resize

from .checkpoint import load_checkpoint
from .model import ActionSampler, DiT4DiT, FeatureNet
from .normalize import Normalizer
from .text import UnknownInstructionError, Vocabulary


class ObservationError(ValueError):
    """An observation does not match what the policy needs; the message names the field."""


@runtime_checkable
class InferenceEngine(Protocol):
    name: str

    def features(self, frames: np.ndarray, text_tokens: np.ndarray) -> np.ndarray: ...

    def sample(self, features: np.ndarray, state: np.ndarray, noise: np.ndarray, prefix: np.ndarray,
               prefix_weight: np.ndarray) -> np.ndarray: ...


class TorchEngine:
    """The reference engine: FeatureNet and ActionSampler run eagerly in PyTorch."""

    name = "torch"

    def __init__(self, model: DiT4DiT, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.feature_net = FeatureNet(model).to(self.device).eval()
        self.action_sampler = ActionSampler(model).to(self.device).eval()

    def _t(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).to(self.device)

    @torch.inference_mode()
    def features(self, frames: np.ndarray, text_tokens: np.ndarray) -> np.ndarray:
        return self.feature_net(self._t(frames), self._t(text_tokens)).float().cpu().numpy()

    @torch.inference_mode()
    def sample(self, features: np.ndarray, state: np.ndarray, noise: np.ndarray, prefix: np.ndarray,
               prefix_weight: np.ndarray) -> np.ndarray:
        out = self.action_sampler(self._t(features), self._t(state), self._t(noise), self._t(prefix),
                                  self._t(prefix_weight))
        return out.float().cpu().numpy()


def frames_to_model(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 RGB (..., H, W, 3) -> float32 (..., 3, size, size) in [-1, 1]; resized with area averaging.

    Training applies this same function to recorded frames, so inference sees what training saw."""
    lead = frames.shape[:-3]
    flat = area_resize(frames.reshape(-1, *frames.shape[-3:]), (size, size))
    out = flat.astype(np.float32) * (2.0 / 255.0) - 1.0
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2)).reshape(*lead, 3, size, size)


def prefix_weights(horizon: int, prefix_length: int, n_frozen: int) -> np.ndarray:
    """float32 (H,): 1 for the frozen steps, then a linear ramp down over the rest of the prefix, 0 after it."""
    w = np.zeros(horizon, dtype=np.float32)
    w[:n_frozen] = 1.0
    ramp = prefix_length - n_frozen
    if ramp > 0:
        w[n_frozen:prefix_length] = 1.0 - np.arange(1, ramp + 1, dtype=np.float32) / (ramp + 1)
    return w


class Policy:
    def __init__(self, model: DiT4DiT, vocab: Vocabulary, metadata: dict[str, Any],
                 device: str | torch.device = "cpu") -> None:
        self.model = model
        self.cfg = model.cfg
        self.vocab = vocab
        self.metadata = metadata
        self.state_norm = Normalizer.from_dict(metadata["normalization"]["state"])
        self.action_norm = Normalizer.from_dict(metadata["normalization"]["action"])
        self.engine: InferenceEngine = TorchEngine(model, device)
        # cosmos backbone: embeds instructions the checkpoint has not cached (cosmos.CosmosTextEncoder); None: refuse
        self.text_encoder: Any = None

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> Policy:
        model, vocab, metadata = load_checkpoint(path, device)
        return cls(model, vocab, metadata, device)

    @property
    def chunk_length(self) -> int:
        return self.cfg.chunk_length

    @property
    def action_dim(self) -> int:
        return self.cfg.action_dim

    # -- preprocessing

    def _images(self, images: Any, batch: int | None) -> np.ndarray:
        cam, T = self.cfg.camera, self.cfg.context_frames
        if not isinstance(images, Mapping):
            raise ObservationError(f"obs['images'] must be a dict of camera name -> uint8 array, got {type(images).__name__}")
        if cam not in images:
            raise ObservationError(f"obs['images'] has no camera {cam!r} (got {sorted(images)}); this policy needs "
                                   f"cameras [{cam!r}]")
        img = np.asarray(images[cam])
        field = f"obs['images'][{cam!r}]"
        lead = () if batch is None else (batch,)
        want = "(" + ", ".join([*(["B"] if batch is not None else []), *(["T"] if T > 1 else ["[T]"]), "H", "W", "3"]) + ")"
        if img.dtype != np.uint8:
            raise ObservationError(f"{field} must be uint8 RGB {want}, got dtype {img.dtype}")
        base = len(lead)
        if img.ndim == base + 3 and T == 1:
            img = img[..., None, :, :, :] if batch is not None else img[None]
        if img.ndim != base + 4 or img.shape[-1] != 3 or img.shape[:base] != lead or img.shape[base] != T:
            raise ObservationError(f"{field} must have shape {want} with T = {T} context frames, got {img.shape}")
        if min(img.shape[-3:-1]) < 8:
            raise ObservationError(f"{field} is {img.shape[-3]}x{img.shape[-2]} pixels; that is not a camera image")
        frames = frames_to_model(img, self.cfg.image_size)  # (..., T, 3, S, S)
        return frames if batch is not None else frames[None]

    def _state(self, state: Any, batch: int | None) -> np.ndarray:
        S = self.cfg.state_dim
        want = (S,) if batch is None else (batch, S)
        arr = np.asarray(state)
        if arr.dtype.kind != "f":
            raise ObservationError(f"obs['state'] must be float32 {want} ({', '.join(self.metadata['state_names'][:3])}, "
                                   f"...), got dtype {arr.dtype}")
        if arr.shape != want:
            raise ObservationError(f"obs['state'] must have shape {want}, got {arr.shape}")
        if not np.isfinite(arr).all():
            bad = np.argwhere(~np.isfinite(arr.reshape(-1, S)))[0][-1]
            raise ObservationError(f"obs['state'] contains NaN or inf (first at {self.metadata['state_names'][bad]!r})")
        out = self.state_norm.normalize(arr.astype(np.float32))
        return out if batch is not None else out[None]

    def _instruction(self, instruction: Any, batch: int | None) -> np.ndarray:
        if batch is None:
            if not isinstance(instruction, str):
                raise ObservationError(f"obs['instruction'] must be a str, got {type(instruction).__name__}")
            texts = [instruction]
        elif not all(isinstance(s, str) for s in instruction) or len(instruction) != batch:
            raise ObservationError(f"obs['instruction'] must be a list of {batch} str in the batched form")
        else:
            texts = list(instruction)
        try:
            return self.vocab.encode(texts)
        except UnknownInstructionError as e:
            if self.text_encoder is None:
                raise ObservationError(f"obs['instruction']: {e}") from e
        self.add_instructions([t for t in dict.fromkeys(texts) if self.vocab.unknown_words(t)])
        return self.vocab.encode(texts)

    def add_instructions(self, texts: Sequence[str]) -> None:
        """Embed new instructions with `text_encoder` and append them to the cached contexts (cosmos backbone,
        torch engine: an exported graph holds the cache as a constant)."""
        if not texts:
            return
        if self.engine.name != "torch":
            raise ObservationError(f"obs['instruction']: {texts[0]!r} is not cached, and the {self.engine.name} engine "
                                   f"holds the cached instructions as constants; serve with --backend torch to embed it")
        from .cosmos import project_text
        from .text import InstructionVocabulary

        table = self.model.text
        with torch.no_grad():
            rows = project_text(self.model.video.transformer, self.text_encoder(texts).to(table.context.device))
            table.context = torch.cat([table.context, rows.to(table.context.dtype)])
        self.vocab = InstructionVocabulary([*self.vocab.tokens, *texts])
        self.metadata["instructions"] = list(self.vocab.tokens)

    def preprocess(self, obs: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int | None]:
        """(frames (B, T, 3, S, S), text tokens (B, L), normalised state (B, S), batch size or None if single)."""
        if not isinstance(obs, Mapping):
            raise ObservationError(f"the observation must be a dict, got {type(obs).__name__}")
        for key in ("images", "state", "instruction"):
            if key not in obs:
                raise ObservationError(f"obs[{key!r}] is missing; an observation has 'images', 'state', 'instruction'")
        instruction = obs["instruction"]
        batch = None if isinstance(instruction, str) else len(instruction) if isinstance(instruction, Sequence) else None
        if batch is None and not isinstance(instruction, str):
            raise ObservationError(f"obs['instruction'] must be a str (or a list of str when batched), "
                                   f"got {type(instruction).__name__}")
        if batch == 0:
            raise ObservationError("obs['instruction'] is an empty list: a batch needs at least one observation")
        return (self._images(obs["images"], batch), self._instruction(instruction, batch),
                self._state(obs["state"], batch), batch)

    def _noise(self, noise: Any, B: int, batched: bool) -> np.ndarray:
        H, A = self.cfg.chunk_length, self.cfg.action_dim
        if noise is None:
            return torch.randn(B, H, A).numpy()
        arr = np.asarray(noise)
        want = (B, H, A) if batched else (H, A)
        if arr.dtype.kind != "f" or arr.shape != want or not np.isfinite(arr).all():
            raise ObservationError(f"noise must be finite float32 {want}, got {arr.dtype} {arr.shape}")
        return arr.astype(np.float32).reshape(B, H, A)

    def _prefix(self, prefix: Any, B: int, batched: bool) -> tuple[np.ndarray, np.ndarray]:
        H, A = self.cfg.chunk_length, self.cfg.action_dim
        actions = np.zeros((B, H, A), dtype=np.float32)
        weights = np.zeros((B, H), dtype=np.float32)
        if prefix is None:
            return actions, weights
        if not (isinstance(prefix, Sequence) and len(prefix) == 2):
            raise ObservationError("prefix must be (actions (P, A) in physical units, n_frozen int)")
        arr, n_frozen = np.asarray(prefix[0]), prefix[1]
        P = arr.shape[-2] if arr.ndim >= 2 else -1
        want = f"({'B, ' if batched else ''}P, {A}) with P <= {H}"
        if arr.dtype.kind != "f" or arr.ndim != (3 if batched else 2) or arr.shape[-1] != A or not 0 < P <= H \
                or (batched and arr.shape[0] != B):
            raise ObservationError(f"prefix actions must be float {want}, got {arr.dtype} {arr.shape}")
        if not np.isfinite(arr).all():
            raise ObservationError("prefix actions contain NaN or inf")
        if isinstance(n_frozen, bool) or not isinstance(n_frozen, (int, np.integer)) or not 0 <= n_frozen <= P:
            raise ObservationError(f"prefix n_frozen must be an int in 0..{P} (the prefix length), got {n_frozen!r}")
        actions[:, :P] = self.action_norm.normalize(arr.astype(np.float32).reshape(B, P, A))
        weights[:] = prefix_weights(H, P, int(n_frozen))
        return actions, weights

    # -- inference

    def infer(self, obs: Mapping[str, Any], noise: np.ndarray | None = None,
              prefix: tuple[np.ndarray, int] | None = None) -> np.ndarray:
        """Action chunk float32 (H, A) in physical units (rad), or (B, H, A) for a batched observation."""
        frames, tokens, state, batch = self.preprocess(obs)
        B = frames.shape[0]
        noise_arr = self._noise(noise, B, batch is not None)
        prefix_arr, weight_arr = self._prefix(prefix, B, batch is not None)
        features = self.engine.features(frames, tokens)
        actions = self.engine.sample(features, state, noise_arr, prefix_arr, weight_arr)
        out = self.action_norm.unnormalize(actions)
        if batch is None:
            out = out[0]
        if prefix is not None:
            # frozen steps are exactly the previous chunk's (the network path keeps them up to float rounding)
            frozen = int(prefix[1])
            out[..., :frozen, :] = np.asarray(prefix[0], dtype=np.float32)[..., :frozen, :]
        return out
