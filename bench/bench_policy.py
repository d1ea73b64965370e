"""Parameters and CPU latency of the DiT4DiT presets, and the training step time of the trainable ones.

    python bench/bench_policy.py                          # tiny + small latency, paper params, small train step
    python bench/bench_policy.py --presets tiny --repeats 50 --threads 1 --train-presets ""
    python bench/bench_policy.py --device cuda --dtype bfloat16 --presets tiny,small,paper   # on a GPU

Latency is the torch engine at batch 1: the video feature pass (FeatureNet: frame tokenizer + text encoder +
one video-DiT pass to the extraction layer) and action denoising (ActionSampler: all Euler steps), separately,
median over --repeats runs after warm-up. On a CPU the paper preset is only counted, on the meta device (no
memory): its fp32 weights alone are ~12 GB; with --device cuda it is timed too (e.g. --dtype bfloat16).
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


def timed(fn, repeats: int, device: torch.device, warmup: int = 3) -> tuple[float, float]:
    """Median wall time and median process CPU time (all threads) per call, in seconds."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    walls, cpus = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        sync()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def inputs(cfg, B: int, device: torch.device, dtype: torch.dtype):
    frames = torch.rand(B, cfg.context_frames, 3, cfg.image_size, cfg.image_size, device=device, dtype=dtype) * 2 - 1
    tokens = torch.zeros(B, cfg.max_text_len, dtype=torch.long, device=device)
    tokens[:, :4] = torch.tensor([1, 5, 6, 7], device=device) % cfg.vocab_size
    H, A = cfg.chunk_length, cfg.action_dim
    rest = tuple(torch.zeros(shape, device=device, dtype=dtype) if i != 1 else torch.randn(shape, device=device, dtype=dtype)
                 for i, shape in enumerate([(B, cfg.state_dim), (B, H, A), (B, H, A), (B, H)]))
    return frames, tokens, rest


def time_preset(cfg, args: argparse.Namespace, device: torch.device, dtype: torch.dtype, train: bool) -> list[str]:
    """One table row: parameters, feature/sample latency at batch 1, and (train=True) one fp32 training step."""
    with torch.device(device):
        model = DiT4DiT(cfg)
    model = model.to(dtype).eval()
    feature_net, sampler = FeatureNet(model), ActionSampler(model)
    frames, tokens, rest = inputs(cfg, 1, device, dtype)
    with torch.inference_mode():
        features = feature_net(frames, tokens)
        t_feat, _ = timed(lambda: feature_net(frames, tokens), args.repeats, device)
        t_samp, _ = timed(lambda: sampler(features, *rest), args.repeats, device)
    train_cell = "-"
    if train:
        model = model.float().train()
        B, C, h = args.train_batch, cfg.latent_channels, cfg.latent_size
        batch = {"context": torch.randn(B, cfg.context_frames, C, h, h, device=device),
                 "future": torch.randn(B, cfg.future_frames, C, h, h, device=device),
                 "text": tokens.expand(B, -1).clone(), "state": torch.randn(B, cfg.state_dim, device=device),
                 "actions": torch.randn(B, cfg.chunk_length, cfg.action_dim, device=device)}
        opt = torch.optim.AdamW([p for n, p in model.named_parameters() if not n.startswith("tokenizer.")], lr=1e-4)
        g = torch.Generator(device=device).manual_seed(0)

        def step() -> None:
            loss = dual_flow_matching_loss(model, batch, g)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        try:
            t_train, cpu_train = timed(step, args.train_steps, device, warmup=2)
            train_cell = f"{t_train:.3f} ({B}) = {1 / t_train:.2f} steps/s"
            if device.type == "cpu":
                train_cell += f"; CPU {cpu_train:.2f} s"
        except torch.OutOfMemoryError:  # e.g. the paper preset in fp32 without gradient checkpointing
            train_cell = f"out of memory at batch {B}"
    return [cfg.preset, fmt_params(count(model)), fmt_params(count(getattr(model, "video", None))),
            fmt_params(count(model.action)), str(cfg.condition_tokens), f"{t_feat * 1e3:.1f}",
            f"{t_samp * 1e3:.1f} ({cfg.num_euler_steps})", f"{(t_feat + t_samp) * 1e3:.1f}", train_cell]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="tiny,small", help="presets to time (paper: params only on a CPU)")
    p.add_argument("--conditioning", default="video", choices=["video", "image_features"])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (on a GPU the paper preset is timed too)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="inference dtype (bfloat16: GPU)")
    p.add_argument("--train-presets", default="small", help="presets whose training step is timed ('' for none)")
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--train-steps", type=int, default=10)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"

    table = Table(title=f"DiT4DiT presets ({where}, batch 1, {args.dtype}, conditioning={args.conditioning}, "
                        f"torch {torch.__version__})")
    for col in ("preset", "total params", "video DiT", "action DiT", "condition tokens", "features ms",
                "sample ms (Euler steps)", "infer ms", "train step wall s (batch, fp32)"):
        table.add_column(col, justify="right")

    presets = [s for s in args.presets.split(",") if s]
    if "paper" not in presets:
        presets.append("paper")
    train_presets = {s for s in args.train_presets.split(",") if s}
    for name in presets:
        cfg = preset_config(name, conditioning=args.conditioning)
        if name == "paper" and device.type == "cpu":
            with torch.device("meta"):
                model = DiT4DiT(cfg)
            table.add_row(name, fmt_params(count(model)), fmt_params(count(getattr(model, "video", None))),
                          fmt_params(count(model.action)), str(cfg.condition_tokens), "not run", "not run",
                          "not run (meta device)", "not run")
            continue
        table.add_row(*time_preset(cfg, args, device, dtype, train=name in train_presets))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
