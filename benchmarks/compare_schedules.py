"""Per-task cosine vs autoregressive cosine (or any schedules) at equal budget on the mini benchmark.

Runs ``fif run --preset mini train.schedule=S`` for every schedule and seed, one run at a time, with
the same budget (so the same steps per task), and prints A_KA / A_ZS / GM after the last task and their
means over the trajectory (the zero-shot point included, as FiF reports them).

Usage (one heavy job at a time on a shared machine; the mini base model is built on first use):
    .venv/bin/python benchmarks/compare_schedules.py [--seeds 0 1] [--threads 2]
        [--schedules cosine,autoregressive_cosine] [--out runs/compare-schedules]
        [--json results.json] [--plot docs/figures/compare_schedules.png] [key=value overrides ...]

The figures in docs/recipe.md come from this script.
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


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--schedules", default="cosine,autoregressive_cosine", help="comma-separated schedule names")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--preset", default="mini")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--out", default="runs/compare-schedules", help="parent folder of the run folders")
    p.add_argument("--json", help="write every run's numbers here")
    p.add_argument("--plot", help="write a PNG of the A_KA / A_ZS trajectories here")
    p.add_argument("overrides", nargs="*", help="extra config overrides, e.g. budget.ft_steps=360")
    return p.parse_args()


def run_one(args: argparse.Namespace, schedule: str, seed: int) -> dict:
    overrides = [*args.overrides, f"train.schedule={schedule}", f"run.seed={seed}", f"run.threads={args.threads}"]
    cfg = fif.load_config(args.preset, overrides)
    t0 = time.perf_counter()
    result = run(cfg, Path(args.out) / f"{schedule}-seed{seed}", overwrite=True)
    summary = result.summary
    return {
        "schedule": schedule,
        "seed": seed,
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


def table(rows: list[dict], schedules: list[str]) -> str:
    head = f"{'schedule':<24}" + "".join(f"{'final ' + m.upper():>14}" for m in METRICS)
    head += "".join(f"{'mean ' + m.upper():>14}" for m in METRICS) + f"{'steps/task':>12}{'seconds':>10}"
    lines = [head]
    for s in schedules:
        runs = [r for r in rows if r["schedule"] == s]
        cells = [fmt([r["final"][m] for r in runs]) for m in METRICS] + [fmt([r["mean"][m] for r in runs]) for m in METRICS]
        steps = runs[0]["steps_per_task"]
        seconds = statistics.mean(r["seconds"] for r in runs)
        lines.append(f"{s:<24}" + "".join(f"{c:>14}" for c in cells) + f"{str(steps[0] if steps else '?'):>12}{seconds:>10.0f}")
    return "\n".join(lines)


def plot(rows: list[dict], schedules: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, m in zip(axes, METRICS):
        for s in schedules:
            runs = [r for r in rows if r["schedule"] == s]
            tasks = [p["task"] + 1 for p in runs[0]["trajectory"]]
            mean = [statistics.mean(r["trajectory"][i][m] for r in runs) for i in range(len(tasks))]
            ax.plot(tasks, mean, marker="o", label=s)
        ax.set_xlabel("tasks seen")
        ax.set_title(m.upper() + " (%)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    args = parse_args()
    schedules = [s.strip() for s in args.schedules.split(",") if s.strip()]
    rows = []
    for seed in args.seeds:
        for schedule in schedules:
            print(f"running {schedule} seed {seed} ...", flush=True)
            rows.append(run_one(args, schedule, seed))
            r = rows[-1]
            print(f"  final {r['final']}  mean {r['mean']}  steps/task {r['steps_per_task']}  {r['seconds']} s", flush=True)
    steps = {tuple(r["steps_per_task"] or ()) for r in rows}
    print()
    print(table(rows, schedules))
    print(f"\nequal budget: {'yes' if len(steps) == 1 else 'NO'} (steps per task {sorted(steps)})")
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, fif {fif.__version__}, seeds {args.seeds}")
    if args.json:
        Path(args.json).write_text(json.dumps({"overrides": args.overrides, "runs": rows}, indent=1))
    if args.plot:
        plot(rows, schedules, args.plot)


if __name__ == "__main__":
    main()
