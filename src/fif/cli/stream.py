"""`fif stream build|show`: write a stream file; show its tasks, datasets and samples.

    fif stream build --preset mini stream.ordering=similarity --out stream.json
    fif stream show stream.json stream.tasks=6 --png stream.png
    fif stream show --preset mini stream.ordering=time stream.interleave=true

A stream file is FiF's JSON list of "DATASET+++classname". `show` chunks it into stream.tasks tasks
(FiF's rule) and prints per task the concepts, datasets and training samples (`--concepts`: each
concept, with the score or count the ordering sorted by). Orderings that need the base model
(similarity, easy_to_hard) build it as `fif run` does. See docs/streams.md.
"""

from __future__ import annotations

import argparse
import json
import textwrap

import torch

from fif.cli import CliError


def _epilog_on_help(parser: argparse.ArgumentParser, epilog) -> None:
    """Compute ``parser``'s epilog only when its help is shown (it imports the config tree, which every
    other `fif` command would otherwise pay for at start)."""
    plain = parser.format_help

    def format_help() -> str:
        parser.epilog = epilog()
        return plain()

    parser.format_help = format_help  # type: ignore[method-assign]


def orderings_help() -> str:
    """The orderings, their rules and the config keys each reads (with the keys' help and defaults)."""
    from fif.config.load import field_help
    from fif.data.stream import COMMON_OPTIONS, ORDERING_HELP

    fields = {key: (text, default) for key, text, default in field_help()}

    def option(key: str) -> str:
        text, default = fields[key]
        return textwrap.fill(f"{key} (default {default!r}): {text}", 100, initial_indent="      ",
                             subsequent_indent="        ")

    lines = ["orderings (stream.ordering=NAME):"]
    for name, (rule, keys) in ORDERING_HELP.items():
        lines.append(textwrap.fill(f"{name}: {rule}", 100, initial_indent="  ", subsequent_indent="    "))
        lines += [option(k) for k in keys]
    lines.append("every ordering also reads:")
    lines += [option(k) for k in COMMON_OPTIONS]
    return "\n".join(lines)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("stream", help="build and show concept streams", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="stream_command", metavar="SUBCOMMAND", required=True)

    build = sub.add_parser(
        "build",
        help="order the benchmark's concepts and write a stream file",
        description="Order the concepts of the preset's benchmark by stream.ordering and write FiF's stream "
        "JSON. Override any config field as section.key=value.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _epilog_on_help(build, orderings_help)
    build.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    build.add_argument("--preset", default="mini", help="preset name or YAML file (default: mini)")
    build.add_argument("--out", required=True, help="where to write the stream JSON")
    build.set_defaults(func=run_build)

    show = sub.add_parser(
        "show",
        help="per-task concepts, datasets and samples of a stream (and a PNG)",
        description="Show a stream file, or the stream the preset and overrides build: per task its concepts, "
        "datasets and training samples. Give a stream file as the first argument (it is chunked into "
        "stream.tasks tasks), or none to build the stream from the preset.",
    )
    show.add_argument("items", nargs="*", metavar="[stream.json] section.key=value", help="stream file and/or overrides")
    show.add_argument("--preset", default="mini", help="preset name or YAML file (default: mini)")
    show.add_argument("--png", help="also draw datasets × tasks (concepts per cell) to this image (.png/.svg/.pdf)")
    show.add_argument("--json", action="store_true", help="print JSON instead of a table")
    show.add_argument("--concepts", action="store_true", help="also list each task's concepts, with the score or "
                      "count the ordering was built from (corpus count, zero-shot score, walk distance, release year)")
    show.set_defaults(func=run_show)


def _model_for(cfg):
    """(the base model as a concept scorer, precision) when the ordering needs the model, else (None, "fp32")."""
    from fif.data.stream import MODEL_ORDERINGS

    if cfg.stream.ordering not in MODEL_ORDERINGS or cfg.stream.reference == "zeroshot":
        return None, "fp32"
    from fif.config.components import ordering_options
    from fif.core.device import resolve_device, resolve_precision
    from fif.eval.concepts import ModelScorer
    from fif.runner.setup import load_model


    torch.manual_seed(cfg.run.seed)  # as `fif run` does: a random-init model (model.pretrained=null) is reproducible
    device = resolve_device(cfg.run.device)
    precision = resolve_precision(cfg.train.precision, device)
    return ModelScorer(load_model(cfg, device), device, ordering_options(cfg.stream, cfg.eval.batch_size, precision)), precision


def _ordering_label(cfg) -> str:
    s = cfg.stream
    label = f"ordering {s.ordering}" + (f" ({s.file})" if s.ordering == "file" else "")
    return label + (", reversed" if s.reverse else "") + f", seed {cfg.run.seed}"


def run_build(args: argparse.Namespace) -> int:
    from fif.config import load_config
    from fif.config.components import ordering_options
    from fif.data.registry import benchmark_options, get_benchmark
    from fif.data.specs import split_concept
    from fif.data.stream import order_concepts, write_stream

    cfg = load_config(args.preset, args.overrides)
    benchmark = get_benchmark(cfg.data.benchmark, **benchmark_options(cfg.data.options, cfg.data.root))
    scorer, precision = _model_for(cfg)
    s = cfg.stream
    concepts = order_concepts(
        benchmark, s.ordering, cfg.run.seed, s.reverse, s.file, s.datasets, scorer,
        ordering_options(s, cfg.eval.batch_size, precision),
    )
    path = write_stream(concepts, args.out)
    datasets = len({split_concept(c)[0] for c in concepts})
    print(f"wrote {len(concepts)} concepts of {datasets} datasets ({_ordering_label(cfg)}) to {path}")
    print(f"use it: fif run stream.ordering=file stream.file={path} stream.tasks={s.tasks}")
    return 0


def _split_items(items: list[str]) -> tuple[str | None, list[str]]:
    files = [i for i in items if "=" not in i]
    if len(files) > 1:
        raise CliError(f"give at most one stream file, got {', '.join(files)}")
    return (files[0] if files else None), [i for i in items if "=" in i]


def run_show(args: argparse.Namespace) -> int:
    from fif.config import load_config
    from fif.config.components import ordering_options
    from fif.data.registry import benchmark_options, get_benchmark
    from fif.data.stream import build_stream, describe_tasks

    file, overrides = _split_items(args.items)
    if file is not None:
        overrides = [*overrides, "stream.ordering=file", f"stream.file={file}"]
    cfg = load_config(args.preset, overrides)
    benchmark = get_benchmark(cfg.data.benchmark, **benchmark_options(cfg.data.options, cfg.data.root))
    scorer, precision = _model_for(cfg)
    s = cfg.stream
    stream = build_stream(
        benchmark, s.ordering, s.tasks, cfg.run.seed, s.reverse, s.file, s.datasets, s.reference, scorer,
        ordering_options(s, cfg.eval.batch_size, precision),
    )
    summaries = describe_tasks(stream.tasks, benchmark)
    ordered = stream.ordered
    if args.json:
        rows = [{"task": x.index, "concepts": x.concepts, "samples": x.samples} for x in summaries]
        if args.concepts:
            for row, task in zip(rows, stream.tasks):
                row["concept_list"] = list(task.concepts)
                if ordered is not None and ordered.scores is not None:
                    row["scores"] = [ordered.scores.get(c) for c in task.concepts]
        out = {"reference": s.reference, "ordering": s.ordering, "tasks": rows}
        if ordered is not None:
            out.update(score=ordered.score_label, note=ordered.note)
        print(json.dumps(out, indent=1))
    else:
        _print_table(cfg, summaries)
        if args.concepts:
            _print_concepts(stream)
    if args.png:
        from fif.results.report.stream import plot_stream

        if not summaries:
            raise CliError("--png: the zeroshot reference point has no tasks to draw")
        print(f"wrote {plot_stream(summaries, args.png)}")
    return 0


def _print_table(cfg, summaries) -> None:
    s = cfg.stream
    if s.reference == "zeroshot":
        print("stream.reference=zeroshot: no tasks (the run only evaluates the base model)")
        return
    concepts = sum(x.num_concepts for x in summaries)
    datasets = len({d for x in summaries for d in x.concepts})
    samples = sum(x.num_samples for x in summaries)
    how = "oracle: the whole stream as one task" if s.reference == "oracle" else f"{len(summaries)} tasks"
    print(f"{concepts} concepts of {datasets} datasets, {samples} training samples, {how} ({_ordering_label(cfg)})")
    print(f"{'task':>4} {'concepts':>8} {'datasets':>8} {'samples':>8}  concepts per dataset")
    for x in summaries:
        per = ", ".join(f"{d} {n}" for d, n in x.concepts.items())
        print(f"{x.index + 1:>4} {x.num_concepts:>8} {len(x.concepts):>8} {x.num_samples:>8}  {per}")


def _print_concepts(stream) -> None:
    ordered = stream.ordered
    scores = ordered.scores if ordered is not None else None
    if scores is not None:
        print(f"concepts per task, each with its {ordered.score_label}:")
    for task in stream.tasks:
        print(f"task {task.index + 1}:")
        for c in task.concepts:
            print(f"  {c}" + (f"  {scores[c]:g}" if scores is not None and c in scores else ""))
