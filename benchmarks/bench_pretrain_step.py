"""CPU seconds per pretraining step of each tiny architecture, measured in one process.

Each architecture's recipe (`fif.train.pretrain.recipe_for`) is run through `fif.train.pretrain.pretrain` for
5 and for 25 steps; the difference over 20 steps is one step's cost, so building the model and the first
step's overheads cancel. It counts process time (CPU seconds of this process), not wall time, so a machine
shared with other jobs distorts it less; with one thread that is close to the wall time of an idle core.

Usage:
    .venv/bin/python benchmarks/bench_pretrain_step.py [--threads 1] [--archs fif-mini-rn32,fif-mini-vit32]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from fif.data.registry import get_benchmark
from fif.train.pretrain import RECIPES, pretrain, recipe_for


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--archs", default=",".join(RECIPES), help="comma-separated architectures")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    bench = get_benchmark("mini", pool_size=4096)  # a smaller pool: the step does not depend on its size
    bench.load(bench.pretraining_pool, "train")  # generated once, before any timing
    for arch in args.archs.split(","):
        cpu = {}
        for steps in (5, 25):
            spec = dataclasses.replace(recipe_for(arch), steps=steps)
            t0 = time.process_time()
            pretrain(spec, bench, torch.device("cpu"))
            cpu[steps] = time.process_time() - t0
        step = (cpu[25] - cpu[5]) / 20
        full = recipe_for(arch).steps
        print(f"{arch}: {step:.3f} CPU s/step at batch {recipe_for(arch).batch_size}, {1 / step:.2f} steps/s, "
              f"{full} steps = {full * step / 60:.1f} CPU min ({args.threads} thread(s), torch {torch.__version__})",
              flush=True)


if __name__ == "__main__":
    main()
