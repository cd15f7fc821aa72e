"""`fif pretrain`: build (or rebuild) the cached base model of a benchmark from scratch."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="build the mini benchmark's base CLIP from scratch (cached)",
        description="Train the tiny base CLIP on the benchmark's pretraining pool and cache it, keyed by its "
        "recipe. `fif run --preset mini` does this automatically when the cache is empty.",
    )
    p.add_argument("--arch", default="fif-mini-rn32", help="open_clip architecture (default: fif-mini-rn32)")
    p.add_argument("--benchmark", default="mini")
    p.add_argument("--steps", type=int, help="optimizer steps (default: the recipe's)")
    p.add_argument("--cache-dir", default="~/.cache/fif")
    p.add_argument("--device", default="auto")
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import dataclasses
    import time

    from fif.pretrain import PretrainSpec, ensure_base_model
    from fif.runner import resolve_device

    spec = PretrainSpec(arch=args.arch, benchmark=args.benchmark)
    if args.steps:
        spec = dataclasses.replace(spec, steps=args.steps)
    t0 = time.perf_counter()
    path, built = ensure_base_model(
        args.cache_dir, spec, {}, resolve_device(args.device), force=args.force,
        on_log=lambda step, loss: print(f"step {step:5d}/{spec.steps}  loss {loss:.4f}", flush=True),
    )
    print(f"{'built' if built else 'cached'}: {path} ({time.perf_counter() - t0:.0f} s)")
    return 0
