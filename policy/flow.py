"""Flow matching for DiT4DiT: one time convention, three decoupled time/noise distributions, one Euler step.

Time convention (used everywhere in dit4dit): **t = 0 is clean data, t = 1 is pure noise** (the rectified-flow
convention of Cosmos, in which context frames sit at t ≈ 0.0001 and the hidden-state extraction time is 1.0):

    x_t = (1 - t) * x_0 + t * sigma * eps,          eps ~ N(0, I), sigma = the noise scale of that flow
    v   = dx_t/dt = sigma * eps - x_0               (the velocity the networks predict)
    sampling integrates from t = 1 down to t = 0:   x_{t - dt} = x_t - dt * v(x_t, t)

The three flows of the dual objective each have their own time distribution and noise scale:
  (a) video prediction: future-frame latents, logit-normal time with a share of forced high-noise samples;
  (b) hidden-state extraction: a fixed time (default 1.0: the future slots are pure noise, as at inference);
  (c) action flow: Beta(1.5, 1) scaled by 0.999 (skewed towards noise), sampled with a few Euler steps.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch


@dataclass
class TimeDistribution:
    """A distribution over flow times in [0, 1] (t = 1 is noise).

    kind:
      ``logit_normal``: t = sigmoid(N(mean, std)); with probability ``high_noise_ratio`` replaced by U(high_noise_min, 1)
      ``beta``: t = offset + scale * Beta(alpha, beta)   (GR00T/pi0 action time; skewed to noise for alpha > beta)
      ``uniform``: t = U(low, high)
      ``fixed``: t = value
    """

    kind: str = "logit_normal"
    mean: float = 0.0
    std: float = 1.0
    high_noise_ratio: float = 0.0
    high_noise_min: float = 0.98
    alpha: float = 1.5
    beta: float = 1.0
    scale: float = 0.999
    offset: float = 0.001
    low: float = 0.0
    high: float = 1.0
    value: float = 1.0

    def __post_init__(self) -> None:
        kinds = ("logit_normal", "beta", "uniform", "fixed")
        if self.kind not in kinds:
            raise ValueError(f"time distribution kind {self.kind!r} is unknown; use one of {kinds}")
        if self.kind == "fixed" and not 0.0 <= self.value <= 1.0:
            raise ValueError(f"fixed flow time {self.value} is outside [0, 1]")
        if not 0.0 <= self.high_noise_ratio <= 1.0:
            raise ValueError(f"high_noise_ratio {self.high_noise_ratio} is outside [0, 1]")

    def sample(self, n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        """n flow times, float32 (n,)."""
        if self.kind == "fixed":
            return torch.full((n,), float(self.value), device=device)
        if self.kind == "uniform":
            u = torch.rand(n, generator=generator, device=device)
            return self.low + (self.high - self.low) * u
        if self.kind == "beta":
            # Beta(a, b) = Ga / (Ga + Gb). torch.distributions.Beta takes no generator, so the Gamma variates are
            # drawn here from the seeded generator (training must be reproducible from --seed).
            ga = _gamma(self.alpha, n, generator, device)
            gb = _gamma(self.beta, n, generator, device)
            return self.offset + self.scale * ga / (ga + gb)
        z = self.mean + self.std * torch.randn(n, generator=generator, device=device)
        t = torch.sigmoid(z)
        if self.high_noise_ratio > 0:
            forced = torch.rand(n, generator=generator, device=device) < self.high_noise_ratio
            high = self.high_noise_min + (1.0 - self.high_noise_min) * torch.rand(n, generator=generator, device=device)
            t = torch.where(forced, high, t)
        return t


def _gamma(shape: float, n: int, generator: torch.Generator | None, device: torch.device | str) -> torch.Tensor:
    """Gamma(shape, 1) samples from a seeded generator (Marsaglia–Tsang with the shape+1 boost for shape < 1)."""
    boost = shape < 1.0
    d = (shape + 1.0 if boost else shape) - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(n, device=device)
    todo = torch.arange(n, device=device)
    while todo.numel() > 0:  # rejection sampling; accepts > 95% per round
        m = todo.numel()
        x = torch.randn(m, generator=generator, device=device)
        u = torch.rand(m, generator=generator, device=device)
        v = (1.0 + c * x) ** 3
        ok = (v > 0) & (torch.log(u.clamp_min(1e-30)) < 0.5 * x * x + d - d * v + d * torch.log(v.clamp_min(1e-30)))
        out[todo[ok]] = d * v[ok]
        todo = todo[~ok]
    if boost:
        out = out * torch.rand(n, generator=generator, device=device) ** (1.0 / shape)
    return out


@dataclass
class FlowConfig:
    """The dual flow-matching objective: decoupled times and noise scales, loss weights, coupling."""

    video_time: TimeDistribution
    extraction_time: TimeDistribution
    action_time: TimeDistribution
    video_noise_scale: float = 1.0
    extraction_noise_scale: float = 1.0
    action_noise_scale: float = 1.0
    context_time: float = 0.0001  # flow time of the clean context frames (Cosmos `conditional_frame_timestep`)
    video_loss_weight: float = 1.0
    action_loss_weight: float = 1.0
    action_trains_video: bool = True  # end to end: the action loss back-propagates into the video DiT
    action_noise_repeats: int = 4  # independent action-noise draws per sample (GR00T `repeated_diffusion_steps`)

    def __post_init__(self) -> None:
        for name in ("video_time", "extraction_time", "action_time"):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, TimeDistribution(**value))
        if self.extraction_time.kind != "fixed":
            raise ValueError("extraction_time must be kind 'fixed': inference runs one video pass at one known time")
        if self.action_noise_repeats < 1:
            raise ValueError(f"action_noise_repeats must be >= 1, got {self.action_noise_repeats}")
        for name in ("video_noise_scale", "extraction_noise_scale", "action_noise_scale"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FlowConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown flow config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


def paper_flow() -> FlowConfig:
    """The G1 configuration of the public DiT4DiT code, in this module's time convention."""
    return FlowConfig(
        video_time=TimeDistribution("logit_normal", mean=0.0, std=1.0, high_noise_ratio=0.05, high_noise_min=0.98),
        extraction_time=TimeDistribution("fixed", value=1.0),
        action_time=TimeDistribution("beta", alpha=1.5, beta=1.0, scale=0.999, offset=0.001),
    )


def interpolate(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t and the target velocity; t broadcasts from the left (shape (B,) or (B, ...))."""
    while t.dim() < x0.dim():
        t = t.unsqueeze(-1)
    noise = sigma * eps
    return (1.0 - t) * x0 + t * noise, noise - x0


def euler_times(num_steps: int) -> list[float]:
    """The flow times visited by a fixed-step Euler sampler from noise (1) to data (0): 1, 1-1/n, ..., 1/n."""
    if num_steps < 1:
        raise ValueError(f"num_euler_steps must be >= 1, got {num_steps}")
    return [1.0 - k / num_steps for k in range(num_steps)]


def dual_flow_matching_loss(model: Any, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The DiT4DiT training objective on one batch of standardised latents and normalised vectors.

    batch: context (B, Tc, C, h, w), future (B, Tf, C, h, w) latents; text (B, L) int64; state (B, S); actions (B, H, A).
    (a) video: future latents at a time from `video_time`, noise scale sigma_v; velocity loss on the future slots.
    (b) extraction: a second pass to `extract_layer` at the fixed extraction time, fresh noise, as at inference.
    (c) action: `action_noise_repeats` draws of (time from `action_time`, noise) per sample; velocity loss.
    The action loss reaches the video DiT only if `action_trains_video`. The ablation (image features) has no (a)/(b).
    Returns {"loss", "video", "action"}."""
    cfg = model.cfg
    flow: FlowConfig = cfg.flow
    context, future, state, actions = batch["context"], batch["future"], batch["state"], batch["actions"]
    B, dev = context.shape[0], context.device
    text, text_mask = model.text(batch["text"])  # (B, L, Wt)
    if cfg.conditioning == "video":
        t_v = flow.video_time.sample(B, generator, dev)
        eps_v = torch.randn(future.shape, generator=generator, device=dev)
        x_t, v_target = interpolate(future, eps_v, t_v, flow.video_noise_scale)
        v_pred = model.video(torch.cat([context, x_t], dim=1), model.frame_times(t_v), text, text_mask)
        video_loss = torch.mean((v_pred - v_target) ** 2)
        eps_e = torch.randn(future.shape, generator=generator, device=dev)
        if flow.action_trains_video:
            features = model.condition(context, text, text_mask, eps_e)  # (B, N, D)
        else:
            with torch.no_grad():
                features = model.condition(context, text.detach(), text_mask, eps_e)
    else:
        video_loss = torch.zeros((), device=dev)
        features = model.condition(context, text, text_mask)  # (B, N, D)
    R = flow.action_noise_repeats
    condition = model.action.project_condition(features).repeat_interleave(R, dim=0)  # (B R, N, Da)
    state_r, actions_r = state.repeat_interleave(R, dim=0), actions.repeat_interleave(R, dim=0)
    t_a = flow.action_time.sample(B * R, generator, dev)
    eps_a = torch.randn(actions_r.shape, generator=generator, device=dev)
    x_t, a_target = interpolate(actions_r, eps_a, t_a, flow.action_noise_scale)
    a_pred = model.action(x_t, t_a, state_r, condition)  # (B R, H, A)
    action_loss = torch.mean((a_pred - a_target) ** 2)
    loss = flow.video_loss_weight * video_loss + flow.action_loss_weight * action_loss
    return {"loss": loss, "video": video_loss.detach(), "action": action_loss.detach()}
