"""The policy checkpoint (`g1.pt`): weights, config, vocabulary and the metadata the server publishes.

Saved with torch.save and read only with torch.load(weights_only=True): plain dicts, lists, strings, numbers
and tensors, so a checkpoint can never execute code.

    {"format": "dit4dit-policy", "format_version": 1,
     "config": DiT4DiTConfig as a dict, "state_dict": {name: tensor}, "vocab": [word, ...],
     "metadata": {see docs/architecture.md, Policy}}
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .model import DiT4DiT, DiT4DiTConfig, preset_config
from .normalize import Normalizer
from .text import InstructionVocabulary, Vocabulary

FORMAT = "dit4dit-policy"
FORMAT_VERSION = 1
MODEL_NAME = "dit4dit"
REQUIRED_METADATA = ("model", "version", "preset", "cameras", "context_frames", "state_names", "action_names",
                     "action_space", "chunk_length", "control_rate_hz", "normalization", "instructions", "training")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, or not a valid dit4dit policy."""


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("dit4dit")
    except Exception:  # noqa: BLE001 - running from a source tree without an install
        return "0.0.0+unknown"


def build_metadata(cfg: DiT4DiTConfig, *, state_names: Sequence[str], action_names: Sequence[str],
                   state_norm: Normalizer, action_norm: Normalizer, control_rate_hz: float,
                   instructions: Sequence[str] | None, training: dict[str, Any]) -> dict[str, Any]:
    """The metadata dict of docs/architecture.md (JSON-able)."""
    if len(state_names) != cfg.state_dim or len(action_names) != cfg.action_dim:
        raise ValueError(f"{len(state_names)} state names / {len(action_names)} action names for a model with "
                         f"state_dim {cfg.state_dim} / action_dim {cfg.action_dim}")
    if len(state_norm.mean) != cfg.state_dim or len(action_norm.mean) != cfg.action_dim:
        raise ValueError("normalisation statistics do not match the model's state/action dims")
    return {
        "model": MODEL_NAME,
        "version": package_version(),
        "preset": cfg.preset,
        "cameras": {cfg.camera: {"height": cfg.image_size, "width": cfg.image_size}},
        "context_frames": cfg.context_frames,
        "state_names": list(state_names),
        "action_names": list(action_names),
        "action_space": "joint_position",
        "chunk_length": cfg.chunk_length,
        "control_rate_hz": float(control_rate_hz),
        "normalization": {"state": state_norm.to_dict(), "action": action_norm.to_dict()},
        "instructions": list(instructions) if instructions is not None else None,
        "training": dict(training),
    }


def save_checkpoint(path: str | Path, model: DiT4DiT, vocab: Vocabulary, metadata: dict[str, Any],
                    state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Write atomically (temporary file, then rename) so a crash never leaves a half-written g1.pt."""
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing:
        raise ValueError(f"metadata lacks {missing}")
    weights = state_dict if state_dict is not None else model.state_dict()
    blob = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.cfg.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in weights.items()},
        "vocab": list(vocab.tokens),
        "metadata": metadata,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, str(tmp))
    tmp.replace(path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict, validated; CheckpointError names what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (train one with dit4dit-train, or give the right path)")
    try:
        blob = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt zip, truncated file, or a pickle needing code: all refused
        raise CheckpointError(f"{path} is not a readable dit4dit checkpoint (corrupt, truncated, or not made by "
                              f"dit4dit-train; only weights-only files are accepted): {e}") from e
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a torch file but not a dit4dit policy checkpoint (no format={FORMAT!r})")
    if blob.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {blob.get('format_version')}; this dit4dit "
                              f"reads version {FORMAT_VERSION}")
    for key in ("config", "state_dict", "vocab", "metadata"):
        if key not in blob:
            raise CheckpointError(f"{path} lacks the {key!r} entry")
    missing = [k for k in REQUIRED_METADATA if k not in blob["metadata"]]
    if missing:
        raise CheckpointError(f"{path}: metadata lacks {missing}")
    return blob


def make_vocabulary(cfg: DiT4DiTConfig, tokens: Sequence[str]) -> Vocabulary | InstructionVocabulary:
    """The checkpoint's `vocab`: words (the project's text encoder) or the cached instructions (cosmos)."""
    return InstructionVocabulary(tokens) if cfg.backbone == "cosmos" else Vocabulary(tokens, cfg.max_text_len)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[DiT4DiT, Vocabulary, dict[str, Any]]:
    """(model in eval mode on device, vocabulary, metadata)."""
    blob = read_checkpoint(path)
    try:
        cfg = DiT4DiTConfig.from_dict(dict(blob["config"]))
        model = DiT4DiT(cfg)
        model.load_state_dict(blob["state_dict"])
        vocab = make_vocabulary(cfg, blob["vocab"])
        Normalizer.from_dict(blob["metadata"]["normalization"]["state"])
        Normalizer.from_dict(blob["metadata"]["normalization"]["action"])
    except (ValueError, RuntimeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: config, weights or metadata are inconsistent: {e}") from e
    return model.to(device).eval(), vocab, blob["metadata"]


def cosmos_model(base: DiT4DiTConfig, backbone_dir: str | Path, instructions: Sequence[str],
                 raw_text: torch.Tensor) -> DiT4DiT:
    """A DiT4DiT whose video backbone is the pretrained Cosmos in `backbone_dir` (local diffusers layout), with
    the instructions' text embeddings (n, L, C_text) projected and cached; the action DiT is freshly initialised.
    `base`: a cosmos preset's config (preset_config("cosmos-tiny", state_dim=..., ...))."""
    from dataclasses import replace

    from .cosmos import load_backbone

    if base.backbone != "cosmos":
        raise ValueError(f"preset {base.preset!r} has no cosmos backbone; choose one of cosmos-tiny, cosmos2.5-2b")
    transformer, vae, configs = load_backbone(backbone_dir, base.cosmos)
    cfg = replace(base, cosmos=configs, vocab_size=len(instructions), backbone_path=str(Path(backbone_dir).resolve()))
    model = DiT4DiT(cfg, backbone=(transformer, vae))
    model.text.fill(transformer, raw_text)
    return model


def perturb_zero_init(model: torch.nn.Module, std: float, generator: torch.Generator) -> None:
    """Give every all-zero parameter small random values (an untrained model whose output depends on its inputs)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 0 and not p.any():
                p.copy_(torch.randn(p.shape, generator=generator) * std)


def random_policy_parts(preset: str = "tiny", *, state_names: Sequence[str] | None = None,
                        action_names: Sequence[str] | None = None, instructions: Sequence[str] | None = None,
                        control_rate_hz: float = 30.0, action_std: float = 0.05, seed: int = 0,
                        device: str | torch.device = "cpu", **overrides: Any) -> tuple[DiT4DiT, Vocabulary, dict[str, Any]]:
    """(model, vocabulary, metadata) of an untrained but valid policy; see make_random_checkpoint.
    device: where the model is built (a paper-shape model is built much faster on the GPU)."""
    from dit4dit.drivers import g1_spec

    arm = [g1_spec.JOINT_NAMES[i] for i in g1_spec.ARM_JOINTS]
    state_names = list(state_names or arm)
    action_names = list(action_names or arm)
    instructions = list(instructions or ["pick up the red block", "push the blue block to the target"])
    cfg = preset_config(preset, state_dim=len(state_names), action_dim=len(action_names), **overrides)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    with torch.device(device):
        model = DiT4DiT(cfg)
    perturb_zero_init(model, 0.02, g)
    vocab = Vocabulary.build(instructions, cfg.max_text_len, cfg.vocab_size)

    def centre(names: list[str]) -> np.ndarray:
        home = {n: float(g1_spec.HOME_POSE[i]) for i, n in enumerate(g1_spec.JOINT_NAMES)}
        return np.array([home.get(n, 0.0) for n in names], dtype=np.float32)

    state_norm = Normalizer(centre(state_names), np.full(len(state_names), action_std, np.float32))
    action_norm = Normalizer(centre(action_names), np.full(len(action_names), action_std, np.float32))
    metadata = build_metadata(cfg, state_names=state_names, action_names=action_names, state_norm=state_norm,
                              action_norm=action_norm, control_rate_hz=control_rate_hz, instructions=instructions,
                              training={"random": True, "seed": seed, "steps": 0})
    return model, vocab, metadata


def make_random_checkpoint(path: str | Path, preset: str = "tiny", *, state_names: Sequence[str] | None = None,
                           action_names: Sequence[str] | None = None, instructions: Sequence[str] | None = None,
                           control_rate_hz: float = 30.0, action_std: float = 0.05, seed: int = 0,
                           **overrides: Any) -> Path:
    """An untrained but valid checkpoint for tests of the server and controller.

    Defaults: the 14 G1 arm joints (g1_spec order) as state and actions, normalisation centred on the home pose
    with std `action_std` rad, so sampled chunks stay near home. Zero-initialised layers get small random
    weights so outputs depend on the inputs (images, state, instruction, noise)."""
    model, vocab, metadata = random_policy_parts(preset, state_names=state_names, action_names=action_names,
                                                 instructions=instructions, control_rate_hz=control_rate_hz,
                                                 action_std=action_std, seed=seed, **overrides)
    save_checkpoint(path, model, vocab, metadata)
    return Path(path)
