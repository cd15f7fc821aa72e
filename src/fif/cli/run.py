"""`fif run`: a continual pretraining run from a preset plus `section.key=value` overrides."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run a continual pretraining stream",
        description="Run a continual pretraining stream: for each task train under the compute budget, "
        "then evaluate. Any config field can be overridden as section.key=value (e.g. method.name=finetune "
        "train.lr=1e-4). Results go to --out (default: a new folder under runs/).",
    )
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    p.add_argument("--preset", help="preset name or YAML file (default: mini)")
    p.add_argument("--out", help="run folder (default: runs/<time>-<benchmark>-<method>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument(
        "--resume", metavar="RUN",
        help="continue the interrupted run folder RUN from its last valid checkpoint, with its own config.yaml "
        "(overrides that change what the run computes are refused; others are applied with a warning)",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--list-methods", action="store_true", help="list update methods and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=main)


def fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


class TablePrinter:
    """Prints one row per evaluation: task, concepts, steps, MAFs spent, A_KA, A_ZS, GM."""

    HEADER = f"{'task':>5} {'concepts':>8} {'steps':>6} {'MAFs spent':>11} {'A_KA':>7} {'A_ZS':>7} {'GM':>7}"

    def __init__(self, out=None):
        self.out = out if out is not None else sys.stdout  # looked up now, not at import (tests swap sys.stdout)
        self.task_end: dict | None = None
        self.spent = 0.0

    def __call__(self, event: dict) -> None:
        from fif.eval.metrics import stream_point

        kind = event["event"]
        if kind == "base_model" and event.get("status") == "checking":
            print(f"base model {event['arch']}: building it if not cached (first time: a few minutes)...", file=self.out)
        elif kind == "base_model" and event.get("status") in ("built", "cached"):
            print(f"base model {event['status']}: {event['path']}", file=self.out)
        elif kind == "run_start":
            merge = event.get("merge") or {}
            name = merge.get("preset") if merge.get("preset") not in (None, "none") else "merge"  # axes set by hand
            merging = (f" + {name} (init {merge['init']}, deploy {merge['deploy']})"
                       if merge and (merge.get("init"), merge.get("deploy")) != ("last", "last") else "")
            print(
                f"{event['tasks']} tasks, method {event['method']}{merging}, {event['step_gflops']:.2f} GFLOPs/step, "
                f"{event['mafs_per_step']:.3g} MAFs/step, budget {event['budget_total_mafs']:.4g} MAFs "
                f"{'(paper accounting) ' if event.get('accounting') == 'paper' else ''}"
                f"on {event['device']} ({event['precision']})",
                file=self.out,
            )
            print(self.HEADER, file=self.out)
        elif kind == "task_end":
            self.task_end = event
            self.spent += event["spent_mafs"]

        elif kind == "eval":
            p = stream_point(event["scores"], event["roles"])
            t = self.task_end if event["task"] >= 0 else None
            task = "zs" if event["task"] < 0 else str(event["task"] + 1)
            print(
                f"{task:>5} {t['concepts'] if t else '-':>8} {t['steps'] if t else '-':>6} "
                f"{fmt(self.spent, '.4g') if t else '-':>11} {fmt(p['a_ka']):>7} {fmt(p['a_zs']):>7} {fmt(p['gm']):>7}"
                f"{skipped_note(t)}",
                file=self.out,
                flush=True,
            )


def skipped_note(task_end: dict | None) -> str:
    """``"  (3 of 8 steps skipped: non-finite)"`` after a task's row when the guard skipped steps, else ``""``."""
    n = (task_end or {}).get("skipped_steps") or 0
    return f"  ({n} of {task_end['steps']} steps skipped: non-finite)" if n else ""


def guard_line(summary: dict) -> str | None:
    """The line after ``final:`` when steps were skipped or rolled back (None for a clean run)."""
    g = summary.get("guard")
    if not g:
        return None
    return (f"guard: {g['skipped_steps']} steps skipped for a non-finite loss or gradient "
            f"(per task: {', '.join(map(str, g['skipped_per_task']))}), {g['rollbacks']} rollbacks")


def interrupted_message(e) -> str:
    """What to tell the user after SIGINT/SIGTERM: where the run stopped and how to continue it."""

    name = str(e.args[0]) if e.args else "signal"
    if e.out_dir is None or not (Path(e.out_dir) / "config.yaml").is_file():
        return f"fif run: stopped by {name} before the run started; nothing was saved"
    where = f"checkpoint saved: {e.checkpoint}" if e.checkpoint else "it continues from its last checkpoint"
    return f"fif run: stopped by {name}; {where}\nresume with: fif run --resume {e.out_dir}"


def main(args: argparse.Namespace) -> int:
    from fif.config import dump_yaml, load_config
    from fif.methods import registered_methods

    if args.list_methods:
        for name, cls in sorted(registered_methods().items()):
            print(f"{name:16s} {(cls.__doc__ or '').strip().splitlines()[0]}")
        return 0
    from fif.cli import CliError
    from fif.runner.folder import RunInterrupted

    if args.resume and (args.preset or args.out or args.overwrite):
        raise CliError("--resume continues RUN with its own config.yaml and folder; drop --preset/--out/--overwrite")
    if args.resume and args.print_config:
        from fif.runner.folder import resume_config

        print(dump_yaml(resume_config(args.resume, args.overrides).cfg), end="")
        return 0
    cfg = None if args.resume else load_config(args.preset or "mini", args.overrides)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    from fif.runner.stream import resume, run
    from fif.train.distributed import is_main

    try:
        if args.resume:
            result = resume(args.resume, args.overrides, on_event=TablePrinter(), progress=not args.no_progress)
        else:
            result = run(cfg, out_dir=args.out, overwrite=args.overwrite, on_event=TablePrinter(), progress=not args.no_progress)
    except RunInterrupted as e:
        if is_main():
            print(interrupted_message(e), file=sys.stderr)
        return 128 + e.signum
    if not is_main():  # torchrun's other ranks: rank 0 reports
        return 0
    f = result.final
    print(f"final: A_KA {fmt(f.get('a_ka'))}  A_ZS {fmt(f.get('a_zs'))}  GM {fmt(f.get('gm'))}")
    if line := guard_line(result.summary):
        print(line)
    print(f"results: {result.out_dir}/ (summary.json, events.jsonl, config.yaml, final.safetensors)")
    return 0
