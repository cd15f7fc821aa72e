"""Throughput of fif's training step, evaluation and data pipeline against plain baselines, in one process.

Usage:
    .venv/bin/python benchmarks/bench_gpu.py [--arch ViT-B-16] [--batch 512] [--steps 20] [--workers 8]
    .venv/bin/python benchmarks/bench_gpu.py --ranks 2 ...   # relaunches itself under torchrun (DDP)
    .venv/bin/python benchmarks/bench_gpu.py --arch fif-mini-rn32 --batch 8 --steps 2 --no-compile  # CPU smoke

Rows (random-init weights, synthetic batches for the steps, so the step and not the data is measured):

- ``fif step``: fif's whole training step (:func:`fif.train.loop.train_task`: the ``finetune`` method's CLIP
  loss, fif's optimizer (fused AdamW where torch has it), the lr set per step, grad clipping, the non-finite
  guard, the logit-scale clamp, host syncs only at the logging interval) at ``--precision``, with the towers
  compiled as ``train.compile`` does (eager with ``--no-compile``). Under
  ``--ranks W``: the same with DDP, each rank on its B/W rows, CLIP features gathered (samples/s is global).
- ``reference step``: the reference pipeline's style: eager, fp16 autocast + GradScaler, torch's AdamW.
- ``bare step``: ``torch.compile`` of model + loss, ``--precision`` autocast, fused AdamW, nothing else.
- ``eval (fif)``: :func:`fif.eval.zeroshot.encode_images` on uint8 images held in memory (test transform,
  normalisation, copy to the device); ``eval (bare)``: ``encode_image`` on normalised device tensors.
- ``data``: fif's training batches (:class:`fif.data.mixture.MixedBatches`: JPEG decode, RandomResizedCrop
  at ``--data-size`` px, tokenising) from generated JPEG files through a DataLoader with ``--workers``
  workers; under ``--ranks W`` each rank builds only its rows.

TFLOP/s: the step's FLOPs (forward + backward, counted once by fif's FLOP counter) × steps / seconds.
Peak memory: ``torch.cuda.max_memory_allocated`` per row (CUDA only). Report CPU results as ratios only.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fif.core.flops import count_flops
from fif.core.optim import OptimConfig, build_optimizer
from fif.data.batch import Batch, synthetic_batch
from fif.data.mixture import MixedBatches, MixtureSampler, Pool, batch_counts
from fif.data.sources.common import ImageFileSplit
from fif.data.specs import DatasetSpec, InMemorySplit
from fif.eval.zeroshot import encode_images
from fif.methods import build_method
from fif.model.checkpointing import compile_towers_
from fif.model.clip import Clip, build_clip
from fif.model.loss import clip_contrastive_loss
from fif.train.distributed import ShardedBatches, Solo, start
from fif.train.loop import train_task


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(run: Callable[[], None], device: torch.device) -> tuple[float, float | None]:
    """(seconds, peak GiB) of ``run()`` (peak: CUDA only)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    run()
    sync(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return seconds, peak


def step_flops(model: torch.nn.Module, batch: Batch) -> int:
    """FLOPs of one forward + backward of the CLIP loss at this batch."""

    def step() -> None:
        out = model(batch.images, batch.tokens)
        clip_contrastive_loss(out["image_features"], out["text_features"], out["logit_scale"]).backward()

    flops = count_flops(step)
    model.zero_grad(set_to_none=True)
    return flops


def fif_step(clip, batch: Batch, args, device: torch.device, ranks) -> Callable[[int], None]:
    """fif's training step (train_task) over ``steps`` copies of this rank's rows of ``batch``, on a copy of
    the model whose towers are compiled as ``train.compile`` does (unless --no-compile)."""
    clip = Clip(copy.deepcopy(clip.model), clip.tokenizer, clip.arch, clip.image_size, clip.mean, clip.std)
    if args.compile:
        compile_towers_(clip.model)
    method = build_method("finetune", {}, clip)
    optimizer = build_optimizer(method.trainable_parameters(), 1e-5, OptimConfig())
    ranks.prepare_model_(clip.model)
    model = ranks.wrap(clip.model)
    rows = ranks.shard([batch])[0]
    if device.type == "cuda":
        rows = rows.pin_memory() if hasattr(rows, "pin_memory") else rows
    precision = args.precision

    def run(steps: int) -> None:
        train_task(model, method, optimizer, (rows for _ in range(steps)), lambda s: 1e-5, steps, device,
                   precision, grad_clip=1.0, log_every=steps)

    return run


def reference_step(model: torch.nn.Module, batch: Batch, device: torch.device) -> Callable[[int], None]:
    """The reference pipeline's style: eager, fp16 autocast + GradScaler, torch's default AdamW."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.2)
    scaler = torch.amp.GradScaler(device.type)
    images, tokens = batch.images.to(device), batch.tokens.to(device)

    def run(steps: int) -> None:
        for _ in range(steps):
            with torch.autocast(device.type, dtype=torch.float16):
                out = model(images, tokens)
                loss = clip_contrastive_loss(out["image_features"], out["text_features"], out["logit_scale"])
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)

    return run


def bare_step(model: torch.nn.Module, batch: Batch, device: torch.device, args) -> Callable[[int], None]:
    """torch.compile of model + loss, autocast at --precision, fused AdamW: the step with nothing around it."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.2, fused=True)
    images, tokens = batch.images.to(device), batch.tokens.to(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)

    def loss_of(images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        out = model(images, tokens)
        return clip_contrastive_loss(out["image_features"], out["text_features"], out["logit_scale"])

    loss_fn = torch.compile(loss_of) if args.compile else loss_of

    def run(steps: int) -> None:
        for _ in range(steps):
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = loss_fn(images, tokens)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return run


def step_rows(clip, args, device: torch.device, ranks) -> list[dict]:
    """The three training steps: samples/s, TFLOP/s and peak memory of each."""
    batch = synthetic_batch(clip, args.batch, "cpu")
    flops = step_flops(copy.deepcopy(clip.model).to(device), Batch(batch.images.to(device), batch.tokens.to(device), batch.source))
    fif_name = f"fif step ({'compiled towers' if args.compile else 'eager'})"
    candidates = {fif_name: lambda: fif_step(clip, batch, args, device, ranks)}
    if ranks.world_size == 1:
        candidates["reference step (fp16+GradScaler, eager)"] = lambda: reference_step(copy.deepcopy(clip.model), batch, device)
        name = "bare step (compiled)" if args.compile else "bare step (eager)"
        candidates[name] = lambda: bare_step(copy.deepcopy(clip.model), batch, device, args)
    rows = []
    for name, build in candidates.items():
        run = build()
        measure(lambda run=run: run(args.warmup), device)  # compile, autotune, allocator warm-up
        seconds, peak = measure(lambda run=run: run(args.steps), device)
        rows.append({"what": name, "per_s": args.batch * args.steps / seconds,
                     "tflops": flops * args.steps / seconds / 1e12, "peak_gib": peak})
    return rows


def eval_rows(clip, args, device: torch.device, ranks) -> list[dict]:
    """fif's image encoding for evaluation against a bare forward pass (images/s)."""
    size, n = clip.image_size, args.eval_images
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)
    split = InMemorySplit(DatasetSpec("bench", "classification", "eval_only", ("a",), "{}"), "test", pixels,
                          [["a"]] * n, np.zeros(n, dtype=np.int64))
    idx = np.arange(n)
    clip.model.eval()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    chunks = [clip.normalize(pixels[i : i + args.eval_batch].float().div(255).to(device)) for i in range(0, n, args.eval_batch)]
    chunks = chunks[ranks.rank :: ranks.world_size]

    @torch.no_grad()
    def bare() -> None:
        for x in chunks:
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                clip.model.encode_image(x)

    def ours() -> None:
        encode_images(clip, split, idx, args.eval_batch, device, args.precision, ranks=ranks)

    rows = []
    for name, run in (("eval (fif encode_images)", ours), ("eval (bare forward)", bare)):
        run()  # warm-up
        seconds, peak = measure(run, device)
        rows.append({"what": name, "per_s": n / seconds, "tflops": None, "peak_gib": peak})
    clip.model.train()
    return rows


def write_jpegs(folder: Path, count: int, seed: int = 0) -> list[str]:
    """``count`` smooth random 320×256 JPEGs (photo-like sizes and entropy), quality 90."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        small = rng.integers(0, 256, size=(8, 10, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((320, 256), Image.BICUBIC)
        noisy = np.clip(np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, size=(256, 320, 3)), 0, 255)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(noisy.astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def data_rows(clip, args, ranks) -> list[dict]:
    """fif's training batches decoded from JPEG files by ``--workers`` DataLoader workers (images/s of this rank)."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), args.data_images)
        spec = DatasetSpec("bench", "classification", "adaptation", ("a",), "{}")
        split = ImageFileSplit(spec, "train", paths, [["a photo", "another photo"]] * len(paths),
                               np.zeros(len(paths), dtype=np.int64), listed_in=tmp)
        steps = args.data_steps
        sampler = MixtureSampler(batch_counts(args.batch, 0.0, 1.0, 0.0), Pool([(split, np.arange(len(paths)))]))
        batches = ShardedBatches(MixedBatches(sampler, clip.tokenize, clip.normalize, args.data_size, steps),
                                 ranks.rank, ranks.world_size)
        loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=args.workers,
                                             pin_memory=torch.cuda.is_available())
        t0 = time.perf_counter()
        rows = sum(len(b) for b in loader)
        seconds = time.perf_counter() - t0
    what = f"data ({args.workers} workers, {args.data_size} px, rank's rows)"
    return [{"what": what, "per_s": rows / seconds, "tflops": None, "peak_gib": None}]


def table(rows: list[dict], header: str) -> str:
    lines = [header, f"{'':44} {'per s':>10} {'TFLOP/s':>9} {'peak GiB':>9}"]
    for r in rows:
        tf = f"{r['tflops']:.3f}" if r["tflops"] is not None else "-"
        pk = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
        lines.append(f"{r['what']:44} {r['per_s']:10.1f} {tf:>9} {pk:>9}")
    return "\n".join(lines)


def relaunch(argv: list[str], world: int) -> int:
    """Run this script under torchrun with ``world`` processes (the same arguments, less ``--ranks``)."""
    kept, skip = [], False
    for a in argv:
        if skip or a.startswith("--ranks"):
            skip = a == "--ranks"
            continue
        kept.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}", __file__, *kept]
    return subprocess.run(cmd, check=False).returncode


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="ViT-B-16")
    p.add_argument("--batch", type=int, default=512, help="global batch")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--precision", default=None, help="fif and bare steps: bf16 (default on CUDA) or fp32 (CPU)")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="fif step and bare step eager (the CPU smoke test)")
    p.add_argument("--eval-images", type=int, default=2048)
    p.add_argument("--eval-batch", type=int, default=256)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--data-images", type=int, default=256, help="JPEG files generated for the data row")
    p.add_argument("--data-steps", type=int, default=4)
    p.add_argument("--data-size", type=int, default=224)
    p.add_argument("--ranks", type=int, default=1, help="relaunch under torchrun with this many processes")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None, help="also write the rows here (rank 0)")
    args = p.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.ranks > 1 and "WORLD_SIZE" not in os.environ:
        return relaunch(argv, args.ranks)
    ranks = start("ddp", args.device) if "WORLD_SIZE" in os.environ else None
    ranks = ranks or Solo()
    if isinstance(ranks, Solo):
        device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                              ("cpu" if args.device == "auto" else args.device))
    else:
        device = ranks.device
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    clip = build_clip(args.arch, pretrained=None, device=device)
    rows = step_rows(clip, args, device, ranks) + eval_rows(clip, args, device, ranks) + data_rows(clip, args, ranks)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    header = (f"{args.arch}, global batch {args.batch}, {args.steps} steps, {args.precision}, {ranks.world_size} rank(s), "
              f"{card}, torch {torch.__version__}")
    if ranks.is_main:
        print(table(rows, header))
        if args.json:
            Path(args.json).write_text(json.dumps({"header": header, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
