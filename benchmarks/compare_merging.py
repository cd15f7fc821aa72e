"""Fine-tuning vs temporal merging (EMA-merge and the other merge presets) at equal budget on the mini benchmark.

Runs ``fif run --preset mini merge.preset=P`` for every merge preset P (``none`` = plain fine-tuning) and seed,
one run at a time, with the same budget (merging adds no training steps), and prints A_KA / A_ZS / GM after the
last task and their means over the trajectory (the zero-shot point included, as FiF reports them).

Usage (one heavy job at a time on a shared machine; the mini base model is built on first use, ~3+ min):
    .venv/bin/python benchmarks/compare_merging.py [--presets none,ema_merge] [--seeds 0] [--threads 2]
        [--out runs/compare-merging] [--json results.json] [key=value overrides ...]

    --presets none,zs_merge,ft_merge,ema_merge,online_ema,offline_merge   runs all of FiF's merging methods.

The figures in docs/merging.md ("Merging inside runs") come from this script.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import fif
from fif.runner import run

METRICS = ("a_ka", "a_zs", "gm")
NAMES = {"none": "finetune"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="none,ema_merge", help="comma-separated merge presets (none = finetune)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--preset", default="mini", help="the run preset")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--out", default="runs/compare-merging", help="parent folder of the run folders")
    p.add_argument("--json", help="write every run's numbers here")
    p.add_argument("overrides", nargs="*", help="extra config overrides, e.g. merge.alpha=0.3")
    return p.parse_args()


def run_one(args: argparse.Namespace, merge_preset: str, seed: int) -> dict:
    overrides = [*args.overrides, f"merge.preset={merge_preset}", f"run.seed={seed}", f"run.threads={args.threads}"]
    cfg = fif.load_config(args.preset, overrides)
    t0 = time.perf_counter()
    result = run(cfg, Path(args.out) / f"{merge_preset}-seed{seed}", overwrite=True)
    summary = result.summary
    return {
        "preset": merge_preset,
        "seed": seed,
        "merge": cfg.to_dict()["merge"],
        "seconds": round(time.perf_counter() - t0, 1),
        "steps_per_task": summary.get("budget", {}).get("steps"),
        "final": {k: summary["final"][k] for k in METRICS},
        "mean": {k: summary["trajectory_mean"][k] for k in METRICS},
        "trajectory": [{k: p[k] for k in ("task", *METRICS)} for p in summary["trajectory"]],
    }


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:6.2f}"
    return f"{statistics.mean(values):6.2f}±{statistics.stdev(values):4.2f}"


def table(rows: list[dict], presets: list[str]) -> str:
    head = f"{'method':<16}" + "".join(f"{'final ' + m.upper():>14}" for m in METRICS)
    head += "".join(f"{'mean ' + m.upper():>14}" for m in METRICS) + f"{'steps/task':>12}{'seconds':>10}"
    lines = [head]
    for p in presets:
        runs = [r for r in rows if r["preset"] == p]
        cells = [fmt([r["final"][m] for r in runs]) for m in METRICS] + [fmt([r["mean"][m] for r in runs]) for m in METRICS]
        steps = runs[0]["steps_per_task"]
        seconds = statistics.mean(r["seconds"] for r in runs)
        lines.append(f"{NAMES.get(p, p):<16}" + "".join(f"{c:>14}" for c in cells)
                     + f"{str(steps[0] if steps else '?'):>12}{seconds:>10.0f}")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    presets = [s.strip() for s in args.presets.split(",") if s.strip()]
    rows = []
    for seed in args.seeds:
        for preset in presets:
            print(f"running {NAMES.get(preset, preset)} (merge.preset={preset}) seed {seed} ...", flush=True)
            rows.append(run_one(args, preset, seed))
            r = rows[-1]
            print(f"  final {r['final']}  mean {r['mean']}  steps/task {r['steps_per_task']}  {r['seconds']} s", flush=True)
            if args.json:  # after every run: a long comparison keeps what it has if stopped
                Path(args.json).write_text(json.dumps({"overrides": args.overrides, "runs": rows}, indent=1))
    steps = {tuple(r["steps_per_task"] or ()) for r in rows}
    print()
    print(table(rows, presets))
    print(f"\nequal budget: {'yes' if len(steps) == 1 else 'NO'} (steps per task {sorted(steps)})")
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, fif {fif.__version__}, seeds {args.seeds}")


if __name__ == "__main__":
    main()
