"""dit4dit-train: train a DiT4DiT policy on a LeRobot dataset (or a synthetic task) into a g1.pt checkpoint.

    dit4dit-train --data data/g1_tasks --preset small --out g1.pt --steps 10000
    dit4dit-train --data synthetic:moving_dot --preset tiny --out /tmp/dot.pt --steps 300
    torchrun --nproc-per-node 2 -m dit4dit.policy.train --data ... --preset small --out g1.pt   # DDP (gloo on CPU)
    torchrun --nproc-per-node 2 -m dit4dit.policy.train --data ... --preset paper ... --parallel fsdp   # FSDP
    dit4dit-train --data DIR --preset cosmos2.5-2b --backbone Cosmos-Predict2.5-2B/ --text-embeddings text.pt \
        --out g1.pt --precision bf16                   # the pretrained Cosmos video backbone (policy/cosmos.py)

Two stages in one run (and one resumable step counter):
  1. frame tokenizer (presets without a pretrained one): the conv autoencoder learns to reconstruct the training
     frames for --tokenizer-steps steps; then its per-channel latent statistics are measured and it is frozen.
     A separate stage (not a joint reconstruction loss) keeps the latent space fixed while the DiTs learn on it,
     and lets every frame be encoded once, up front, which makes the DiT stage several times faster on a CPU.
  2. policy: the dual flow-matching objective (policy/flow.py) on the video DiT and action DiT (or the image
     feature encoder and action DiT with --ablation image_features), AdamW, warm-up + cosine LR, gradient
     clipping, EMA weights (what g1.pt holds).
Checkpoints: --out (EMA weights + metadata, what the server loads) and <out stem>.resume.pt (raw weights, EMA,
optimiser, step) every --save-every steps and at the end; --resume continues bit-for-bit from the latter.
Cosmos presets (cosmos-tiny, cosmos2.5-2b): the transformer and Wan VAE load from --backbone DIR (local files
only); no stage 1 (the VAE is pretrained and frozen, its latent statistics are its config's); each batch's clip
(context frame + 4 x future_frames frames) is encoded by the VAE; the text is --text-embeddings (raw text-encoder
outputs per instruction, cosmos.save_text_embeddings) or --text-encoder DIR (embedded here), projected once by the transformer's crossattn_proj (kept
frozen so the checkpoint's per-instruction cache stays exact). Defaults: lr 1e-4 (action model), --video-lr 1e-5
(backbone, the official recipe), gradient checkpointing of the video blocks; --freeze-backbone trains only the
action model. A memory plan (weights, gradients, AdamW, EMA, activation estimate) is printed before step 1.
Random draws come from a generator seeded by (seed, rank, step), so a run is deterministic with --seed and a
resumed run repeats the uninterrupted one.
--parallel fsdp (torchrun, world size > 1; on one process it is a no-op with a message): stage 1 stays DDP (the
tokenizer is small); for stage 2 every transformer block (video/image DiT, action DiT, text encoder) and then the
whole loss module are sharded with FSDP2 `fully_shard`, the optimiser is built after sharding, the EMA is kept per
shard and gathered to full tensors only when saving (a collective: every rank gathers, rank 0 writes). Under fsdp
only --out is written (no .resume.pt): --resume and --stop-after are DDP-only for now and refused.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn

from .checkpoint import build_metadata, save_checkpoint
from .data import TrainingData, TrainingDataError, load_training_data, parse_camera
from .flow import dual_flow_matching_loss
from .model import PRESETS, DiT4DiT, DiT4DiTConfig, DiTBlock, EncoderBlock, load_component, preset_config, save_component
from .normalize import Normalizer
from .text import InstructionVocabulary, Vocabulary

RESUME_FORMAT = "dit4dit-train-state"


class TrainError(RuntimeError):
    pass


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dit4dit-train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="LeRobot v2.1 dataset folder, or synthetic:moving_dot")
    p.add_argument("--preset", default="small", choices=sorted(PRESETS))
    p.add_argument("--out", required=True, help="checkpoint to write (e.g. g1.pt)")
    p.add_argument("--steps", type=int, default=10000, help="policy (DiT) training steps")
    p.add_argument("--tokenizer-steps", type=int, default=1000, help="frame autoencoder steps (stage 1)")
    p.add_argument("--batch-size", type=int, default=16, help="per process")
    p.add_argument("--tokenizer-batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=None, help="default 3e-4; cosmos presets 1e-4 (the action model)")
    p.add_argument("--video-lr", type=float, default=None,
                   help="LR of the video DiT (default: --lr; cosmos presets 1e-5, the backbone)")
    p.add_argument("--backbone", metavar="DIR", default=None,
                   help="cosmos presets: local Cosmos-Predict2.5 folder in the diffusers layout (transformer/, vae/)")
    p.add_argument("--text-embeddings", metavar="FILE", default=None,
                   help="cosmos presets: raw text-encoder outputs per instruction (cosmos.save_text_embeddings)")
    p.add_argument("--text-encoder", metavar="DIR", default=None,
                   help="cosmos presets, instead of --text-embeddings: embed the dataset's instructions with this local "
                        "Qwen2.5-VL text encoder (cosmos.CosmosTextEncoder)")
    p.add_argument("--freeze-backbone", action="store_true", help="cosmos presets: train only the action model")
    p.add_argument("--no-gradient-checkpointing", action="store_true",
                   help="cosmos presets: keep every video block's activations (default: recompute them in backward)")
    p.add_argument("--tokenizer-lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: min(500, steps/10))")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from <out stem>.resume.pt")
    p.add_argument("--ablation", choices=["image_features"], default=None,
                   help="condition the action DiT on plain per-frame image features instead of video hidden states")
    p.add_argument("--camera", default="head",
                   help="NAME, or POLICY_NAME=DATASET_CAMERA (e.g. head=cam_left_high for Unitree's G1 datasets)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="model config override, e.g. --override image_size=96 (repeatable)")
    p.add_argument("--flow", action="append", default=[], metavar="KEY=VALUE",
                   help="flow config override, e.g. --flow action_trains_video=false --flow action_noise_repeats=8")
    p.add_argument("--synthetic-episodes", type=int, default=32)
    p.add_argument("--val-episodes", type=int, default=0, metavar="N",
                   help="hold out N evenly spaced episodes; at the end, report the sampled chunks' error on them (and on "
                        "training episodes) in the log and the checkpoint's training metadata")
    p.add_argument("--save-every", type=int, default=1000)
    p.add_argument("--save-components", metavar="DIR", default=None,
                   help="also write the trained frame tokenizer and text encoder (with its vocabulary) to DIR, "
                        "for a larger preset's tokenizer_path / text_encoder_path")
    p.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="end this invocation after N more steps (state saved; continue with --resume): for time-sliced jobs")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: autocast the DiT forward passes (GPUs; weights, optimiser and EMA stay fp32)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--parallel", choices=["ddp", "fsdp"], default="ddp",
                   help="multi-process strategy under torchrun: ddp, or fsdp (shards the policy stage; large presets)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.steps < 0 or args.tokenizer_steps < 0 or args.batch_size < 1:
        p.error("--steps/--tokenizer-steps must be >= 0 and --batch-size >= 1")
    return args


def parse_overrides(items: list[str], what: str) -> dict[str, Any]:
    out = {}
    for item in items:
        if "=" not in item:
            raise TrainError(f"{what} override {item!r} must look like KEY=VALUE")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def build_config(args: argparse.Namespace, data: TrainingData) -> DiT4DiTConfig:
    overrides = parse_overrides(args.override, "--override")
    flow_overrides = parse_overrides(args.flow, "--flow")
    base = preset_config(args.preset)
    if flow_overrides:
        fdict = base.flow.to_dict()
        unknown = set(flow_overrides) - set(fdict)
        if unknown:
            raise TrainError(f"unknown --flow keys {sorted(unknown)}; known: {sorted(fdict)}")
        fdict.update(flow_overrides)
        overrides["flow"] = fdict
    if args.ablation:
        overrides["conditioning"] = args.ablation
    overrides.update(state_dim=len(data.state_names), action_dim=len(data.action_names),
                     camera=parse_camera(args.camera)[0])
    d = base.to_dict()
    unknown = set(overrides) - set(d)
    if unknown:
        raise TrainError(f"unknown --override keys {sorted(unknown)}; known: {sorted(d)}")
    d.update(overrides)
    return DiT4DiTConfig.from_dict(d)


# -- distributed helpers


def dist_setup() -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def step_generator(seed: int, rank: int, step: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + rank * 7_919 + step) % (2**63))
    return g


def lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class EMA:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        for k, v in model.state_dict().items():
            if k in trainable:  # frozen parts and buffers are copied verbatim (an average would drift them by rounding)
                self.shadow[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
            else:
                self.shadow[k].copy_(v)

    def copy_buffers(self, model: nn.Module) -> None:
        """Take the frozen parts (tokenizer weights and latent statistics) verbatim."""
        for k, v in model.state_dict().items():
            if k.startswith("tokenizer.") or k == "extraction_noise":
                self.shadow[k].copy_(v)


def full_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """FSDP-sharded (DTensor) entries gathered to full tensors: a collective, every rank must call it."""
    from torch.distributed.tensor import DTensor

    return {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in state.items()}


def memory_plan(model: DiT4DiT, batch: int, precision: str) -> str:
    """Bytes the step needs, before it runs: weights, gradients, AdamW moments and EMA of the trainable
    parameters, frozen weights, and an estimate of the video blocks' activations (checkpointed: one block's
    internals plus each block's input; otherwise every block's internals)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    cfg = model.cfg
    act_bytes = 2 if precision == "bf16" else 4
    tokens, width = cfg.condition_tokens, cfg.video_width
    per_block = batch * tokens * width * act_bytes * (12 + 2 * cfg.mlp_ratio)  # q k v, attention out, norms, MLP
    checkpointed = getattr(getattr(model, "video", None), "gradient_checkpointing", False)
    passes = 2  # the video-loss pass and the extraction pass
    acts = passes * (per_block + cfg.video_depth * batch * tokens * width * act_bytes if checkpointed
                     else cfg.video_depth * per_block)
    gib = lambda n: f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"  # noqa: E731
    rows = [("trainable weights (fp32)", 4 * trainable), ("gradients (fp32)", 4 * trainable),
            ("AdamW moments (fp32)", 8 * trainable), ("EMA (fp32)", 4 * trainable), ("frozen weights (fp32)", 4 * frozen),
            (f"video activations, batch {batch}, {'checkpointed' if checkpointed else 'kept'} (estimate)", acts)]
    total = sum(n for _, n in rows)
    lines = [f"memory plan ({cfg.preset}, {trainable / 1e6:.2f} M trainable + {frozen / 1e6:.2f} M frozen parameters):"]
    lines += [f"  {name:<55} {gib(n):>10}" for name, n in rows]
    lines.append(f"  {'total, one process, unsharded':<55} {gib(total):>10}")
    return "\n".join(lines)


def cosmos_batch(model: DiT4DiT, data: TrainingData, text: torch.Tensor, state: torch.Tensor, actions: torch.Tensor,
                 index: np.ndarray) -> dict[str, torch.Tensor]:
    """make_batch for the cosmos backbone: each sample's clip (context frame, then temporal_factor x future_frames
    frames at future_stride) encoded by the frozen VAE, so latent frame 1.. is the future, as Cosmos was trained."""
    cfg, device = model.cfg, model.extraction_noise.device
    factor = model.tokenizer.temporal_factor
    w = data.windows(index, 1, factor * cfg.future_frames, cfg.future_stride, cfg.chunk_length)
    clip = np.concatenate([w["context"], w["future"]], axis=1)  # (B, 1 + 4 Tf)
    frames = frames_tensor(data.frames[clip.reshape(-1)]).to(device).reshape(len(index), clip.shape[1], 3,
                                                                             cfg.image_size, cfg.image_size)
    with torch.no_grad():
        z = model.tokenizer.encode_video(frames)  # (B, 1 + Tf, C, h, w)
    return {"context": z[:, :1], "future": z[:, 1:], "text": text[torch.from_numpy(w["episode"])],
            "state": state[torch.from_numpy(index)], "actions": actions[torch.from_numpy(w["actions"])]}


def shard_policy(step_module: nn.Module, model: DiT4DiT, world: int, device: torch.device) -> None:
    """FSDP2: each transformer block, then the loss module as the root (its forward is the one the loss calls, so
    the parameters outside blocks are gathered for the whole step). The frozen tokenizer is left unsharded."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # DiTBlock returns a reshape (a view) of its output; nothing modifies block outputs in place, so the warning
    # about in-place ops on views skipping the pre-backward hook does not apply (the fsdp test matches DDP exactly)
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(device.type, (world,))
    blocks: tuple[type, ...] = (DiTBlock, EncoderBlock)
    if model.cfg.backbone == "cosmos":
        from diffusers.models.transformers.transformer_cosmos import CosmosTransformerBlock

        blocks += (CosmosTransformerBlock,)
    for m in model.modules():
        if isinstance(m, blocks):
            fully_shard(m, mesh=mesh)
    fully_shard(step_module, mesh=mesh, ignored_params=set(model.tokenizer.parameters()))


class TrainStep(nn.Module):
    """The loss as a module, so DDP can wrap it."""

    def __init__(self, model: DiT4DiT) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        return dual_flow_matching_loss(self.model, batch, generator)


class TokenizerStep(nn.Module):
    def __init__(self, model: DiT4DiT) -> None:
        super().__init__()
        self.tokenizer = model.tokenizer

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.reconstruction_loss(frames)


def frames_tensor(frames_uint8: np.ndarray) -> torch.Tensor:
    """uint8 (N, S, S, 3) -> float32 (N, 3, S, S) in [-1, 1] (the same scaling as Policy.infer)."""
    return torch.from_numpy(frames_uint8).permute(0, 3, 1, 2).float().mul_(2.0 / 255.0).sub_(1.0)


@torch.no_grad()
def encode_all(model: DiT4DiT, frames: np.ndarray, batch: int = 256) -> torch.Tensor:
    model.tokenizer.eval()
    device = model.extraction_noise.device
    return torch.cat([model.tokenizer.encode(frames_tensor(frames[i : i + batch]).to(device))
                      for i in range(0, len(frames), batch)])  # (N, C, h, w)


def make_batch(data: TrainingData, latents: torch.Tensor, text: torch.Tensor, state: torch.Tensor,
               actions: torch.Tensor, cfg: DiT4DiTConfig, index: np.ndarray) -> dict[str, torch.Tensor]:
    w = data.windows(index, cfg.context_frames, cfg.future_frames, cfg.future_stride, cfg.chunk_length)
    return {
        "context": latents[torch.from_numpy(w["context"])],  # (B, Tc, C, h, w)
        "future": latents[torch.from_numpy(w["future"])],  # (B, Tf, C, h, w)
        "text": text[torch.from_numpy(w["episode"])],  # (B, L)
        "state": state[torch.from_numpy(index)],  # (B, S)
        "actions": actions[torch.from_numpy(w["actions"])],  # (B, H, A)
    }


@torch.no_grad()
def evaluate_actions(model: DiT4DiT, data: TrainingData, vocab: Vocabulary, state_norm: Normalizer,
                     action_norm: Normalizer, max_samples: int = 512, batch: int = 64) -> float:
    """Mean absolute error (physical units) of chunks sampled from zero noise against the recorded actions, over
    up to `max_samples` evenly spaced frames: the same path as Policy.infer, minus image resizing."""
    cfg, device = model.cfg, model.extraction_noise.device
    model.eval()
    index = np.linspace(0, data.num_frames - 1, num=min(max_samples, data.num_frames)).astype(np.int64)
    errors = []
    for i in range(0, len(index), batch):
        idx = index[i : i + batch]
        w = data.windows(idx, cfg.context_frames, cfg.future_frames, cfg.future_stride, cfg.chunk_length)
        frames = frames_tensor(data.frames[w["context"].reshape(-1)]).to(device)
        frames = frames.reshape(len(idx), cfg.context_frames, *frames.shape[1:])  # (B, Tc, 3, S, S)
        tokens = torch.from_numpy(vocab.encode([data.episodes[e].instruction for e in w["episode"]])).to(device)
        state = torch.from_numpy(state_norm.normalize(data.state[idx])).to(device)
        text, mask = model.text(tokens)
        features = model.condition(model.encode_frames(frames), text, mask)
        zeros = torch.zeros(len(idx), cfg.chunk_length, cfg.action_dim, device=device)
        actions = model.sample_actions(features, state, zeros, zeros, zeros[..., 0])
        pred = action_norm.unnormalize(actions.float().cpu().numpy())
        errors.append(np.abs(pred - data.action[w["actions"]]).mean(axis=(1, 2)))
    return float(np.concatenate(errors).mean())


def resume_path(out: Path) -> Path:
    return out.with_name(out.stem + ".resume.pt")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return train(args)
    except (TrainError, TrainingDataError, ValueError, FileNotFoundError) as e:
        print(f"dit4dit-train: error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def train(args: argparse.Namespace) -> int:
    rank, world = dist_setup()
    fsdp = args.parallel == "fsdp" and world > 1
    if args.parallel == "fsdp" and world == 1:
        print("dit4dit-train: --parallel fsdp needs torchrun with more than one process; training unsharded",
              file=sys.stderr)
    if fsdp and (args.resume or args.stop_after is not None):
        raise TrainError("--resume and --stop-after are DDP-only for now (--parallel fsdp writes no resume state)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else torch.device("cpu")
    out = Path(args.out)
    started = time.time()

    overrides = parse_overrides(args.override, "--override")
    base = preset_config(args.preset)
    is_cosmos = base.backbone == "cosmos"
    if args.lr is None:
        args.lr = 1e-4 if is_cosmos else 3e-4
    if args.video_lr is None and is_cosmos:
        args.video_lr = 1e-5
    if is_cosmos and not (args.backbone and (args.text_embeddings or args.text_encoder)):
        raise TrainError(f"the {args.preset} preset loads its video backbone from a local folder and its text from "
                         f"cached embeddings: pass --backbone DIR (diffusers layout) and --text-embeddings FILE or "
                         f"--text-encoder DIR; nothing is downloaded")
    if (args.backbone or args.freeze_backbone) and not is_cosmos:
        raise TrainError(f"--backbone/--freeze-backbone are for the cosmos presets, not {args.preset!r}")
    if is_cosmos and args.save_components:
        raise TrainError("--save-components writes the project's own tokenizer/text encoder; cosmos presets have neither")
    if not is_cosmos and base.requires_pretrained and not (overrides.get("tokenizer_path") and overrides.get("text_encoder_path")):
        raise TrainError(f"the {args.preset} preset loads its frame tokenizer and text encoder from local files: pass "
                         f"--override tokenizer_path=PATH --override text_encoder_path=PATH (files written by "
                         f"dit4dit-train --save-components); nothing is downloaded")
    image_size = int(overrides.get("image_size", base.image_size))
    data = load_training_data(args.data, image_size, args.camera, seed=args.seed,
                              synthetic_episodes=args.synthetic_episodes)
    cfg = build_config(args, data)
    val_data = None
    if args.val_episodes:
        if not 0 < args.val_episodes < len(data.episodes):
            raise TrainError(f"--val-episodes {args.val_episodes} must leave at least one of the "
                             f"{len(data.episodes)} episodes for training")
        # evenly spaced episodes, so a dataset recorded task by task keeps every task on both sides
        held = set(np.linspace(0, len(data.episodes) - 1, num=args.val_episodes).round().astype(int).tolist())
        val_data = TrainingData([e for i, e in enumerate(data.episodes) if i in held], data.state_names,
                                data.action_names, data.fps, data.source + " (held out)", data.camera)
        data = TrainingData([e for i, e in enumerate(data.episodes) if i not in held], data.state_names,
                            data.action_names, data.fps, data.source, data.camera)
    if cfg.image_size != data.frames.shape[1]:
        raise TrainError(f"frames are {data.frames.shape[1]} px but the model takes {cfg.image_size}")

    torch.manual_seed(args.seed)  # identical initial weights on every rank
    if is_cosmos:
        from .checkpoint import cosmos_model
        from .cosmos import CosmosTextEncoder, read_text_embeddings

        if args.text_embeddings:
            names, raw_text = read_text_embeddings(args.text_embeddings, cfg.cosmos)
        else:
            names = list(data.instructions)
            raw_text = CosmosTextEncoder(args.text_encoder, cfg.cosmos["text_length"])(names)
        vocab = InstructionVocabulary(names)
        missing = [s for s in data.instructions if InstructionVocabulary.key(s) not in vocab.index]
        if missing:
            raise TrainError(f"{args.text_embeddings} has no embedding for the dataset's instructions {missing}; "
                             f"it has {names}")
        model = cosmos_model(cfg, args.backbone, names, raw_text).to(device)
        cfg = model.cfg
        model.video.transformer.crossattn_proj.requires_grad_(False)  # the cached contexts stay exact
        if args.freeze_backbone:
            model.video.requires_grad_(False)
        model.video.gradient_checkpointing = not args.no_gradient_checkpointing
    elif cfg.text_encoder_path:  # a pretrained text encoder stays frozen, as the paper's
        model = DiT4DiT(cfg).to(device)
        blob = load_component(model.text, "text_encoder", cfg.text_encoder_path)
        vocab = Vocabulary(blob["vocab"], cfg.max_text_len)
        model.text.requires_grad_(False)
    else:
        model = DiT4DiT(cfg).to(device)
        vocab = Vocabulary.build(data.instructions, cfg.max_text_len, cfg.vocab_size)
    pretrained_tokenizer = bool(cfg.tokenizer_path) or is_cosmos
    if cfg.tokenizer_path:
        load_component(model.tokenizer, "frame_tokenizer", cfg.tokenizer_path)
    tokenizer_steps = 0 if pretrained_tokenizer else args.tokenizer_steps

    state_norm, action_norm = Normalizer.fit(data.state), Normalizer.fit(data.action)
    state_t = torch.from_numpy(state_norm.normalize(data.state)).to(device)
    action_t = torch.from_numpy(action_norm.normalize(data.action)).to(device)
    text_t = torch.from_numpy(vocab.encode([e.instruction for e in data.episodes])).to(device)

    tok_opt = torch.optim.AdamW(model.tokenizer.parameters(), lr=args.tokenizer_lr, weight_decay=0.0)

    def policy_optimizer() -> tuple[list[dict[str, Any]], torch.optim.Optimizer]:
        groups = [{"params": [p for n, p in model.named_parameters() if n.startswith("video.") and p.requires_grad],
                   "lr": args.video_lr or args.lr, "name": "video"},
                  {"params": [p for n, p in model.named_parameters() if p.requires_grad
                              if not n.startswith(("video.", "tokenizer.")) and not (cfg.text_encoder_path and n.startswith("text."))],
                   "lr": args.lr, "name": "policy"}]
        groups = [g for g in groups if g["params"]]
        for g in groups:
            g["base_lr"] = g["lr"]
        return groups, torch.optim.AdamW(groups, betas=(0.9, 0.95), weight_decay=args.weight_decay)

    groups, opt = policy_optimizer()
    ema = EMA(model, args.ema)
    step = 0  # counts tokenizer steps, then policy steps
    history: list[dict[str, float]] = []
    metrics: dict[str, Any] = {}

    if args.resume:
        rp = resume_path(out)
        if not rp.is_file():
            raise TrainError(f"--resume: no training state at {rp} (start without --resume)")
        st = torch.load(str(rp), map_location="cpu", weights_only=True)
        if st.get("format") != RESUME_FORMAT or st.get("config") != cfg.to_dict():
            raise TrainError(f"{rp} was written for a different model/config; start without --resume or change --out")
        model.load_state_dict(st["model"])
        ema.shadow = {k: v.to(device) for k, v in st["ema"].items()}
        tok_opt.load_state_dict(st["tokenizer_optimizer"])
        opt.load_state_dict(st["optimizer"])
        step = int(st["step"])
        history = list(st["history"])
        if rank == 0:
            print(f"dit4dit-train: resumed from {rp} at step {step}", file=sys.stderr)

    total = tokenizer_steps + args.steps
    stop_at = total if args.stop_after is None else min(total, step + args.stop_after)
    warmup = args.warmup if args.warmup is not None else max(1, min(500, args.steps // 10))
    progress = None
    if rank == 0 and not args.no_progress:
        from tqdm import tqdm

        progress = tqdm(total=total, initial=step, desc=f"{cfg.preset} {cfg.conditioning}", unit="step",
                        dynamic_ncols=True, mininterval=1.0)

    def save(final: bool) -> None:
        """Rank 0 writes; under fsdp every rank must call it (the EMA is gathered first)."""
        if fsdp:
            ema.copy_buffers(model)
            shadow = full_tensors(ema.shadow)
        if rank != 0:
            return
        training = {
            "data": data.source, "episodes": len(data.episodes), "frames": data.num_frames, "steps": max(0, step - tokenizer_steps),
            "tokenizer_steps": tokenizer_steps, "batch_size": args.batch_size, "world_size": world, "seed": args.seed,
            "lr": args.lr, "ema": args.ema, "conditioning": cfg.conditioning, "flow": cfg.flow.to_dict(),
            "camera_source": data.camera, "wall_time_s": round(time.time() - started, 1),
            "final_loss": history[-1] if history else None, "complete": final, **metrics,
        }
        metadata = build_metadata(cfg, state_names=data.state_names, action_names=data.action_names,
                                  state_norm=state_norm, action_norm=action_norm, control_rate_hz=data.fps,
                                  instructions=data.instructions, training=training)
        if fsdp:  # the optimiser and raw weights are sharded: no resume state (see the module docstring)
            save_checkpoint(out, model, vocab, metadata, state_dict={k: v.cpu() for k, v in shadow.items()})
            return
        ema.copy_buffers(model)
        save_checkpoint(out, model, vocab, metadata, state_dict=ema.shadow)
        blob = {"format": RESUME_FORMAT, "config": cfg.to_dict(), "step": step, "model": model.state_dict(),
                "ema": ema.shadow, "tokenizer_optimizer": tok_opt.state_dict(), "optimizer": opt.state_dict(),
                "history": history}
        tmp = resume_path(out).with_suffix(".tmp")
        torch.save(blob, str(tmp))
        tmp.replace(resume_path(out))

    ddp_kwargs: dict[str, Any] = {"device_ids": [device.index]} if device.type == "cuda" else {}
    wrap = (lambda m: nn.parallel.DistributedDataParallel(m, **ddp_kwargs)) if world > 1 else (lambda m: m)
    sample_rng = lambda s: np.random.default_rng([args.seed, rank, s])  # noqa: E731 - deterministic per (rank, step)

    # ---- stage 1: frame tokenizer
    if step < tokenizer_steps:
        tok_step = wrap(TokenizerStep(model))
        model.tokenizer.train()
        while step < min(tokenizer_steps, stop_at):
            idx = sample_rng(step).integers(0, data.num_frames, size=args.tokenizer_batch_size)
            loss = tok_step(frames_tensor(data.frames[idx]).to(device))
            tok_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.tokenizer.parameters(), 1.0)
            tok_opt.step()
            step += 1
            if progress:
                progress.update(1)
                progress.set_postfix(stage="tokenizer", recon=f"{loss.item():.4f}")
            if rank == 0 and (step % args.save_every == 0):
                save(final=False)
        del tok_step
    if step < tokenizer_steps:  # stopped inside stage 1 (--stop-after)
        if progress:
            progress.close()
        save(final=False)
        return 0
    if not pretrained_tokenizer and step == tokenizer_steps:
        # latent statistics from a fixed subset, identical on every rank
        pick = np.random.default_rng(args.seed).choice(data.num_frames, size=min(2048, data.num_frames), replace=False)
        model.tokenizer.eval()
        model.tokenizer.set_latent_stats(frames_tensor(data.frames[np.sort(pick)]).to(device))
    for p in model.tokenizer.parameters():
        p.requires_grad_(False)
    ema.copy_buffers(model)

    # ---- stage 2: the policy (dual flow matching)
    if step < stop_at:
        latents = None if is_cosmos else encode_all(model, data.frames).to(device)  # (N, C, h, w): each frame once
        if fsdp:  # the parameters become sharded DTensors: optimiser and EMA are rebuilt on them (fresh stage 2)
            train_step = TrainStep(model)
            shard_policy(train_step, model, world, device)
            groups, opt = policy_optimizer()
            ema = EMA(model, args.ema)
        else:
            train_step = wrap(TrainStep(model))
        model.train()
        model.tokenizer.eval()
        seen, tick, first_policy_step = 0, time.time(), step
        if rank == 0:
            print(memory_plan(model, args.batch_size, args.precision), file=sys.stderr, flush=True)
        while step < stop_at:
            policy_step = step - tokenizer_steps
            factor = lr_factor(policy_step, args.steps, warmup)
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * factor
            idx = sample_rng(step).integers(0, data.num_frames, size=args.batch_size)
            batch = (cosmos_batch(model, data, text_t, state_t, action_t, idx) if is_cosmos
                     else make_batch(data, latents, text_t, state_t, action_t, cfg, idx))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                losses = train_step(batch, step_generator(args.seed, rank, step, device))
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            grad_norm = torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
            if fsdp:
                grad_norm = grad_norm.full_tensor()
            opt.step()
            ema.update(model, policy_step)
            step += 1
            seen += args.batch_size * world
            record = {"step": step, "loss": losses["loss"].item(), "video": losses["video"].item(),
                      "action": losses["action"].item(), "grad_norm": float(grad_norm)}
            if step % 10 == 0 or step == total:
                history.append(record)
            if progress:
                progress.update(1)
                rate = seen / max(1e-9, time.time() - tick)
                progress.set_postfix(loss=f"{record['loss']:.4f}", video=f"{record['video']:.3f}",
                                     action=f"{record['action']:.3f}", samples_s=f"{rate:.0f}")
            if (rank == 0 or fsdp) and step % args.save_every == 0 and step < total:
                save(final=False)
        throughput = (step - first_policy_step) / max(1e-9, time.time() - tick)
    else:
        throughput = float("nan")
    if progress:
        progress.close()
    if fsdp and (val_data is not None or args.save_components):
        ema.copy_buffers(model)
        ema.shadow = full_tensors(ema.shadow)  # every rank gathers; only rank 0 uses them below
    if rank == 0 and val_data is not None and step >= total:
        averaged = DiT4DiT(cfg).to(device)  # the EMA weights, as in the checkpoint
        averaged.load_state_dict(ema.shadow)
        for name, split_data in (("train", data), ("val", val_data)):
            metrics[f"{name}_action_mae"] = evaluate_actions(averaged, split_data, vocab, state_norm, action_norm)
        print(f"dit4dit-train: sampled-chunk mean abs error (physical units, zero noise): "
              f"train {metrics['train_action_mae']:.4f}, held-out {metrics['val_action_mae']:.4f} "
              f"({args.val_episodes} episodes)", file=sys.stderr)
    save(final=step >= total)
    if rank == 0 and args.save_components:
        folder = Path(args.save_components)
        folder.mkdir(parents=True, exist_ok=True)
        arch = {k: getattr(cfg, k) for k in ("tokenizer_width", "tokenizer_levels", "latent_channels", "image_size",
                                             "vocab_size", "max_text_len", "text_width", "text_depth", "text_heads")}
        averaged = DiT4DiT(cfg)  # the EMA weights, as in the checkpoint
        averaged.load_state_dict({k: v.cpu() for k, v in ema.shadow.items()})
        save_component(averaged.tokenizer, "frame_tokenizer", arch, folder / "frame_tokenizer.pt")
        save_component(averaged.text, "text_encoder", arch, folder / "text_encoder.pt", vocab=vocab.tokens)
    if world > 1:
        dist.barrier()
    if rank == 0:
        last = history[-1] if history else {}
        print(f"dit4dit-train: wrote {out} ({step - tokenizer_steps} policy steps, loss {last.get('loss', float('nan')):.4f}, "
              f"{time.time() - started:.0f} s, {throughput:.2f} policy steps/s at batch {args.batch_size} x {world})",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
