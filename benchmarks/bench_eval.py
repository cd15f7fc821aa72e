"""Evaluation speed on the mini benchmark, and evaluation vs training time per task of finished runs.

    python benchmarks/bench_eval.py                       # images/s, fp32 and bf16, full test sets + subsets
    python benchmarks/bench_eval.py --run runs/X runs/Y   # also: per-task train vs eval seconds of those runs
    python benchmarks/bench_eval.py --json out.json

Throughput uses the mini benchmark's architecture (fif-mini-rn32) at random init: speed does not depend on
the weights. The machine's load average is printed before and after, since shared machines skew timings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch


def throughput(precision: str, batch_size: int, subset: bool, repeats: int) -> dict:
    from fif.data.registry import get_benchmark
    from fif.eval.zeroshot import Evaluator, class_embeddings
    from fif.model.clip import build_clip

    torch.manual_seed(0)
    clip = build_clip("fif-mini-rn32")
    clip.model.eval()
    bench = get_benchmark("mini")
    ev = Evaluator(bench, batch_size=batch_size)
    device = torch.device("cpu")
    for spec in ev.specs:  # generate the data once, outside the timings
        bench.load(spec.name, "test")
        ev.indices(spec, subset)
    ev.run(clip, device, subset=True, precision=precision)  # warm-up (allocator, oneDNN kernels)
    best = None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        scores = ev.run(clip, device, subset=subset, precision=precision)
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        if best is None or seconds < best[0]:
            best = (seconds, cpu_seconds, scores)
    seconds, cpu_seconds, scores = best
    t0 = time.perf_counter()
    for spec in ev.specs:
        if spec.kind == "classification":
            class_embeddings(clip, spec.classnames, spec.prompts(False), batch_size, device, precision)
    text_seconds = time.perf_counter() - t0
    images = sum(s.samples for s in scores)
    return {
        "precision": precision, "subset": subset, "batch_size": batch_size, "images": images,
        "seconds": round(seconds, 3), "images_per_second": round(images / seconds, 1),
        # CPU seconds of this process (all its threads): less sensitive than wall time to other jobs' load.
        "cpu_seconds": round(cpu_seconds, 3), "images_per_cpu_second": round(images / cpu_seconds, 1),
        "class_embedding_seconds": round(text_seconds, 3),
        "per_dataset": {s.dataset: {"samples": s.samples, "seconds": round(s.seconds, 3)} for s in scores},
    }


def run_times(folder: Path) -> dict:
    from fif.results.report import load_run

    run = load_run(folder)
    zero_shot = next((e.get("seconds") for e in run.events if e.get("event") == "eval" and e.get("task") == -1), None)
    tasks = [
        {"task": t.task + 1, "steps": t.steps, "train_seconds": t.train_seconds, "eval_seconds": t.eval_seconds,
         "eval_over_train": round(t.eval_seconds / t.train_seconds, 3) if t.train_seconds and t.eval_seconds else None}
        for t in run.ledger
    ]
    done = [t for t in run.ledger if t.train_seconds and t.steps]
    per_step = sum(t.train_seconds for t in done) / sum(t.steps for t in done) if done else None
    evals = [t.eval_seconds for t in run.ledger if t.eval_seconds and t.task < len(run.ledger) - 1]  # subset evals
    eval_mean = sum(evals) / len(evals) if evals else None
    return {"run": str(folder), "status": run.status, "zero_shot_eval_seconds": zero_shot, "tasks": tasks,
            "train_seconds_per_step": per_step, "subset_eval_seconds": eval_mean}


def default_steps_per_task(preset: str = "mini") -> float:
    """Full fine-tuning steps per task of a preset's default run (budget.ft_steps / stream.tasks)."""
    from fif.config import load_config

    cfg = load_config(preset)
    return cfg.budget.ft_steps / cfg.stream.tasks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--repeats", type=int, default=2, help="timed repeats; the fastest counts")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--run", nargs="*", default=[], help="run folders to read train/eval seconds from")
    p.add_argument("--no-throughput", action="store_true", help="only read the runs")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = {
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "processor": platform.processor() or platform.machine(), "load_before": os.getloadavg(),
    }
    print(f"machine: {machine['cpu_count']} CPUs, torch {machine['torch']} with {machine['torch_threads']} threads, "
          f"load average {machine['load_before'][0]:.1f}")
    results = []
    for precision in [] if args.no_throughput else args.precision:
        for subset in (False, True):
            r = throughput(precision, args.batch_size, subset, args.repeats)
            results.append(r)
            print(f"{precision:5s} {'subsets' if subset else 'full   '}: {r['images']:6d} images in {r['seconds']:7.2f} s = "
                  f"{r['images_per_second']:7.1f} images/s; {r['images_per_cpu_second']:7.1f} images per CPU-second "
                  f"(class embeddings of all datasets: {r['class_embedding_seconds']:.2f} s)")
    runs = [run_times(Path(r)) for r in args.run]
    for r in runs:
        print(f"run {r['run']} ({r['status']}); zero-shot evaluation {r['zero_shot_eval_seconds']} s")
        print(f"{'task':>5s} {'steps':>6s} {'train s':>9s} {'eval s':>8s} {'eval/train':>10s}")
        for t in r["tasks"]:
            print(f"{t['task']:>5d} {t['steps'] or 0:>6d} {t['train_seconds'] or 0:>9.1f} {t['eval_seconds'] or 0:>8.1f} "
                  f"{t['eval_over_train'] if t['eval_over_train'] is not None else '-':>10}")
        if r["train_seconds_per_step"] and r["subset_eval_seconds"]:
            steps = default_steps_per_task()
            train = steps * r["train_seconds_per_step"]
            r["projected_default"] = {"steps_per_task": steps, "train_seconds": train,
                                      "eval_over_train": r["subset_eval_seconds"] / train}
            print(f"  {r['train_seconds_per_step']:.2f} s/step; mini preset default ({steps:.0f} steps/task): "
                  f"{train:.0f} s training vs {r['subset_eval_seconds']:.0f} s subset evaluation per task "
                  f"= {r['subset_eval_seconds'] / train:.2f}")
    machine["load_after"] = os.getloadavg()
    print(f"load average after: {machine['load_after'][0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "throughput": results, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
