"""`fif report`: tables, plots and a self-contained HTML page from one or more run folders."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="HTML report, plots and metrics of run folders",
        description="Read each run folder's events.jsonl (finished or interrupted) and write report.html (plots "
        "embedded, no external files), one PNG per plot and report.json: the A_KA-vs-A_ZS trajectory, "
        "A_KA/A_ZS/GM over tasks, per-dataset change from zero-shot, forgetting and backward transfer, the "
        "budget ledger, and a comparison table across runs.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders, or a sweep folder (its runs)")
    p.add_argument("--out", help="output folder (default: RUN/report for one run or sweep; required for several)")
    p.add_argument("--title", help="page title")
    p.add_argument("--json", action="store_true", help="print every run's metrics as JSON instead of the table")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard files from the events into RUN/tensorboard (for runs made without)")
    p.set_defaults(func=main)


def fmt(value, spec: str = ".2f", signed: bool = False) -> str:
    return "-" if value is None else format(value, ("+" if signed else "") + spec)


def print_table(metrics: list[dict]) -> None:
    label_w = max(8, *(len(m["label"]) for m in metrics))
    print(f"{'run':{label_w}s} {'method':12s} {'A_KA':>6s} {'A_ZS':>6s} {'GM':>6s}   {'mean A_KA':>9s} {'A_ZS':>6s} "
          f"{'GM':>6s}   {'forget':>6s} {'BWT':>6s}  status")
    for m in metrics:
        f, t = m["final"], m["trajectory_mean"]
        print(f"{m['label']:{label_w}s} {m['method'][:12]:12s} {fmt(f.get('a_ka')):>6s} {fmt(f.get('a_zs')):>6s} "
              f"{fmt(f.get('gm')):>6s}   {fmt(t.get('a_ka')):>9s} {fmt(t.get('a_zs')):>6s} {fmt(t.get('gm')):>6s}   "
              f"{fmt(m['mean_forgetting']):>6s} {fmt(m['mean_backward_transfer'], signed=True):>6s}  {m['status']}")


def main(args: argparse.Namespace) -> int:
    from fif.cli import CliError
    from fif.results.report import write_report
    from fif.runner.sweep import sweep_run_folders

    given, args.runs = args.runs, []
    for run in given:  # a sweep folder stands for its runs that have started
        runs = sweep_run_folders(run)
        if runs == []:
            raise CliError(f"sweep {run} has no run with events yet; start them with: fif sweep --out {run} --run --resume")
        args.runs += [str(r) for r in runs] if runs is not None else [run]
    for run in args.runs:
        if not (Path(run) / "events.jsonl").is_file():
            raise CliError(f"{run} has no events.jsonl; give fif run folders or a fif sweep folder")
    if args.out:
        out = Path(args.out)
    elif len(given) == 1:
        out = Path(given[0]) / "report"
    else:
        raise CliError("several runs: say where the report goes with --out DIR")
    if args.tensorboard:
        from fif.results.events import read_events
        from fif.results.sinks import TensorBoardSink, replay

        for run in args.runs:
            replay(read_events(Path(run) / "events.jsonl"), TensorBoardSink(Path(run) / "tensorboard"))
    report = write_report(args.runs, out, title=args.title)
    if args.json:
        print(json.dumps({"runs": report.metrics}, indent=2))
        return 0
    print_table(report.metrics)
    print(f"report: {report.html} ({len(report.pngs)} plots as PNG beside it, metrics in {report.json.name})")
    return 0
