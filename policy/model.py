"""DiT4DiT: a video diffusion transformer whose hidden states condition an action diffusion transformer.

One file, top to bottom:
  config and presets (tiny / small / paper) ........ DiT4DiTConfig, tiny(), small(), paper()
  presets on the Cosmos backbone .................... cosmos_tiny(), cosmos_2b() (modules: policy/cosmos.py)
  shared layers ..................................... attention, cross-attention, adaLN-Zero DiT block, time embedding
  frame tokenizer ................................... FrameAutoencoder (frames <-> latents)
  text encoder ...................................... TextEncoder (word tokens -> context tokens)
  video DiT ......................................... VideoDiT (context latents clean + future latents noised)
  plain image features (ablation) ................... ImageFeatureEncoder
  action DiT ........................................ ActionDiT (state + queries + noised chunk -> velocity)
  the whole model and its two inference modules ..... DiT4DiT, FeatureNet, ActionSampler

Flow times follow policy/flow.py: t = 0 clean data, t = 1 pure noise.
Inference is two fixed-shape graphs: FeatureNet (ONE video pass at the extraction time, blocks up to the
extraction layer only, no decoding) and ActionSampler (the whole Euler loop, unrolled).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .flow import FlowConfig, euler_times, paper_flow

CONDITIONING_KINDS = ("video", "image_features")
BACKBONES = ("dit4dit", "cosmos")  # the project's own video DiT (below), or Cosmos-Predict2.5 via diffusers (policy/cosmos.py)


#################################################################################
#                              Config and presets                               #
#################################################################################


@dataclass
class DiT4DiTConfig:
    preset: str
    # observation and action
    image_size: int = 64  # square model input; Policy resizes camera frames to it
    camera: str = "head"
    context_frames: int = 1  # frames per camera the model sees (current one last)
    future_frames: int = 2  # future frames the video DiT predicts (training target only)
    future_stride: int = 8  # control steps between consecutive future frames
    state_dim: int = 14
    action_dim: int = 14
    chunk_length: int = 16
    num_euler_steps: int = 4
    # frame tokenizer: a conv autoencoder trained in-project, or loaded from a local file (large presets)
    tokenizer_width: int = 32
    tokenizer_levels: int = 3  # each halves resolution: downsample 2**levels
    latent_channels: int = 4
    tokenizer_path: str | None = None
    requires_pretrained: bool = False  # large presets: training must load tokenizer and text encoder from local files
    # text encoder: small transformer over an in-project word vocabulary, or loaded from a local file
    vocab_size: int = 256
    max_text_len: int = 16
    text_width: int = 128
    text_depth: int = 2
    text_heads: int = 4
    text_encoder_path: str | None = None
    # video DiT
    patch_size: int = 2
    temporal_patch: int = 1
    video_width: int = 256
    video_depth: int = 6
    video_heads: int = 4
    extract_layer: int = 4  # hidden states after this many blocks condition the action DiT
    # action DiT
    action_width: int = 256
    action_depth: int = 4
    action_heads: int = 4
    num_query_tokens: int = 8
    num_state_tokens: int = 1
    mlp_ratio: float = 4.0
    adaln_rank: int = 0  # 0: full adaLN projections; r > 0: low-rank (adaLN-LoRA, as Cosmos) to save parameters
    # what conditions the action DiT: video-DiT hidden states (DiT4DiT) or plain per-frame image features (ablation)
    conditioning: str = "video"
    flow: FlowConfig = field(default_factory=paper_flow)
    # video backbone: "dit4dit" (VideoDiT/FrameAutoencoder/TextEncoder here) or "cosmos": diffusers' Cosmos transformer
    # and Wan VAE built from `cosmos` (their config dicts, policy/cosmos.py), text from a per-instruction cache
    # (vocab_size = number of instructions, max_text_len = 1: the "token" is the instruction's index)
    backbone: str = "dit4dit"
    cosmos: dict[str, Any] | None = None
    backbone_path: str | None = None  # the local directory the pretrained backbone came from (informational)

    def __post_init__(self) -> None:
        if isinstance(self.flow, dict):
            self.flow = FlowConfig.from_dict(self.flow)
        problems = []
        if self.backbone not in BACKBONES:
            problems.append(f"backbone {self.backbone!r} is not one of {BACKBONES}")
        if self.backbone == "cosmos":
            problems += _cosmos_problems(self)
        if self.conditioning not in CONDITIONING_KINDS:
            problems.append(f"conditioning {self.conditioning!r} is not one of {CONDITIONING_KINDS}")
        if not 1 <= self.extract_layer <= self.video_depth:
            problems.append(f"extract_layer {self.extract_layer} must be in 1..video_depth ({self.video_depth})")
        if self.image_size % (2**self.tokenizer_levels * self.patch_size):
            problems.append(f"image_size {self.image_size} must divide by 2**tokenizer_levels * patch_size")
        if self.context_frames % self.temporal_patch or self.future_frames % self.temporal_patch:
            problems.append("context_frames and future_frames must be multiples of temporal_patch")
        for w, h in ((self.video_width, self.video_heads), (self.action_width, self.action_heads),
                     (self.text_width, self.text_heads)):
            if w % h:
                problems.append(f"width {w} is not divisible by its head count {h}")
        if min(self.context_frames, self.future_frames, self.chunk_length, self.state_dim, self.action_dim) < 1:
            problems.append("context_frames, future_frames, chunk_length, state_dim, action_dim must be >= 1")
        if problems:
            raise ValueError("invalid DiT4DiT config: " + "; ".join(problems))

    @property
    def latent_size(self) -> int:
        return self.image_size // 2**self.tokenizer_levels

    @property
    def tokens_per_frame(self) -> int:
        return (self.latent_size // self.patch_size) ** 2

    @property
    def condition_width(self) -> int:
        """Width D of the condition tokens FeatureNet returns."""
        return self.video_width

    @property
    def condition_tokens(self) -> int:
        """Number N of condition tokens FeatureNet returns."""
        frames = self.context_frames if self.conditioning == "image_features" else self.context_frames + self.future_frames
        return frames // self.temporal_patch * self.tokens_per_frame

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiT4DiTConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown DiT4DiT config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


def tiny(**overrides: Any) -> DiT4DiTConfig:
    """Unit tests: milliseconds per pass on a CPU."""
    cfg = DiT4DiTConfig(
        preset="tiny", image_size=32, future_frames=2, future_stride=4, chunk_length=8, num_euler_steps=4,
        tokenizer_width=8, tokenizer_levels=2, latent_channels=4, vocab_size=64, max_text_len=8, text_width=32,
        text_depth=1, text_heads=2, patch_size=2, video_width=64, video_depth=3, video_heads=2, extract_layer=2,
        action_width=64, action_depth=2, action_heads=2, num_query_tokens=4,
    )
    return replace(cfg, **overrides)


def small(**overrides: Any) -> DiT4DiTConfig:
    """Trainable on a 2-core CPU: 64x64 head camera, the paper's structure at a small width."""
    cfg = DiT4DiTConfig(
        preset="small", image_size=64, future_frames=2, future_stride=8, chunk_length=16, num_euler_steps=4,
        tokenizer_width=16, tokenizer_levels=3, latent_channels=8, vocab_size=256, max_text_len=16, text_width=128,
        text_depth=2, text_heads=4, patch_size=2, video_width=160, video_depth=6, video_heads=4, extract_layer=4,
        action_width=160, action_depth=4, action_heads=4, num_query_tokens=8,
    )
    return replace(cfg, **overrides)


def paper(**overrides: Any) -> DiT4DiTConfig:
    """The paper's shape: Cosmos-Predict2.5-2B-like video DiT (width 2048, 28 blocks, 16 heads; features after
    block 17), a 16-layer action DiT with 32 query tokens, chunk 16, 4 Euler steps, 224x224 single camera.
    adaLN-LoRA of rank 256 as in Cosmos. Tokenizer (16-channel latents, 8x down) and text encoder (1024-wide) load from local files given by
    tokenizer_path / text_encoder_path. Action-DiT width 1536 is a reading of GR00T's DiT, not a stated number."""
    cfg = DiT4DiTConfig(
        preset="paper", image_size=224, context_frames=1, future_frames=4, future_stride=4, state_dim=14,
        action_dim=14, chunk_length=16, num_euler_steps=4, tokenizer_width=128, tokenizer_levels=3,
        latent_channels=16, vocab_size=32128, max_text_len=64, text_width=1024, text_depth=24, text_heads=16,
        patch_size=2, video_width=2048, video_depth=28, video_heads=16, extract_layer=17, action_width=1536,
        action_depth=16, action_heads=32, num_query_tokens=32, adaln_rank=256, requires_pretrained=True,
    )
    return replace(cfg, **overrides)


def _cosmos_preset(name: str, configs: dict[str, Any], image_size: int, future_frames: int, extract_layer: int,
                   action: dict[str, Any], overrides: dict[str, Any]) -> DiT4DiTConfig:
    """A Cosmos-backbone config: the video/tokenizer/text fields follow from the diffusers configs."""
    t = configs["transformer"]
    cfg = DiT4DiTConfig(
        preset=name, backbone="cosmos", cosmos=configs, image_size=image_size, context_frames=1,
        future_frames=future_frames, tokenizer_levels=3, latent_channels=t["out_channels"], patch_size=t["patch_size"][1],
        video_width=t["num_attention_heads"] * t["attention_head_dim"], video_depth=t["num_layers"],
        video_heads=t["num_attention_heads"], extract_layer=extract_layer, text_width=t["text_embed_dim"],
        text_heads=1, max_text_len=1, vocab_size=1, requires_pretrained=True, **action)
    return replace(cfg, **overrides)


def cosmos_2b(**overrides: Any) -> DiT4DiTConfig:
    """DiT4DiT's G1 model: Cosmos-Predict2.5-2B (28 blocks, 16 heads x 128, patch (1,2,2)), features after
    transformer_blocks[17] (extract_layer 18 = after 18 blocks), 224x224, 1 context + 2 future latent frames
    (9 video frames: 588 tokens x 2048), and the 16-layer action DiT of the `paper` preset. Weights: --backbone DIR."""
    from .cosmos import cosmos_2b_configs

    action = dict(chunk_length=16, num_euler_steps=4, future_stride=2, action_width=1536, action_depth=16,
                  action_heads=32, num_query_tokens=32, adaln_rank=256)
    return _cosmos_preset("cosmos2.5-2b", cosmos_2b_configs(), 224, 2, 18, action, overrides)


def cosmos_tiny(**overrides: Any) -> DiT4DiTConfig:
    """The same diffusers classes at a CPU size (tests): 32x32, 4 blocks of 32 wide, features after block 2 (of 0..3)."""
    from .cosmos import cosmos_tiny_configs

    action = dict(chunk_length=8, num_euler_steps=4, future_stride=1, action_width=64, action_depth=2, action_heads=2,
                  num_query_tokens=4)
    return _cosmos_preset("cosmos-tiny", cosmos_tiny_configs(), 32, 1, 3, action, overrides)


def _cosmos_problems(cfg: DiT4DiTConfig) -> list[str]:
    problems = []
    if not cfg.cosmos or not {"transformer", "vae", "text_length"} <= set(cfg.cosmos):
        return ["backbone 'cosmos' needs the `cosmos` dict with transformer, vae and text_length"]
    t = cfg.cosmos["transformer"]
    if cfg.context_frames != 1:
        problems.append("the cosmos backbone takes context_frames = 1 (one conditioning latent frame)")
    if cfg.conditioning != "video":
        problems.append("the cosmos backbone conditions on video hidden states (conditioning 'video')")
    if cfg.video_width != t["num_attention_heads"] * t["attention_head_dim"] or cfg.video_depth != t["num_layers"]:
        problems.append("video_width/video_depth must equal the cosmos transformer's heads x head_dim / num_layers")
    if cfg.latent_channels != t["out_channels"] or cfg.text_width != t["text_embed_dim"] or cfg.max_text_len != 1:
        problems.append("latent_channels, text_width and max_text_len (1) must follow the cosmos configs")
    return problems


PRESETS = {"tiny": tiny, "small": small, "paper": paper, "cosmos-tiny": cosmos_tiny, "cosmos2.5-2b": cosmos_2b}


def preset_config(name: str, **overrides: Any) -> DiT4DiTConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name](**overrides)


#################################################################################
#                                 Shared layers                                 #
#################################################################################


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the model's dtype: wide rows overflow or drift in fp16/bf16.
    In a float32 model the casts are no-ops (and export as nothing)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


class GroupNorm(nn.GroupNorm):
    """GroupNorm in float32 whatever the model's dtype (see LayerNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)


class Attention(nn.Module):
    """Multi-head attention of x (B, N, D) over a context (B, M, Dc); self-attention when context is None."""

    def __init__(self, width: int, heads: int, context_width: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(context_width or width, 2 * width)
        self.out = nn.Linear(width, width)
        # Spelled out with the softmax in float32, for ONNX graphs in fp16/bf16 (there SDPA exports as a
        # half-precision softmax). Fused SDPA kernels already accumulate in float32, so torch keeps SDPA.
        self.explicit_fp32_softmax = False

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, D = x.shape
        context = x if context is None else context
        M = context.shape[1]
        q = self.q(x).reshape(B, N, self.heads, D // self.heads).transpose(1, 2)  # (B, h, N, d)
        k, v = self.kv(context).reshape(B, M, 2, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (B, h, M, d)
        if self.explicit_fp32_softmax and q.dtype != torch.float32:
            scores = (q @ k.transpose(-2, -1)).float() * (q.shape[-1] ** -0.5)  # (B, h, N, M)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            y = scores.softmax(dim=-1).to(q.dtype) @ v  # (B, h, N, d)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, h, N, d); mask (B, 1, 1, M) True = attend
        return self.out(y.transpose(1, 2).reshape(B, N, D))  # (B, N, D)


class Mlp(nn.Sequential):
    def __init__(self, width: int, ratio: float) -> None:
        hidden = int(width * ratio)
        super().__init__(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))


class TimestepEmbedder(nn.Module):
    """Flow time t in [0, 1] -> vector (sinusoids of 1000 t, then an MLP).

    Kept in float32 in reduced-precision models (`to_reduced_precision`): 1000 t in fp16 is coarse enough to
    blur neighbouring Euler times. Callers cast the result to their own dtype."""

    def __init__(self, width: int, frequency_dim: int = 256) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequency_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = 1000.0 * t.float().unsqueeze(-1) * freqs  # (..., half)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (..., frequency_dim), computed in fp32
        return self.mlp(emb.to(self.mlp[0].weight.dtype))  # (..., width)


class DiTBlock(nn.Module):
    """Self-attention, cross-attention to a context, MLP; each modulated and gated by adaLN-Zero.

    The conditioning c is (B, G, D): one vector per group of P = N / G consecutive tokens (per latent frame in
    the video DiT, G = 1 in the action DiT), so frames at different flow times get their own modulation.
    """

    def __init__(self, width: int, heads: int, context_width: int, mlp_ratio: float, adaln_rank: int = 0) -> None:
        super().__init__()
        self.norm1 = LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.cross = Attention(width, heads, context_width)
        self.norm3 = LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(width, mlp_ratio)
        self.ada = adaln_projection(width, 9, adaln_rank)

    def forward(self, x: torch.Tensor, c: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None) -> torch.Tensor:
        B, N, D = x.shape
        G = c.shape[1]
        mods = self.ada(c).unsqueeze(2).chunk(9, dim=-1)  # 9 x (B, G, 1, D)
        x = x.reshape(B, G, N // G, D)  # (B, G, P, D)
        x = x + mods[2] * self.attn(modulate(self.norm1(x), mods[0], mods[1]).reshape(B, N, D)).reshape(B, G, -1, D)
        x = x + mods[5] * self.cross(modulate(self.norm2(x), mods[3], mods[4]).reshape(B, N, D), context,
                                     context_mask).reshape(B, G, -1, D)
        x = x + mods[8] * self.mlp(modulate(self.norm3(x), mods[6], mods[7]))
        return x.reshape(B, N, D)  # (B, N, D)


def adaln_projection(width: int, n: int, rank: int) -> nn.Sequential:
    """c -> n modulation vectors; rank > 0 factors the projection through `rank` dims."""
    if rank > 0:
        return nn.Sequential(nn.SiLU(), nn.Linear(width, rank, bias=False), nn.Linear(rank, n * width))
    return nn.Sequential(nn.SiLU(), nn.Linear(width, n * width))


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_dim: int) -> None:
        super().__init__()
        self.norm = LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        G = c.shape[1]
        shift, scale = self.ada(c).unsqueeze(2).chunk(2, dim=-1)  # (B, G, 1, D)
        x = modulate(self.norm(x.reshape(B, G, N // G, D)), shift, scale).reshape(B, N, D)
        return self.linear(x)  # (B, N, out_dim)


def zero_init_adaln(blocks: list[nn.Module]) -> None:
    """adaLN-Zero: every residual branch and the output start at zero, so each block starts as the identity."""
    for block in blocks:
        nn.init.zeros_(block.ada[-1].weight)
        nn.init.zeros_(block.ada[-1].bias)
        if isinstance(block, FinalLayer):
            nn.init.zeros_(block.linear.weight)
            nn.init.zeros_(block.linear.bias)


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    half = dim // 2
    freqs = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / half)
    args = positions.double().unsqueeze(-1) * freqs
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)  # (n, dim)


def sincos_3d(dim: int, frames: int, height: int, width: int) -> torch.Tensor:
    """Fixed (frame, row, column) position embedding, (frames * height * width, dim); frame gets dim/4 channels."""
    d_t = dim // 4 // 2 * 2
    d_s = (dim - d_t) // 2 // 2 * 2
    t, y, x = torch.meshgrid(torch.arange(frames), torch.arange(height), torch.arange(width), indexing="ij")
    emb = torch.cat([sincos_1d(d_t, t.flatten()), sincos_1d(d_s, y.flatten()), sincos_1d(d_s, x.flatten())], dim=-1)
    return F.pad(emb, (0, dim - emb.shape[1])).float()


#################################################################################
#                                Frame tokenizer                                #
#################################################################################


class FrameAutoencoder(nn.Module):
    """Frames (B, 3, H, W) in [-1, 1] <-> latents (B, C, H / 2**levels, W / 2**levels).

    Small presets train it in-project (reconstruction stage before the DiTs, then frozen); large presets load
    one from a local file (`load_component`). Latents are standardised per channel with statistics measured on
    the training frames (`set_latent_stats`), so the flows see unit-scale data.
    """

    def __init__(self, width: int, levels: int, latent_channels: int) -> None:
        super().__init__()
        chans = [width * min(2**i, 4) for i in range(levels + 1)]
        enc: list[nn.Module] = [nn.Conv2d(3, chans[0], 3, padding=1)]
        for i in range(levels):
            enc += [GroupNorm(min(8, chans[i]), chans[i]), nn.SiLU(), nn.Conv2d(chans[i], chans[i + 1], 4, 2, 1)]
        enc += [GroupNorm(min(8, chans[-1]), chans[-1]), nn.SiLU(), nn.Conv2d(chans[-1], latent_channels, 1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(latent_channels, chans[-1], 3, padding=1)]
        for i in reversed(range(levels)):
            dec += [GroupNorm(min(8, chans[i + 1]), chans[i + 1]), nn.SiLU(),
                    nn.ConvTranspose2d(chans[i + 1], chans[i], 4, 2, 1)]
        dec += [GroupNorm(min(8, chans[0]), chans[0]), nn.SiLU(), nn.Conv2d(chans[0], 3, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self.register_buffer("latent_mean", torch.zeros(latent_channels))
        self.register_buffer("latent_std", torch.ones(latent_channels))

    def encode_raw(self, frames: torch.Tensor) -> torch.Tensor:
        return self.encoder(frames)  # (B, C, h, w)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        z = self.encoder(frames)  # (B, C, h, w)
        return (z - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents * self.latent_std[:, None, None] + self.latent_mean[:, None, None]
        return self.decoder(z)  # (B, 3, H, W)

    def reconstruction_loss(self, frames: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self.decoder(self.encoder(frames)), frames)

    @torch.no_grad()
    def set_latent_stats(self, frames: torch.Tensor, batch: int = 256) -> None:
        """Measure per-channel latent mean/std on frames (N, 3, H, W)."""
        z = torch.cat([self.encoder(frames[i : i + batch]) for i in range(0, len(frames), batch)])  # (N, C, h, w)
        self.latent_mean.copy_(z.mean(dim=(0, 2, 3)))
        self.latent_std.copy_(z.std(dim=(0, 2, 3)).clamp_min(1e-3))


#################################################################################
#                                 Text encoder                                  #
#################################################################################


class EncoderBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1 = LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = LayerNorm(width)
        self.mlp = Mlp(width, 4.0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, mask)
        return x + self.mlp(self.norm2(x))


class TextEncoder(nn.Module):
    """Word tokens (B, L) int64, 0 = padding, position 0 always a start token -> (B, L, text_width) and a mask.

    Small presets learn it from scratch over a vocabulary built from the training instructions (policy/text.py,
    stored in the checkpoint); large presets load one from a local file (`load_component`)."""

    def __init__(self, vocab_size: int, max_len: int, width: int, depth: int, heads: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.pos = nn.Parameter(torch.randn(1, max_len, width) * 0.02)
        self.blocks = nn.ModuleList([EncoderBlock(width, heads) for _ in range(depth)])
        self.norm = LayerNorm(width)
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = (tokens != 0)[:, None, None, :]  # (B, 1, 1, L) True = attend
        x = self.embed(tokens) + self.pos  # (B, L, W)
        for block in self.blocks:
            x = block(x, mask)  # (B, L, W)
        return self.norm(x), mask


#################################################################################
#                                   Video DiT                                   #
#################################################################################


class VideoDiT(nn.Module):
    """Latent video DiT over spatiotemporal patches: clean context latents followed by noised future latents.

    Each latent frame group carries its own flow time (context ≈ 0, future = the sampled time) through
    adaLN-Zero; every block cross-attends to the instruction tokens. Output: velocity of the future latents.
    """

    def __init__(self, cfg: DiT4DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        p, tp, C, D = cfg.patch_size, cfg.temporal_patch, cfg.latent_channels, cfg.video_width
        self.patch_dim = tp * p * p * C
        self.groups = (cfg.context_frames + cfg.future_frames) // tp
        self.context_groups = cfg.context_frames // tp
        grid = cfg.latent_size // p
        self.patch_embed = nn.Linear(self.patch_dim, D)
        self.register_buffer("pos", sincos_3d(D, self.groups, grid, grid).unsqueeze(0), persistent=False)
        self.time_embed = TimestepEmbedder(D)
        self.blocks = nn.ModuleList(
            [DiTBlock(D, cfg.video_heads, cfg.text_width, cfg.mlp_ratio, cfg.adaln_rank) for _ in range(cfg.video_depth)])
        self.final = FinalLayer(D, self.patch_dim)
        zero_init_adaln([*self.blocks, self.final])

    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        B, T, C, h, w = latents.shape
        p, tp = self.cfg.patch_size, self.cfg.temporal_patch
        x = latents.reshape(B, T // tp, tp, C, h // p, p, w // p, p)
        x = x.permute(0, 1, 4, 6, 2, 5, 7, 3)  # (B, T', h', w', tp, p, p, C)
        return x.reshape(B, (T // tp) * (h // p) * (w // p), self.patch_dim)  # (B, N, patch_dim)

    def unpatchify(self, tokens: torch.Tensor, frames: int) -> torch.Tensor:
        B = tokens.shape[0]
        p, tp, C, g = self.cfg.patch_size, self.cfg.temporal_patch, self.cfg.latent_channels, self.cfg.latent_size // self.cfg.patch_size
        x = tokens.reshape(B, frames // tp, g, g, tp, p, p, C).permute(0, 1, 4, 7, 2, 5, 3, 6)  # (B, T', tp, C, g, p, g, p)
        return x.reshape(B, frames, C, g * p, g * p)  # (B, T, C, h, w)

    def forward(self, latents: torch.Tensor, frame_times: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                depth: int | None = None) -> torch.Tensor:
        """latents (B, T, C, h, w), frame_times (B, T'), text (B, L, Wt) -> future velocity (B, Tf, C, h, w);
        with depth=k: the hidden states after block k, (B, N, D), and nothing after it is computed."""
        x = self.patch_embed(self.patchify(latents)) + self.pos  # (B, N, D)
        c = self.time_embed(frame_times).to(x.dtype)  # (B, T', D)
        for block in self.blocks[: depth or len(self.blocks)]:
            x = block(x, c, text, text_mask)  # (B, N, D)
        if depth is not None:
            return x
        future = x[:, self.context_groups * self.cfg.tokens_per_frame :]  # (B, Nf, D)
        v = self.final(future, c[:, self.context_groups :])  # (B, Nf, patch_dim)
        return self.unpatchify(v, self.cfg.future_frames)  # (B, Tf, C, h, w)


class ImageFeatureEncoder(nn.Module):
    """The ablation's condition: plain per-frame image features of the context frames, no video prediction.

    Capacity-matched to the video DiT's trunk up to the extraction layer (same width and block count, same
    patches and language cross-attention), but each frame is encoded on its own, no future slots, no flow time
    (a learned constant drives adaLN), and it is trained only through the action loss."""

    def __init__(self, cfg: DiT4DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        p, C, D = cfg.patch_size, cfg.latent_channels, cfg.video_width
        grid = cfg.latent_size // p
        self.patch_embed = nn.Linear(p * p * C, D)
        self.register_buffer("pos", sincos_3d(D, 1, grid, grid).unsqueeze(0), persistent=False)
        self.frame_embed = nn.Parameter(torch.zeros(1, cfg.context_frames, 1, D))
        self.cond = nn.Parameter(torch.randn(1, 1, D) * 0.02)
        self.blocks = nn.ModuleList(
            [DiTBlock(D, cfg.video_heads, cfg.text_width, cfg.mlp_ratio, cfg.adaln_rank) for _ in range(cfg.extract_layer)])
        for block in self.blocks:  # a plain encoder (not a denoiser): residual branches start open
            nn.init.normal_(block.ada[-1].weight, std=0.02)
            nn.init.zeros_(block.ada[-1].bias)

    def forward(self, latents: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        B, T, C, h, w = latents.shape
        p = self.cfg.patch_size
        x = latents.reshape(B * T, C, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(B * T, -1, p * p * C)
        x = self.patch_embed(x) + self.pos  # (B*T, Np, D)
        text = text.repeat_interleave(T, dim=0)  # (B*T, L, Wt)
        text_mask = text_mask.repeat_interleave(T, dim=0)
        c = self.cond.expand(B * T, 1, -1)  # (B*T, 1, D)
        for block in self.blocks:
            x = block(x, c, text, text_mask)  # (B*T, Np, D)
        x = x.reshape(B, T, -1, x.shape[-1]) + self.frame_embed  # (B, T, Np, D)
        return x.reshape(B, -1, x.shape[-1])  # (B, T*Np, D)


#################################################################################
#                                  Action DiT                                   #
#################################################################################


class ActionDiT(nn.Module):
    """Velocity of a noised action chunk, given the state, the action flow time and the condition tokens.

    Sequence: [state tokens | learned query tokens | H action tokens]; adaLN-Zero on the action time; every
    block cross-attends to the projected condition tokens (video hidden states, or image features)."""

    def __init__(self, cfg: DiT4DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.action_width
        self.state_encoder = nn.Sequential(nn.Linear(cfg.state_dim, D), nn.SiLU(), nn.Linear(D, cfg.num_state_tokens * D))
        self.action_encoder = nn.Linear(cfg.action_dim, D)
        self.action_pos = nn.Parameter(torch.randn(1, cfg.chunk_length, D) * 0.02)
        self.queries = nn.Parameter(torch.randn(1, cfg.num_query_tokens, D) * 0.02)
        self.condition_proj = nn.Sequential(nn.Linear(cfg.condition_width, D), LayerNorm(D))
        self.time_embed = TimestepEmbedder(D)
        self.blocks = nn.ModuleList([DiTBlock(D, cfg.action_heads, D, cfg.mlp_ratio, cfg.adaln_rank) for _ in range(cfg.action_depth)])
        self.final = FinalLayer(D, cfg.action_dim)
        zero_init_adaln([*self.blocks, self.final])

    def project_condition(self, features: torch.Tensor) -> torch.Tensor:
        return self.condition_proj(features.to(self.action_encoder.weight.dtype))  # (B, N, D)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, state: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """x_t (B, H, A), t (B,), state (B, S), condition (B, N, D) already projected -> velocity (B, H, A)."""
        B, dtype = x_t.shape[0], self.action_encoder.weight.dtype  # the Euler state may be wider than the network
        s = self.state_encoder(state.to(dtype)).reshape(B, self.cfg.num_state_tokens, -1)  # (B, Ns, D)
        a = self.action_encoder(x_t.to(dtype)) + self.action_pos  # (B, H, D)
        x = torch.cat([s, self.queries.expand(B, -1, -1), a], dim=1)  # (B, Ns + Q + H, D)
        c = self.time_embed(t).to(dtype).unsqueeze(1)  # (B, 1, D)
        for block in self.blocks:
            x = block(x, c, condition.to(dtype), None)  # (B, Ns + Q + H, D)
        return self.final(x[:, -self.cfg.chunk_length :], c).to(x_t.dtype)  # (B, H, A)


#################################################################################
#                          The model and its inference                          #
#################################################################################


class DiT4DiT(nn.Module):
    """Frame tokenizer + text encoder + (video DiT | image features) + action DiT.
    With backbone "cosmos": Wan VAE + cached instruction contexts + Cosmos transformer (policy/cosmos.py)."""

    def __init__(self, cfg: DiT4DiTConfig, backbone: tuple[nn.Module, nn.Module] | None = None) -> None:
        """backbone: (transformer, vae) already built (cosmos.load_backbone); else built from the config."""
        super().__init__()
        self.cfg = cfg
        if cfg.backbone == "cosmos":  # diffusers' modules
            from .cosmos import CosmosLatents, CosmosVideo, InstructionContext, build_backbone

            transformer, vae = backbone or build_backbone(cfg.cosmos)
            self.tokenizer = CosmosLatents(vae)
            self.text = InstructionContext(cfg.vocab_size, cfg.cosmos["text_length"], cfg.text_width)
            self.video = CosmosVideo(transformer, cfg.context_frames, cfg.future_frames)
        else:
            self.tokenizer = FrameAutoencoder(cfg.tokenizer_width, cfg.tokenizer_levels, cfg.latent_channels)
            self.text = TextEncoder(cfg.vocab_size, cfg.max_text_len, cfg.text_width, cfg.text_depth, cfg.text_heads)
            if cfg.conditioning == "video":
                self.video = VideoDiT(cfg)
            else:
                self.image = ImageFeatureEncoder(cfg)
        self.action = ActionDiT(cfg)
        # The future slots' noise at inference: a fixed draw (part of the weights), so the one video pass is a
        # deterministic, input-only function that exports as a constant.
        g = torch.Generator().manual_seed(0)
        shape = (cfg.future_frames, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
        noise = torch.empty(shape) if _on_meta() else torch.randn(shape, generator=g, device="cpu")  # same draw on any device
        self.register_buffer("extraction_noise", noise.to(torch.empty(0).device))

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, T, 3, H, W) in [-1, 1] -> standardised latents (B, T, C, h, w)."""
        B, T = frames.shape[:2]
        z = self.tokenizer.encode(frames.reshape(B * T, *frames.shape[2:]))  # (B*T, C, h, w)
        return z.reshape(B, T, *z.shape[1:])

    def frame_times(self, future_time: torch.Tensor) -> torch.Tensor:
        """Per latent-frame-group flow times (B, T'): context groups at context_time, future groups at future_time."""
        B = future_time.shape[0]
        v = self.video
        ctx = torch.full((B, v.context_groups), self.cfg.flow.context_time, device=future_time.device)
        return torch.cat([ctx, future_time[:, None].expand(B, v.groups - v.context_groups)], dim=1)

    def condition(self, context_latents: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                  eps: torch.Tensor | None = None) -> torch.Tensor:
        """The action DiT's condition tokens (B, N, D) from the context latents (B, Tc, C, h, w).

        DiT4DiT: one video pass at the fixed extraction time t_e with the future slots at
        (1 - t_e) * last context latent + t_e * sigma_e * eps (pure noise at t_e = 1: the future is unknown at
        inference; holding the last frame is the only clean guess), hidden states after `extract_layer` blocks.
        eps (B, Tf, C, h, w) defaults to the fixed extraction noise."""
        if self.cfg.conditioning == "image_features":
            return self.image(context_latents, text, text_mask)
        B = context_latents.shape[0]
        flow = self.cfg.flow
        t_e = flow.extraction_time.value
        if eps is None:
            eps = self.extraction_noise.unsqueeze(0).expand(B, -1, -1, -1, -1)
        hold = context_latents[:, -1:].expand_as(eps)  # (B, Tf, C, h, w)
        future = (1.0 - t_e) * hold + t_e * flow.extraction_noise_scale * eps
        latents = torch.cat([context_latents, future], dim=1)  # (B, Tc + Tf, C, h, w)
        times = self.frame_times(torch.full((B,), t_e, device=latents.device))
        return self.video(latents, times, text, text_mask, depth=self.cfg.extract_layer)  # (B, N, D)

    def sample_actions(self, features: torch.Tensor, state: torch.Tensor, noise: torch.Tensor, prefix: torch.Tensor,
                       prefix_weight: torch.Tensor) -> torch.Tensor:
        """Fixed-step Euler from t = 1 to 0 (unrolled); steps with prefix_weight w are inpainted towards the prefix:
        before every velocity evaluation x <- w * x_t(prefix) + (1 - w) * x, and at the end x <- w * prefix + (1 - w) * x,
        so w = 1 steps come out exactly equal to the prefix and a ramp blends the seam."""
        sigma = self.cfg.flow.action_noise_scale
        condition = self.action.project_condition(features)  # (B, N, Da)
        w = prefix_weight.unsqueeze(-1)  # (B, H, 1)
        eps = sigma * noise  # (B, H, A)
        x = eps
        dt = 1.0 / self.cfg.num_euler_steps
        for t in euler_times(self.cfg.num_euler_steps):
            x = w * ((1.0 - t) * prefix + t * eps) + (1.0 - w) * x
            v = self.action(x, torch.full((x.shape[0],), t, device=x.device), state, condition)  # (B, H, A)
            x = x - dt * v
        return w * prefix + (1.0 - w) * x  # (B, H, A)


REDUCED_PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16}


def to_reduced_precision(model: DiT4DiT, precision: str, for_onnx: bool = False) -> DiT4DiT:
    """`model` in fp16 or bf16, in place, with what drifts in half precision kept in float32: every norm
    (computed in fp32 by LayerNorm/GroupNorm above) and the flow-time embedding. The graphs' inputs and
    outputs stay float32 (FeatureNet casts at its boundary, ActionDiT around its network), and so does the
    Euler state of the action sampler.

    for_onnx: also spell the attention softmax out in fp32 (SDPA would export as a half-precision softmax),
    and keep the convolutional frame tokenizer in fp32 under bf16 (ONNX's Conv has no bfloat16 before opset 22)."""
    if precision not in REDUCED_PRECISIONS:
        raise ValueError(f"unknown reduced precision {precision!r}; choose one of {sorted(REDUCED_PRECISIONS)}")
    model.to(REDUCED_PRECISIONS[precision])
    if for_onnx and precision == "bf16":
        model.tokenizer.float()
    explicit_fp32_softmax = for_onnx
    for module in model.modules():
        if isinstance(module, TimestepEmbedder):
            module.float()
        if isinstance(module, Attention):
            module.explicit_fp32_softmax = explicit_fp32_softmax
    return model


def _on_meta() -> bool:
    return torch.empty(0).device.type == "meta"


class FeatureNet(nn.Module):
    """frames float32 (B, T, 3, H, W) in [-1, 1], text_tokens int64 (B, L) -> condition tokens float32 (B, N, D)."""

    def __init__(self, model: DiT4DiT) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor, text_tokens: torch.Tensor) -> torch.Tensor:
        text, mask = self.model.text(text_tokens)  # (B, L, Wt)
        # float32 in and out whatever the model's dtype; the tokenizer may have its own (see to_reduced_precision)
        latents = self.model.encode_frames(frames.to(self.model.tokenizer.latent_mean.dtype)).to(text.dtype)
        return self.model.condition(latents, text, mask).float()  # (B, N, D)


class ActionSampler(nn.Module):
    """(features (B, N, D), state (B, S), noise (B, H, A), prefix (B, H, A), prefix_weight (B, H)) -> actions (B, H, A),
    all normalised; the whole Euler loop in one graph."""

    def __init__(self, model: DiT4DiT) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor, state: torch.Tensor, noise: torch.Tensor, prefix: torch.Tensor,
                prefix_weight: torch.Tensor) -> torch.Tensor:
        return self.model.sample_actions(features, state, noise, prefix, prefix_weight)


#################################################################################
#                Pretrained components from local files (large presets)         #
#################################################################################


class PretrainedComponentError(FileNotFoundError):
    """A pretrained tokenizer/text encoder file is missing or does not match the config."""


COMPONENT_FORMAT = "dit4dit-component"


def save_component(module: nn.Module, kind: str, config: dict[str, Any], path: str | Path,
                   vocab: list[str] | None = None) -> None:
    """Save a tokenizer ("frame_tokenizer") or text encoder ("text_encoder") for reuse by a larger preset."""
    blob: dict[str, Any] = {"format": COMPONENT_FORMAT, "kind": kind, "config": config,
                            "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()}}
    if vocab is not None:
        blob["vocab"] = list(vocab)
    torch.save(blob, str(path))


def load_component(module: nn.Module, kind: str, path: str | Path | None) -> dict[str, Any]:
    """Fill `module` from a local component file (weights_only); returns the file's dict (e.g. its vocab)."""
    what = kind.replace("_", " ")
    if not path:
        raise PretrainedComponentError(
            f"this preset loads its {what} from a local file, but no path was given; set the config's "
            f"{'tokenizer_path' if kind == 'frame_tokenizer' else 'text_encoder_path'} (nothing is downloaded)")
    p = Path(path).expanduser()
    if not p.is_file():
        raise PretrainedComponentError(f"pretrained {what} file {p} does not exist; copy it there (nothing is downloaded)")
    try:
        blob = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise PretrainedComponentError(f"{p} is not a readable {what} file: {e}") from e
    if not isinstance(blob, dict) or blob.get("format") != COMPONENT_FORMAT or blob.get("kind") != kind:
        raise PretrainedComponentError(f"{p} is not a dit4dit {what} file (expected format {COMPONENT_FORMAT!r}, kind {kind!r})")
    try:
        module.load_state_dict(blob["state_dict"])
    except RuntimeError as e:
        raise PretrainedComponentError(f"{p}: its {what} does not match this preset's shape: {e}") from e
    return blob
