"""`fif data`: look at a benchmark's datasets, check a data root before a run, or write a benchmark to
FiF's on-disk layout."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="show a benchmark's datasets or materialize them to disk",
        description="Inspect benchmarks: `fif data show mini` lists every dataset (role, kind, classes, split "
        "sizes, primer) and writes a PNG grid of samples with captions; `fif data show fif --all` lists every "
        "registered dataset without reading data; `fif data check --preset fif data.root=...` checks a data root "
        "(and pool, and stream file) before a run; `fif data materialize mini DIR` writes every split in FiF's "
        "preprocessed layout (images + per-split caption JSON).",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION")

    show = actions.add_parser("show", help="list datasets and write a sample grid")
    show.add_argument("benchmark", help="benchmark name (e.g. mini, fif)")
    show.add_argument("options", nargs="*", metavar="key=value", help="benchmark options (e.g. image_size=64, root=/data/fif)")
    show.add_argument("--datasets", help="comma-separated dataset names (default: all)")
    show.add_argument("--grid", default="mini_samples.png", help="PNG to write (default: mini_samples.png); '' = none")
    show.add_argument("--per-dataset", type=int, default=6, help="samples per row of the grid")
    show.add_argument("--split", default="train", help="split to sample the grid from")
    show.add_argument("--all", action="store_true", help="every registered dataset (name, folder, role, kind, primer, "
                      "split files), on disk or not; reads no data and draws no grid (with root=..., says which are present)")
    show.add_argument("--json", action="store_true", help="print JSON instead of a table (no grid)")
    show.set_defaults(func=main_show)

    check = actions.add_parser(
        "check", help="check a data root, pool and stream file before a run",
        description="Preflight of a run's data, configured as `fif run` is: per dataset the files found or missing, "
        "split sizes, classes, the share of entries with a caption of their own, a decode test of sampled images "
        "and the primer; the pretraining pool (data.mixture.pool) and a stream file (stream.ordering=file) too. "
        "Exits 1 when a run would fail on anything reported, 0 otherwise. Example: fif data check --preset fif "
        "data.root=/data/fif data.options.info_dir=/src/fomo_in_flux/data_lib/00_info data.mixture.pool=/data/laion",
    )
    check.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides, as for fif run")
    check.add_argument("--preset", default="fif", help="preset name or YAML file (default: fif)")
    check.add_argument("--decode", type=int, default=8, help="images decoded per split and from the pool (default 8)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(func=main_check)

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
    from fif.data.show import describe, describe_rows, registered_datasets, registered_table, sample_grid

    names = _names(args.datasets)
    if args.all:
        options = _options(args.options)
        if names:
            options["datasets"] = names
        rows = registered_datasets(args.benchmark, options)
        print(json.dumps(rows, indent=1) if args.json else registered_table(rows))
        return 0
    bench = get_benchmark(args.benchmark, **_options(args.options))
    if args.json:
        print(json.dumps(describe_rows(bench, names), indent=1))
        return 0
    print(describe(bench, names))
    if args.grid:
        path = sample_grid(bench, args.grid, per_dataset=args.per_dataset, split=args.split, datasets=names)
        print(f"sample grid: {path}")
    return 0


def main_materialize(args: argparse.Namespace) -> int:
    from fif.cli import CliError
    from fif.data.registry import get_benchmark
    from fif.data.show import materialize

    bench = get_benchmark(args.benchmark, **_options(args.options))
    try:
        written = materialize(bench, args.out_dir, _names(args.datasets), _names(args.splits))
    except OSError as e:  # the destination, not the benchmark: say where it failed and what to do
        raise CliError(f"cannot write under {args.out_dir}: {e.strerror or e} ({e.filename or args.out_dir}); "
                       "choose a writable, existing-or-creatable DIR with enough space") from e
    for path in written:
        print(path)
    print(f"{len(written)} splits written under {args.out_dir}")
    return 0


def main_check(args: argparse.Namespace) -> int:
    from fif.cli import CliError
    from fif.config import load_config
    from fif.data.check import check_data, format_report
    from fif.data.registry import benchmark_options, get_benchmark

    if args.decode < 0:
        raise CliError(f"--decode {args.decode}: give 0 or more images per split")
    cfg = load_config(args.preset, args.overrides)
    options = benchmark_options(cfg.data.options, cfg.data.root)
    missing_is_error = True
    if cfg.data.benchmark == "fif":  # list the absent datasets rather than stop at them
        missing_is_error = options.get("missing", "error") == "error"
        options["missing"] = "skip"
    bench = get_benchmark(cfg.data.benchmark, **options)
    m = cfg.data.mixture
    pool = (m.pool or bench.pretraining_pool) if m.pretraining > 0 else None
    report = check_data(
        bench, missing_is_error, pool, index_dir=Path(cfg.run.cache_dir).expanduser() / "wds_index",
        stream_file=cfg.stream.file if cfg.stream.ordering == "file" else None, stream_datasets=cfg.stream.datasets,
        decode=args.decode, seed=cfg.run.seed, max_bad=cfg.data.max_bad_samples,
    )
    if m.pretraining > 0 and not pool:
        report.problems.append(f"data.mixture.pretraining={m.pretraining} but no pool: set data.mixture.pool (WebDataset "
                               "shards or a caption manifest) or data.mixture.pretraining=0")
    print(json.dumps(report.to_dict(), indent=1) if args.json else format_report(report))
    return 0 if report.ok else 1
