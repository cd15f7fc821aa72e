"""Build the mini base model through fif's own path and score it zero-shot, per dataset.

It times `fif.train.pretrain.ensure_base_model` (pool generation + pretraining; the cache is a fresh folder,
so the model is always built) and evaluates the result on every eval-only and adaptation set of the
mini benchmark (full test sets). The issue's targets: colour >= 95 %, shape >= 80 %, size and position
>= 95 % zero-shot, adaptation sets near chance, in <= 3 minutes on 2 CPU cores.

Usage (nothing else running, for the time):
    .venv/bin/python benchmarks/bench_mini_base.py [--steps 900] [--threads 0] [key=value benchmark options ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import torch
import yaml

import fif
from fif.data.registry import get_benchmark
from fif.runner.evaluate import evaluate_config
from fif.train.pretrain import PretrainSpec, ensure_base_model

TARGETS = {"mini_colors": 95.0, "mini_shapes": 80.0, "mini_sizes": 95.0, "mini_positions": 95.0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=PretrainSpec.steps)
    p.add_argument("--lr", type=float, default=PretrainSpec.lr)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("options", nargs="*", help="mini benchmark options, e.g. studio_size=0.15")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    options = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.options)}
    spec = dataclasses.replace(PretrainSpec(), steps=args.steps, lr=args.lr)
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        path, _ = ensure_base_model(cache, spec, options)
        build = time.perf_counter() - t0
        cfg = fif.load_config("mini", [f"model.pretrained={path}", f"data.options={options}"])
        result = evaluate_config(cfg)
    print(f"built in {build:.0f} s ({args.steps} steps, lr {args.lr}, options {options}); "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    bench = get_benchmark("mini", **options)
    print(f"{'dataset':<18} {'role':<10} {'score':>6} {'chance':>6} {'target':>6}")
    for s in result.scores:
        ds = bench.datasets[s.dataset]
        chance = f"{100 / ds.num_classes:.1f}" if ds.kind == "classification" else "-"
        target = TARGETS.get(s.dataset)
        mark = "" if target is None else (" ok" if s.score >= target else " MISSED")
        print(f"{s.dataset:<18} {s.role:<10} {s.score:6.1f} {chance:>6} {target or '-':>6}{mark}")
    print(f"A_KA {result.point['a_ka']:.2f}  A_ZS {result.point['a_zs']:.2f}  GM {result.point['gm']:.2f}")


if __name__ == "__main__":
    main()
