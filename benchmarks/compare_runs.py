"""Compare run variants at equal budget on one preset: one `fif run` per variant and seed, one at a time.

A variant is a name and the config overrides that make it. Every variant also gets the shared overrides
given last on the command line. The script prints A_KA / A_ZS / GM at the zero-shot point, after the last
task, and their means over the trajectory (the zero-shot point included, as FiF reports them). It also
prints the change in A_KA and A_ZS from the zero-shot point and the steps per task, so "equal budget" can
be checked.

Usage (one heavy job at a time on a shared machine; the mini base model is built on first use):
    .venv/bin/python benchmarks/compare_runs.py --study merging   [--seeds 0 1] [--threads 2] [--json r.json] [--plot p.png]
    .venv/bin/python benchmarks/compare_runs.py --study schedules
    .venv/bin/python benchmarks/compare_runs.py --study replay
    .venv/bin/python benchmarks/compare_runs.py --variant "lr1e-4=train.lr=1e-4" --variant "lr5e-4=train.lr=5e-4" stream.tasks=4
    .venv/bin/python benchmarks/compare_runs.py --from-json seed0.json seed1.json --plot p.png   # table of saved runs

Studies (the figures in docs/merging.md, docs/recipe.md and docs/mini.md come from them):
    merging    plain fine-tuning vs fine-tuning + EMA merge (FiF's recommended recipe)
    schedules  per-task cosine vs the autoregressive cosine meta schedule (both fine-tuning + EMA merge off)
    replay     fine-tuning on the task alone vs with pool and buffer replay (no merging)
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
from fif.runner.stream import run

METRICS = ("a_ka", "a_zs", "gm")
NO_REPLAY = "data.mixture.pretraining=0 data.mixture.update=1 data.mixture.buffer=0"
STUDIES = {
    "merging": {"finetune": "merge.preset=none", "ema_merge": "merge.preset=ema_merge"},
    "schedules": {
        "cosine": "merge.preset=none train.schedule=cosine",
        "autoregressive_cosine": "merge.preset=none train.schedule=autoregressive_cosine",
    },
    "replay": {
        "finetune, no replay": f"merge.preset=none {NO_REPLAY}",
        "finetune, pool+buffer replay": "merge.preset=none",
        "ema_merge, no replay": f"merge.preset=ema_merge {NO_REPLAY}",
    },
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", choices=sorted(STUDIES), help="a named set of variants")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=OVERRIDES",
                   help='a variant: its name, "=", then space-separated key=value overrides (repeatable)')
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--preset", default="mini", help="the run preset")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--out", default="runs/compare", help="parent folder of the run folders")
    p.add_argument("--json", help="write every run's numbers here (after every run)")
    p.add_argument("--plot", help="write a PNG of the A_KA / A_ZS / GM trajectories here")
    p.add_argument("--from-json", nargs="+", metavar="FILE",
                   help="run nothing: print the table (and --plot) of results saved by --json (e.g. one file per seed)")
    p.add_argument("overrides", nargs="*", help="overrides shared by every variant, e.g. stream.tasks=4")
    args = p.parse_args()
    if args.from_json:
        args.variants = {}
        return args
    variants = dict(STUDIES[args.study]) if args.study else {}
    for text in args.variant:
        name, sep, rest = text.partition("=")
        if not sep or not name.strip():
            p.error(f"--variant {text!r}: expected NAME=key=value [key=value ...]")
        variants[name.strip()] = rest
    if not variants:
        p.error("give --study or at least one --variant")
    args.variants = {name: rest.split() for name, rest in variants.items()}
    return args


def slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name).strip("-")


def run_one(args: argparse.Namespace, name: str, seed: int) -> dict:
    overrides = [*args.variants[name], *args.overrides, f"run.seed={seed}", f"run.threads={args.threads}"]
    cfg = fif.load_config(args.preset, overrides)
    t0 = time.perf_counter()
    result = run(cfg, Path(args.out) / f"{slug(name)}-seed{seed}", overwrite=True)
    summary = result.summary
    trajectory = summary["trajectory"]
    return {
        "variant": name,
        "seed": seed,
        "overrides": overrides,
        "seconds": round(time.perf_counter() - t0, 1),
        "steps_per_task": summary.get("budget", {}).get("steps"),
        "zero_shot": {k: trajectory[0][k] for k in METRICS},
        "zero_shot_scores": trajectory[0]["scores"],
        "final": {k: summary["final"][k] for k in METRICS},
        "final_scores": trajectory[-1]["scores"],
        "mean": {k: summary["trajectory_mean"][k] for k in METRICS},
        "trajectory": [{k: p[k] for k in ("task", *METRICS)} for p in trajectory],
    }


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f}±{statistics.stdev(values):.2f}"


def table(rows: list[dict], names: list[str]) -> str:
    """A markdown table, one line per variant (mean ± std over seeds)."""
    cols = ["zero-shot A_KA", "zero-shot A_ZS", *(f"final {m.upper()}" for m in METRICS), "Δ A_KA", "Δ A_ZS",
            *(f"mean {m.upper()}" for m in METRICS), "steps/task", "seconds"]
    lines = ["| variant | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name in names:
        runs = [r for r in rows if r["variant"] == name]
        cells = [fmt([r["zero_shot"]["a_ka"] for r in runs]), fmt([r["zero_shot"]["a_zs"] for r in runs])]
        cells += [fmt([r["final"][m] for r in runs]) for m in METRICS]
        cells += [fmt([r["final"][m] - r["zero_shot"][m] for r in runs]) for m in ("a_ka", "a_zs")]
        cells += [fmt([r["mean"][m] for r in runs]) for m in METRICS]
        steps = runs[0]["steps_per_task"]
        cells += [str(steps[0]) if steps else "?", f"{statistics.mean(r['seconds'] for r in runs):.0f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], names: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, m in zip(axes, METRICS):
        for name in names:
            runs = [r for r in rows if r["variant"] == name]
            tasks = [p["task"] + 1 for p in runs[0]["trajectory"]]
            mean = [statistics.mean(r["trajectory"][i][m] for r in runs) for i in range(len(tasks))]
            ax.plot(tasks, mean, marker="o", label=name)
        ax.set_xlabel("tasks trained (0 = zero-shot)")
        ax.set_title(m.upper() + " (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def report(rows: list[dict], names: list[str], plot_path: str | None) -> None:
    steps = {tuple(r["steps_per_task"] or ()) for r in rows}
    print(table(rows, names))
    print(f"\nequal budget: {'yes' if len(steps) == 1 else 'NO'} (steps per task {sorted(steps)}); "
          f"seeds {sorted({r['seed'] for r in rows})}")
    if plot_path:
        plot(rows, names, plot_path)


def main() -> None:
    args = parse_args()
    if args.from_json:
        rows = [r for f in args.from_json for r in json.loads(Path(f).read_text())["runs"]]
        report(rows, list(dict.fromkeys(r["variant"] for r in rows)), args.plot)
        return
    names = list(args.variants)
    rows = []
    for seed in args.seeds:
        for name in names:
            print(f"running {name!r} seed {seed}: {' '.join(args.variants[name])}", flush=True)
            rows.append(run_one(args, name, seed))
            r = rows[-1]
            print(f"  final {r['final']}  mean {r['mean']}  steps/task {r['steps_per_task']}  {r['seconds']} s", flush=True)
            if args.json:  # after every run: a long comparison keeps what it has if stopped
                Path(args.json).write_text(json.dumps({"shared_overrides": args.overrides, "runs": rows}, indent=1))
    print()
    report(rows, names, args.plot)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, fif {fif.__version__}")


if __name__ == "__main__":
    main()
