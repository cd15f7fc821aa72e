"""Gradient accumulation in fif: how close to the whole-batch gradient, and what it costs.

For a random-init model and one batch, compares the whole-batch gradient of the CLIP loss with

* fif's accumulation (``fif.train.loop.accumulated_backward``: cached features, whole-batch loss, micro-batch
  re-forward) and
* the naive one (mean of the per-micro-batch CLIP losses, each micro-batch its own contrastive problem),

as the relative L2 distance over all parameters, with the model in eval mode (no batch statistics: fif's
is exact) and in train mode (BatchNorm normalises per micro-batch). Then times one optimizer step.

Usage:
    .venv/bin/python benchmarks/bench_grad_accum.py [--arch fif-mini-rn32] [--batch 128] [--parts 1 2 4 8]
        [--threads 1] [--repeats 3]

The numbers in docs/recipe.md come from this script.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from fif.core.device import autocast_context
from fif.data.batch import Batch
from fif.methods import build_method
from fif.model.clip import build_clip
from fif.train.loop import accumulated_backward


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="fif-mini-rn32")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--parts", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    return p.parse_args()


def make_batch(clip, n: int) -> Batch:
    g = torch.Generator().manual_seed(0)
    images = clip.normalize(torch.rand(n, 3, clip.image_size, clip.image_size, generator=g))
    tokens = clip.tokenize([f"a {['red', 'blue', 'green'][i % 3]} shape number {i}" for i in range(n)])
    return Batch(images, tokens, torch.ones(n, dtype=torch.int8))


def flat_grad(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def grad_of(method, model, batch: Batch, parts: int, mode: str) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    if parts == 1:
        method.loss(batch, model).total.backward()
    elif mode == "fif":
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        accumulated_backward(method, model, batch, parts, scaler, lambda: autocast_context(torch.device("cpu"), "fp32"))
    else:  # naive: each micro-batch its own contrastive problem, losses averaged
        for mb in batch.split(parts):
            (method.loss(mb, model).total / parts).backward()
    return flat_grad(model)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    clip = build_clip(args.arch)
    method = build_method("finetune", {}, clip)
    batch = make_batch(clip, args.batch)
    base = copy.deepcopy(clip.model.state_dict())

    print(f"{args.arch}, batch {args.batch}, {args.threads} thread(s); relative L2 distance to the whole-batch gradient")
    print(f"{'parts':>6}{'fif eval':>12}{'fif train':>12}{'naive eval':>12}{'naive train':>12}{'s/step':>10}")
    for parts in args.parts:
        cells = []
        for mode in ("fif", "naive"):
            for train in (False, True):
                clip.model.load_state_dict(base)
                clip.model.train(train)
                ref = grad_of(method, clip.model, batch, 1, mode)
                clip.model.load_state_dict(base)
                got = grad_of(method, clip.model, batch, parts, mode)
                cells.append(float((got - ref).norm() / ref.norm()))
        clip.model.load_state_dict(base)
        clip.model.train()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            grad_of(method, clip.model, batch, parts, "fif")
            times.append(time.perf_counter() - t0)
        print(f"{parts:>6}" + "".join(f"{c:>12.1e}" for c in cells) + f"{min(times):>10.3f}")


if __name__ == "__main__":
    main()
