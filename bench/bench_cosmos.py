"""The cosmos backbone's feature pass, truncated (stop after extract_layer blocks) against the full network, and
one training step, with random weights (no files needed).

    python bench/bench_cosmos.py                                   # cosmos-tiny on CPU, 1 thread
    python bench/bench_cosmos.py --preset cosmos2.5-2b --image-size 32 --batches 1 --repeats 2   # 2B width, CPU (8 GB)
    python bench/bench_cosmos.py --preset cosmos2.5-2b --device cuda --batches 1,4,16 --train   # on a GPU

Prints a table: per batch, the median time of the truncated feature pass (what serving runs), of the full pass
(all blocks and the output layer: what diffusers' forward with a hook computes), the saving, and, with --train,
one bf16 training step (gradient checkpointing, AdamW) and its peak memory (CUDA: max_memory_allocated; CPU: the
process's peak RSS, which only grows)."""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from dit4dit.policy.flow import dual_flow_matching_loss
from dit4dit.policy.model import DiT4DiT, FeatureNet, preset_config


def timed(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cosmos-tiny", choices=["cosmos-tiny", "cosmos2.5-2b"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batches", default="1,4")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--image-size", type=int, default=None, help="override the preset's input size (fewer tokens)")
    p.add_argument("--train", action="store_true", help="also time one bf16 training step per batch")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = preset_config(args.preset, vocab_size=2, **({"image_size": args.image_size} if args.image_size else {}))
    with torch.device(device):
        model = DiT4DiT(cfg)
    model.eval()
    net = FeatureNet(model)
    S, Tf = cfg.image_size, cfg.future_frames
    print(f"{cfg.preset} on {device} ({args.threads} CPU threads): {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M "
          f"parameters, {cfg.condition_tokens} tokens x {cfg.condition_width}, features after {cfg.extract_layer} of "
          f"{cfg.video_depth} blocks")
    header = f"{'batch':>5} {'truncated ms':>13} {'full ms':>9} {'saved':>6}"
    if args.train:
        header += f" {'train step ms':>14} {'peak MiB':>9}"
    print(header)
    for b in [int(x) for x in args.batches.split(",")]:
        frames = torch.rand(b, 1, 3, S, S, device=device) * 2 - 1
        tokens = torch.zeros(b, 1, dtype=torch.long, device=device)

        @torch.inference_mode()
        def truncated() -> None:
            net(frames, tokens)

        @torch.inference_mode()
        def full() -> None:
            latents = model.encode_frames(frames)
            text, mask = model.text(tokens)
            future = model.extraction_noise.unsqueeze(0).expand(b, -1, -1, -1, -1)
            model.video(torch.cat([latents, future], dim=1), model.frame_times(torch.ones(b, device=device)), text, mask)

        t_trunc, t_full = timed(truncated, args.repeats, device), timed(full, args.repeats, device)
        row = f"{b:>5} {t_trunc * 1e3:>13.1f} {t_full * 1e3:>9.1f} {1 - t_trunc / t_full:>6.0%}"
        if args.train:
            model.train()
            model.video.gradient_checkpointing = True
            opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-5)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            C, h = cfg.latent_channels, cfg.latent_size
            batch = {"context": torch.randn(b, 1, C, h, h, device=device), "future": torch.randn(b, Tf, C, h, h, device=device),
                     "text": tokens, "state": torch.randn(b, cfg.state_dim, device=device),
                     "actions": torch.randn(b, cfg.chunk_length, cfg.action_dim, device=device)}
            g = torch.Generator(device=device).manual_seed(0)

            def step() -> None:
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    loss = dual_flow_matching_loss(model, batch, g)["loss"]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            t_step = timed(step, max(1, args.repeats // 2), device)
            row += f" {t_step * 1e3:>14.1f} {peak_mib(device):>9.0f}"
            model.eval()
            del opt
        print(row, flush=True)


if __name__ == "__main__":
    main()
