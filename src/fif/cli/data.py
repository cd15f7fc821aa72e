"""`fif data`: look at a benchmark's datasets, or write them to FiF's on-disk layout."""

from __future__ import annotations

import argparse

import yaml


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="show a benchmark's datasets or materialize them to disk",
        description="Inspect benchmarks: `fif data show mini` lists every dataset (role, kind, classes, split "
        "sizes, primer) and writes a PNG grid of samples with captions; `fif data materialize mini DIR` writes "
        "every split in FiF's preprocessed layout (images + per-split caption JSON).",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION")

    show = actions.add_parser("show", help="list datasets and write a sample grid")
    show.add_argument("benchmark", help="benchmark name (e.g. mini)")
    show.add_argument("options", nargs="*", metavar="key=value", help="benchmark options (e.g. image_size=64)")
    show.add_argument("--datasets", help="comma-separated dataset names (default: all)")
    show.add_argument("--grid", default="mini_samples.png", help="PNG to write (default: mini_samples.png); '' = none")
    show.add_argument("--per-dataset", type=int, default=6, help="samples per row of the grid")
    show.add_argument("--split", default="train", help="split to sample the grid from")
    show.set_defaults(func=main_show)

    mat = actions.add_parser("materialize", help="write splits in FiF's layout")
    mat.add_argument("benchmark", help="benchmark name (e.g. mini)")
    mat.add_argument("out_dir", help="destination folder")
    mat.add_argument("options", nargs="*", metavar="key=value", help="benchmark options (e.g. pool_size=2000)")
    mat.add_argument("--datasets", help="comma-separated dataset names (default: all)")
    mat.add_argument("--splits", help="comma-separated splits (default: every split)")
    mat.set_defaults(func=main_materialize)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _options(pairs: list[str]) -> dict:

    from fif.cli import CliError

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"benchmark option {pair!r} is not of the form key=value (e.g. image_size=64)")
        out[key] = yaml.safe_load(value)
    return out


def _names(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def main_show(args: argparse.Namespace) -> int:
    from fif.data.registry import get_benchmark
    from fif.data.show import describe, sample_grid

    bench = get_benchmark(args.benchmark, **_options(args.options))
    names = _names(args.datasets)
    print(describe(bench, names))
    if args.grid:
        path = sample_grid(bench, args.grid, per_dataset=args.per_dataset, split=args.split, datasets=names)
        print(f"sample grid: {path}")
    return 0


def main_materialize(args: argparse.Namespace) -> int:
    from fif.data.registry import get_benchmark
    from fif.data.show import materialize

    bench = get_benchmark(args.benchmark, **_options(args.options))
    written = materialize(bench, args.out_dir, _names(args.datasets), _names(args.splits))
    for path in written:
        print(path)
    print(f"{len(written)} splits written under {args.out_dir}")
    return 0
