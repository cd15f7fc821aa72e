"""Optimizer step time per kernel implementation (train.optimizer_impl) on one model.

Usage:
    .venv/bin/python benchmarks/bench_optimizer.py [--arch fif-mini-rn32] [--steps 20] [--threads 0]

Prints milliseconds per AdamW step for for_loop, foreach and fused (gradients are random; the step
does the same arithmetic whatever their values). `auto` picks fused on CPU and CUDA for AdamW.
"""

from __future__ import annotations

import argparse
import time

import torch

from fif.core.optim import OptimConfig, build_optimizer
from fif.model.clip import build_clip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="fif-mini-rn32")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_clip(args.arch, pretrained=None, device=args.device).model
    params = sum(p.numel() for p in model.parameters())
    for p_ in model.parameters():
        p_.grad = torch.randn_like(p_) * 1e-3
    print(f"{args.arch}: {params / 1e6:.2f} M parameters on {args.device}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    for impl in ("for_loop", "foreach", "fused"):
        opt = build_optimizer(list(model.named_parameters()), 1e-3, OptimConfig(impl=impl))
        for _ in range(3):
            opt.step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            opt.step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        print(f"{impl:>9}: {(time.perf_counter() - t0) / args.steps * 1e3:7.2f} ms/step")


if __name__ == "__main__":
    main()
