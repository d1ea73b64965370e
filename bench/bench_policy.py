"""Parameters and CPU latency of the DiT4DiT presets, and the training step time of the trainable ones.

    python bench/bench_policy.py                          # tiny + small latency, paper params, small train step
    python bench/bench_policy.py --presets tiny --repeats 50 --threads 1 --train-presets ""

Latency is the torch engine at batch 1: the video feature pass (FeatureNet: frame tokenizer + text encoder +
one video-DiT pass to the extraction layer) and action denoising (ActionSampler: all Euler steps), separately,
median over --repeats runs after warm-up. The paper preset is counted on the meta device (no memory): its fp32
weights alone are ~12 GB, beyond what a latency run on a shared 2-core CPU says anything useful about.
Training step: one dual flow-matching step (forward, backward, AdamW) on latents at --train-batch.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from dit4dit.policy.flow import dual_flow_matching_loss
from dit4dit.policy.model import ActionSampler, DiT4DiT, FeatureNet, preset_config


def count(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def fmt_params(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def timed(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def inputs(cfg, B: int):
    frames = torch.rand(B, cfg.context_frames, 3, cfg.image_size, cfg.image_size) * 2 - 1
    tokens = torch.zeros(B, cfg.max_text_len, dtype=torch.long)
    tokens[:, :4] = torch.tensor([1, 5, 6, 7]) % cfg.vocab_size
    H, A = cfg.chunk_length, cfg.action_dim
    rest = (torch.zeros(B, cfg.state_dim), torch.randn(B, H, A), torch.zeros(B, H, A), torch.zeros(B, H))
    return frames, tokens, rest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="tiny,small", help="presets to time (paper is always counted, never timed)")
    p.add_argument("--conditioning", default="video", choices=["video", "image_features"])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--train-presets", default="small", help="presets whose training step is timed ('' for none)")
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--train-steps", type=int, default=10)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    table = Table(title=f"DiT4DiT presets on CPU ({torch.get_num_threads()} threads, batch 1, "
                        f"conditioning={args.conditioning}, torch {torch.__version__})")
    for col in ("preset", "total params", "video DiT", "action DiT", "condition tokens", "features ms",
                "sample ms (Euler steps)", "infer ms", "train step s (batch)"):
        table.add_column(col, justify="right")

    presets = [s for s in args.presets.split(",") if s]
    train_presets = {s for s in args.train_presets.split(",") if s}
    for name in [*presets, "paper"]:
        cfg = preset_config(name, conditioning=args.conditioning)
        if name == "paper":
            with torch.device("meta"):
                model = DiT4DiT(cfg)
            table.add_row(name, fmt_params(count(model)), fmt_params(count(getattr(model, "video", None))),
                          fmt_params(count(model.action)), str(cfg.condition_tokens), "not run", "not run",
                          "not run (meta device)", "not run")
            continue
        model = DiT4DiT(cfg).eval()
        feature_net, sampler = FeatureNet(model), ActionSampler(model)
        frames, tokens, rest = inputs(cfg, 1)
        with torch.inference_mode():
            features = feature_net(frames, tokens)
            t_feat = timed(lambda: feature_net(frames, tokens), args.repeats)
            t_samp = timed(lambda: sampler(features, *rest), args.repeats)
        train_cell = "-"
        if name in train_presets:
            model.train()
            B, C, h = args.train_batch, cfg.latent_channels, cfg.latent_size
            batch = {"context": torch.randn(B, cfg.context_frames, C, h, h),
                     "future": torch.randn(B, cfg.future_frames, C, h, h),
                     "text": tokens.expand(B, -1).clone(), "state": torch.randn(B, cfg.state_dim),
                     "actions": torch.randn(B, cfg.chunk_length, cfg.action_dim)}
            params = [p for n, p in model.named_parameters() if not n.startswith("tokenizer.")]
            opt = torch.optim.AdamW(params, lr=1e-4)
            g = torch.Generator().manual_seed(0)

            def step() -> None:
                loss = dual_flow_matching_loss(model, batch, g)["loss"]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            t_train = timed(step, args.train_steps, warmup=2)
            train_cell = f"{t_train:.3f} ({B}) = {1 / t_train:.2f} steps/s"
        table.add_row(name, fmt_params(count(model)), fmt_params(count(getattr(model, "video", None))),
                      fmt_params(count(model.action)), str(cfg.condition_tokens), f"{t_feat * 1e3:.1f}",
                      f"{t_samp * 1e3:.1f} ({cfg.num_euler_steps})", f"{(t_feat + t_samp) * 1e3:.1f}", train_cell)
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
