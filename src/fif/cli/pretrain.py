"""`fif pretrain`: build (or rebuild) the cached base model of a benchmark from scratch."""

from __future__ import annotations

import argparse
import dataclasses
import time


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="build the mini benchmark's base CLIP from scratch (cached)",
        description="Train the tiny base CLIP on the benchmark's pretraining pool and cache it, keyed by its "
        "recipe, architecture and benchmark options. `fif run --preset mini` does this automatically when "
        "the cache is empty; given the same preset and overrides, this builds the model that run would use.",
    )
    p.add_argument("--preset", default="mini", help="config preset (name or YAML path; default: mini)")
    p.add_argument("--arch", help="open_clip architecture (default: the config's model.arch)")
    p.add_argument("--steps", type=int, help="optimizer steps (default: the recipe's)")
    p.add_argument("--cache-dir", help="cache folder (default: the config's run.cache_dir)")
    p.add_argument("--device", help="cpu, cuda, ... (default: the config's run.device)")
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides, as for fif run (model.arch, data.options, run.cache_dir, run.device)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:

    from fif.config import load_config
    from fif.core.device import resolve_device
    from fif.train.pretrain import ensure_base_model, recipe_for

    cfg = load_config(args.preset, args.overrides)
    spec = recipe_for(args.arch or cfg.model.arch, cfg.data.benchmark)
    if args.steps:
        spec = dataclasses.replace(spec, steps=args.steps)
    t0 = time.perf_counter()
    path, built = ensure_base_model(
        args.cache_dir or cfg.run.cache_dir, spec, cfg.data.options, resolve_device(args.device or cfg.run.device),
        force=args.force, on_log=lambda step, loss: print(f"step {step:5d}/{spec.steps}  loss {loss:.4f}", flush=True),
    )
    print(f"{'built' if built else 'cached'}: {path} ({time.perf_counter() - t0:.0f} s)")
    return 0
