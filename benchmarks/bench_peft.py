"""The PEFT table of docs/methods.md: trainable parameters, FLOPs, memory and MAFs per step, steps per task.

Usage:
    python benchmarks/bench_peft.py [--arch ViT-B-16] [--batch-size 512] [--tasks 20] [--device cpu]

Every method is built on a meta-device model (shapes only, no weights) and measured with
``fif.budget.measure_step_cost`` against full fine-tuning at the same batch, as ``fif budget`` does, but
with method options (``fif budget`` measures the defaults): LoRA/DoRA/VeRA at FiF's ranks 4 and 64 and
GaLore at ranks 64 and 256. The budget is FiF's 28,400 full fine-tuning steps split over T tasks.
"""

from __future__ import annotations

import argparse
import logging

VARIANTS = [
    ("finetune", {}),
    ("lora", {"rank": 4}),
    ("lora", {"rank": 64}),
    ("dora", {"rank": 4}),
    ("dora", {"rank": 64}),
    ("vera", {"rank": 4}),
    ("vera", {"rank": 64}),
    ("galore", {"rank": 64}),
    ("galore", {"rank": 256}),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="ViT-B-16")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--ft-steps", type=float, default=28400)
    parser.add_argument("--device", default="cpu", help="cpu (estimated memory) or cuda (measured peak)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from fif.budget import mafs_per_step, measure_step_cost, memory_multiplier, meta_clip, steps_for_task
    from fif.methods import build_method, freeze_all_but

    rows, reference = [], None
    for name, options in VARIANTS:
        clip = meta_clip(args.arch)
        total = sum(p.numel() for p in clip.model.parameters())
        method = build_method(name, options, clip)
        freeze_all_but(clip.model, method.trainable_parameters())
        cost = measure_step_cost(clip, method, args.batch_size, args.device)
        reference = reference or cost
        mafs = mafs_per_step(cost, reference)
        budget = args.ft_steps * reference.flops / args.tasks
        trainable = sum(p.numel() for _, p in method.trainable_parameters())
        label = name + (f" r={options['rank']}" if options else "")
        rows.append([label, f"{trainable / 1e6:,.3f}M", f"{100 * trainable / total:.2f}%", f"{cost.flops / 1e9:,.1f}",
                     f"{cost.peak_memory_bytes / 2**30:,.2f}", f"{memory_multiplier(cost, reference):.3f}",
                     f"{mafs / 1e9:,.1f}", f"{steps_for_task(budget, mafs):,}"])  # fmt: skip
    head = ["method", "trainable", "of all", "GFLOPs/step", "peak GiB", "mem x", "GMAFs/step",
            f"steps (T={args.tasks})"]  # fmt: skip
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    print(f"{args.arch} @ batch {args.batch_size}, memory {reference.memory_source}")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
