"""`fif budget`: FLOPs, peak memory, MAFs and steps per task of update methods, measured, not typed.

    fif budget --arch ViT-B-16 --batch-size 512 --methods finetune,locked_image,bitfit,lnfit
    fif budget --arch fif-mini-rn32 --batch-size 64 --tasks 20,50 --json
    fif budget --arch ViT-B-16 --batch-size 512 --methods finetune,lora,ewc,si,bitfit --accounting paper

FLOPs are counted on the meta device (no weights, no data, no GPU). Peak memory is an estimate on
CPU (parameters + gradients + AdamW state + saved activations + batch) and measured with
torch.cuda.max_memory_allocated with --device cuda. See docs/budget.md.
"""

from __future__ import annotations

import argparse
import json
import time

from fif.cli import CliError

DEFAULT_TASKS = "20,50,100,200"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "budget",
        help="MAFs per step and steps per task of update methods",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--arch", default="ViT-B-16", help="open_clip architecture")
    parser.add_argument("--batch-size", type=int, default=512, help="samples per optimizer step")
    parser.add_argument("--methods", default="all", help="comma-separated method names, or 'all'")
    parser.add_argument("--tasks", default=DEFAULT_TASKS, help="comma-separated numbers of tasks T")
    parser.add_argument("--ft-steps", type=float, default=28400, help="run budget in full fine-tuning steps")
    parser.add_argument("--mafs", type=float, default=None, help="run budget in absolute MAFs (overrides --ft-steps)")
    parser.add_argument("--device", default="cpu", help="cpu (memory estimate) or cuda[:i] (measured peak memory)")
    parser.add_argument(
        "--accounting", default="exact", choices=["exact", "paper"],
        help="exact: what fif computes; paper: FiF Tab. 4's count (attention backward recomputes QK^T, task "
             "passes charged per step, methods at FiF's settings such as EWC's 50,000 Fisher samples)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run_budget)


def _split(text: str, flag: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise CliError(f"{flag}: give a comma-separated list")
    return items


def _parse_tasks(text: str) -> list[int]:
    try:
        tasks = [int(t) for t in _split(text, "--tasks")]
    except ValueError as e:
        raise CliError(f"--tasks: expected comma-separated integers like {DEFAULT_TASKS}, got {text!r}") from e
    if any(t < 1 for t in tasks):
        raise CliError(f"--tasks: every T must be >= 1, got {text!r}")
    return tasks


def _parse_methods(text: str) -> list[str]:
    from fif.methods import method_class, registered_methods

    names = list(registered_methods()) if text.strip() == "all" else _split(text, "--methods")
    for name in names:
        method_class(name)  # KeyError with the valid names and a suggestion
    return names


def measure_rows(args: argparse.Namespace) -> dict:
    """Measure every method and build the table (a JSON-able dict with ``rows``)."""
    from fif.budget import (
        budget_row,
        hook_cost_mafs,
        measure_step_cost,
        meta_clip,
        paper_step_cost,
        run_budget_mafs,
    )
    from fif.methods import TaskInfo, build_method, method_class
    from fif.model.clip import ModelLoadError

    tasks, names = _parse_tasks(args.tasks), _parse_methods(args.methods)
    if args.batch_size < 1:
        raise CliError(f"--batch-size must be >= 1, got {args.batch_size}")
    from fif.core.device import resolve_device

    try:
        resolve_device(args.device)
    except ValueError as e:
        raise CliError(f"--device: {e}") from None
    measured = {}
    for name in dict.fromkeys(["finetune", *names]):  # the reference first; each method gets a fresh model
        try:
            clip = meta_clip(args.arch)
        except ModelLoadError as e:
            raise CliError(str(e)) from e
        paper = args.accounting == "paper"
        method = build_method(name, dict(getattr(method_class(name), "paper_options", {})) if paper else {}, clip)
        cost = measure_step_cost(clip, method, args.batch_size, args.device, accounting=args.accounting)
        measured[name] = (method, cost, sum(p.numel() for _, p in method.trainable_parameters()))
    reference = measured["finetune"][1]
    total = run_budget_mafs(args.ft_steps, args.mafs, reference)
    rows = []
    for name in names:
        method, cost, trainable = measured[name]
        if args.accounting == "paper":  # the hook is in every step, not once per task
            cost = paper_step_cost(cost, method.extra_cost(TaskInfo(0, max(tasks) + 1, [], 0)))
            hooks = {t: 0.0 for t in tasks}
        else:
            hooks = {t: hook_cost_mafs(method.extra_cost(TaskInfo(0, t, [], 0)), reference) for t in tasks}
        rows.append(budget_row(name, cost, reference, total, hooks, trainable))
    return {
        "accounting": args.accounting,
        "arch": args.arch,
        "batch_size": args.batch_size,
        "budget_ft_steps": None if args.mafs is not None else args.ft_steps,
        "budget_mafs": total,
        "memory_source": reference.memory_source,
        "finetune_flops_over_forward": reference.flops / reference.forward_flops,
        "rows": rows,
    }


def format_table(table: dict) -> str:
    """The text table of :func:`measure_rows`'s result."""
    tasks = list(table["rows"][0]["steps_per_task"]) if table["rows"] else []
    head = ["method", "GFLOPs/step", "peak GiB", "mem ×", "GMAFs/step", *[f"T={t}" for t in tasks]]
    lines = [
        [
            r["method"],
            f"{r['gflops_per_step']:,.1f}",
            f"{r['peak_memory_gib']:,.2f}",
            f"{r['memory_multiplier']:.3f}",
            f"{r['mafs_per_step'] / 1e9:,.1f}",
            *[f"{r['steps_per_task'][t]:,}" if r["steps_per_task"][t] else "<1" for t in tasks],
        ]
        for r in table["rows"]
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *lines)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    budget = f"{table['budget_ft_steps']:,.0f} full fine-tuning steps = " if table["budget_ft_steps"] else ""
    memory = "estimated (CPU)" if table["memory_source"] == "estimate" else "measured (torch.cuda.max_memory_allocated)"
    return "\n".join(
        [
            f"{table['arch']} @ batch {table['batch_size']}; budget {budget}{table['budget_mafs']:.4g} MAFs; "
            f"peak memory {memory}",
            fmt(head),
            fmt(["-" * w for w in widths]),
            *map(fmt, lines),
            f"steps per task = floor((budget / T - hook MAFs) / MAFs per step); full fine-tuning = "
            f"{table['finetune_flops_over_forward']:.3f} x forward FLOPs",
        ]
    )


def run_budget(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    table = measure_rows(args)
    if args.json:
        print(json.dumps(table, indent=2))
    else:
        print(format_table(table))
        print(f"measured in {time.perf_counter() - start:.1f} s")
    return 0
