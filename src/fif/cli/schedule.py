"""`fif schedule`: list the learning-rate schedules and plot them over a stream.

    fif schedule list
    fif schedule plot --schedules cosine,autoregressive_cosine --tasks 20 --steps 1420 --lr 1e-5 --out lr.png
"""

from __future__ import annotations

import argparse

from fif.cli import CliError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "schedule", help="list and plot learning-rate schedules", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="schedule_command", metavar="ACTION")

    listing = sub.add_parser("list", help="the schedule names with one-line descriptions")
    listing.set_defaults(func=run_list)

    plot = sub.add_parser(
        "plot",
        help="draw the learning rate over a whole stream (PNG/SVG/PDF by the --out suffix)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    plot.add_argument("--schedules", default="cosine", help="comma-separated names, or 'all'")
    plot.add_argument("--tasks", type=int, default=20, help="number of tasks T")
    plot.add_argument("--steps", type=int, default=1420, help="optimizer steps per task S")
    plot.add_argument("--lr", type=float, default=1e-5, help="peak learning rate")
    plot.add_argument("--lr-min-ratio", type=float, default=0.001, help="floor as a fraction of lr")
    plot.add_argument("--warmup-frac", type=float, default=0.1, help="warmup fraction of each task")
    plot.add_argument("--cooldown-frac", type=float, default=0.1, help="rsqrt family: final cooldown fraction")
    plot.add_argument("--decay-frac", type=float, default=0.2, help="wsd: final decay fraction")
    plot.add_argument("--anneal-shape", default="linear", help="wsd decay / rsqrt cooldown: linear, cosine, sqrt")
    plot.add_argument("--layout", choices=["overlay", "grid"], default="overlay", help="one axis or one panel each")
    plot.add_argument("--log-y", action="store_true", help="logarithmic learning-rate axis")
    plot.add_argument("--title", default=None, help="figure title")
    plot.add_argument("--out", default="lr.png", help="output file")
    plot.set_defaults(func=run_plot)

    parser.set_defaults(func=lambda args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_list(args: argparse.Namespace) -> int:
    from fif.train.schedules import schedule_summaries

    summaries = schedule_summaries()
    width = max(map(len, summaries))
    for name, summary in summaries.items():
        print(f"{name:<{width}}  {summary}")
    return 0


def _parse_names(text: str) -> list[str]:
    from fif.train.schedules import schedule_names, unknown_schedule_message

    names = schedule_names() if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise CliError(f"--schedules: give one or more of {', '.join(schedule_names())} (or 'all')")
    unknown = [unknown_schedule_message(n) for n in names if n not in schedule_names()]
    if unknown:
        raise CliError("--schedules: " + "\n  ".join(unknown))
    return names


def run_plot(args: argparse.Namespace) -> int:
    from fif.results.report.schedule import plot_schedules
    from fif.train.schedules import ScheduleSpec, task_peaks

    if args.tasks < 1 or args.steps < 1:
        raise CliError(f"--tasks ({args.tasks}) and --steps ({args.steps}) must be >= 1")
    specs = [
        ScheduleSpec(
            name=name,
            lr=args.lr,
            lr_min_ratio=args.lr_min_ratio,
            warmup_frac=args.warmup_frac,
            cooldown_frac=args.cooldown_frac,
            decay_frac=args.decay_frac,
            anneal_shape=args.anneal_shape,
        )
        for name in _parse_names(args.schedules)
    ]
    path = plot_schedules(
        specs, args.steps, args.tasks, args.out, layout=args.layout, log_y=args.log_y, title=args.title
    )
    print(f"wrote {path}")
    for spec in specs:
        peaks = task_peaks(spec, args.steps, args.tasks) / spec.lr
        shown = ", ".join(f"{p:.4g}" for p in peaks[:6]) + (", …" if len(peaks) > 6 else "")
        print(f"  {spec.name}: task peaks / lr = {shown} (last {peaks[-1]:.4g})")
    return 0
