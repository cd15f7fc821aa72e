"""`fif merge`: merge checkpoints (files, run folders, or a run's task history) into one safetensors file."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import yaml


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge",
        help="merge checkpoints with any operator (soups, TIES, DARE, ..., LiNeS) into a new weights file",
        description="Merge CHECKPOINTs (.safetensors files, or run folders for their final.safetensors) or a "
        "run's task history (--run RUN: RUN/history/task_*.safetensors, written by runs that merge over all "
        "checkpoints or set merge.save_history=true) into one .safetensors file, tensor by tensor (memory: about "
        "one model). Task-vector operators need --base (θ0; --run defaults it to RUN/history/zeroshot.safetensors). "
        "--eval scores the result like `fif eval`, with settings from RUN's config.yaml or --preset, then "
        "section.key=value overrides.",
    )
    p.add_argument("args", nargs="*", metavar="CHECKPOINT | section.key=value",
                   help="checkpoints to merge (oldest first), and --eval overrides")
    p.add_argument("-o", "--out", help="the merged .safetensors file to write")
    p.add_argument("--run", help="merge this run folder's task checkpoints (RUN/history/task_*.safetensors)")
    p.add_argument("--operator", default="interpolation", help="merge operator (default: interpolation; see --list)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="operator option, repeatable (e.g. --option k=0.2 --option lam=1.0)")
    p.add_argument("--base", help="θ0 (.safetensors) for task-vector operators")
    p.add_argument("--weights", help="interpolation weights: a scheme (uniform, linear, sqrt, quadratic, cubic, fifth, tenth, "
                   "exponential, log, or <scheme>_reversed; newest = last) or one number per checkpoint (0.2,0.3,0.5)")
    p.add_argument("--lines", metavar="alpha=A,beta=B[,schedule=S]",
                   help="LiNeS depth scaling of the merged task vector (schedule: linear, quadratic, sqrt)")
    p.add_argument("--copy-keys", action="append", default=[], metavar="PATTERN",
                   help="fnmatch pattern of float keys copied from the base (or first model) unmerged, repeatable")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--eval", action="store_true", help="evaluate the merged model on the benchmark")
    p.add_argument("--preset", default="mini", help="--eval settings when not merging a --run (default: mini)")
    p.add_argument("--subset", action="store_true", help="--eval on FiF's stream subsets instead of full test sets")
    p.add_argument("--json", action="store_true", help="print what was written (and the scores) as JSON")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="write (and --eval) a merge holding NaN/inf values (refused by default)")
    p.add_argument("--list", action="store_true", help="list the operators and their options, then exit")
    p.set_defaults(func=main)


def parse_pairs(items: list[str], what: str) -> dict:
    """``["k=0.2", "combine=ties"]`` → ``{"k": 0.2, "combine": "ties"}`` (values parsed as YAML scalars)."""

    from fif.cli import CliError

    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise CliError(f"{what} {item!r} is not of the form key=value")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def checkpoint_paths(args: argparse.Namespace, files: list[str]) -> tuple[list[Path], Path | None]:
    """The checkpoints to merge, oldest first, and the base (``--base``, else a run's zeroshot file)."""
    from fif.cli import CliError
    from fif.merge import get_operator
    from fif.runner.merger import HISTORY_DIR, ZEROSHOT_FILE, history_paths

    task_vectors = get_operator(args.operator).task_vectors
    paths, base = [], Path(args.base) if args.base else None
    if args.run:
        history = Path(args.run) / HISTORY_DIR
        paths = history_paths(history)
        if not paths:
            raise CliError(
                f"{args.run} has no task checkpoints in {history}/; runs write them when merge.init or merge.deploy "
                f"is 'all', or with merge.save_history=true"
            )
        if base is None and task_vectors and (history / ZEROSHOT_FILE).is_file():
            base = history / ZEROSHOT_FILE
    for name in files:
        path = Path(name)
        if path.is_dir():
            if not (path / "final.safetensors").is_file():
                raise CliError(f"{path} is a folder without final.safetensors; give a run folder or a .safetensors file")
            path = path / "final.safetensors"
        elif not path.is_file():
            raise CliError(f"checkpoint {name!r} does not exist")
        paths.append(path)
    if not paths:
        raise CliError("nothing to merge: give CHECKPOINT files or --run RUN")
    if task_vectors and base is None:
        raise CliError(f"operator {args.operator!r} merges task vectors θ_i − θ0: give θ0 as --base FILE")
    return paths, base


def merge_weights(spec: str | None, n: int, operator: str) -> list[float] | None:
    """``--weights`` as one weight per checkpoint (None: the operator's default)."""
    from fif.cli import CliError
    from fif.merge import HISTORY_SCHEMES, history_weights

    if spec is None:
        return None
    if operator != "interpolation":
        raise CliError(f"--weights weights the interpolation operator's checkpoints, not {operator!r}")
    if spec in HISTORY_SCHEMES:
        return history_weights(spec, n)
    try:
        weights = [float(w) for w in spec.split(",")]
    except ValueError:
        raise CliError(f"--weights {spec!r}: give a scheme ({', '.join(HISTORY_SCHEMES)}) or numbers like 0.2,0.8") from None
    if len(weights) != n:
        raise CliError(f"--weights gives {len(weights)} weights for {n} checkpoints; give one per checkpoint")
    if not all(math.isfinite(w) for w in weights):
        raise CliError(f"--weights {spec!r}: every weight must be a finite number, like 0.2,0.8")
    return weights


def list_operators() -> None:

    from fif.merge import OPERATORS

    for name in sorted(OPERATORS):
        op = OPERATORS[name]
        opts = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(op.options))
        kind = "task vectors (needs --base)" if op.task_vectors else "weights"
        print(f"{name:16s} {kind:28s} {opts or '-'}\n{'':16s} {op.summary}")


def write_merge(args: argparse.Namespace, paths: list[Path], base: Path | None, out: Path) -> dict:
    """Merge and write ``out`` atomically; returns what was done (for printing)."""
    from fif.cli import CliError
    from fif.cli.eval import weights_arch
    from fif.core.finite import describe_nonfinite, nonfinite_counts
    from fif.core.io import atomic_write_bytes, load_tensor_file, safetensors_bytes
    from fif.core.version import __version__
    from fif.merge import merge

    options = parse_pairs(args.option, "--option")
    weights = merge_weights(args.weights, len(paths), args.operator)
    if weights is not None:
        options["weights"] = weights
    lines = parse_pairs(args.lines.split(","), "--lines") if args.lines else None
    if lines is not None:
        from fif.merge import LinesOptions

        try:
            LinesOptions(**lines)
        except TypeError:
            raise CliError(
                f"--lines {args.lines!r}: give alpha=A,beta=B[,schedule=linear|quadratic|sqrt] (e.g. alpha=0.5,beta=0.5)"
            ) from None
    merged = merge(args.operator, paths, base, lines=lines, copy_keys=args.copy_keys, **options)
    if not args.allow_nonfinite and (bad := nonfinite_counts(merged)):
        inputs = [str(p) for p in [*paths, *([base] if base else [])] if nonfinite_counts(load_tensor_file(p))]
        cause = f"the inputs {', '.join(inputs)} hold NaN/inf" if inputs else "the options made them (check --option)"
        raise CliError(f"the merge holds {describe_nonfinite(bad)}: {cause}; nothing was written. Pass "
                       f"--allow-nonfinite to write it anyway")
    info = {
        "operator": args.operator, "options": options, "lines": lines, "base": str(base) if base else None,
        "inputs": [str(p) for p in paths], "copy_keys": args.copy_keys,
    }
    meta = {"fif_version": __version__, "fif_merge": json.dumps(info, sort_keys=True)}
    arch = weights_arch(paths[0])
    if arch:
        meta["arch"] = arch
    atomic_write_bytes(out, safetensors_bytes(merged, meta))
    return {"out": str(out), "tensors": len(merged), **info}


def evaluate(args: argparse.Namespace, out: Path, overrides: list[str]):
    """Score the merged file like `fif eval` (config from --run's config.yaml, else --preset)."""
    from fif.cli.eval import weights_arch
    from fif.config import load_config, read_yaml
    from fif.runner.evaluate import evaluate_config

    base = read_yaml(Path(args.run) / "config.yaml") if args.run and (Path(args.run) / "config.yaml").is_file() else None
    flags = [f"model.pretrained={out}"]
    arch = weights_arch(out)
    if base is None and arch:
        flags.append(f"model.arch={arch}")
    cfg = load_config(None if base is not None else args.preset, flags + overrides, base=base)
    return evaluate_config(cfg, subset=args.subset, allow_nonfinite=args.allow_nonfinite)


def main(args: argparse.Namespace) -> int:
    from fif.cli import CliError

    if args.list:
        list_operators()
        return 0
    files = [a for a in args.args if "=" not in a]
    overrides = [a for a in args.args if "=" in a]
    if overrides and not args.eval:
        raise CliError(f"section.key=value overrides ({', '.join(overrides)}) only apply with --eval")
    if not args.out:
        raise CliError("give the output file: -o merged.safetensors")
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise CliError(f"--out {args.out!r}: the merged weights are written as .safetensors; end the name with it")
    paths, base = checkpoint_paths(args, files)
    if any(out.resolve() == p.resolve() for p in [*paths, *([base] if base else [])]):
        raise CliError(f"--out {args.out!r} is one of the inputs; write the merge to a new file")
    if out.exists() and not args.overwrite:
        raise CliError(f"{args.out} exists; pass --overwrite to replace it")
    info = write_merge(args, paths, base, out)
    result = evaluate(args, out, overrides) if args.eval else None
    if args.json:
        print(json.dumps({**info, **({"eval": result.to_dict()} if result is not None else {})}, indent=2))
        return 0
    extra = f" over base {info['base']}" if info["base"] else ""
    print(f"merged {len(paths)} checkpoints with {args.operator}{extra} -> {out} ({info['tensors']} tensors)")
    if result is not None:
        from fif.cli.eval import print_table

        print_table(result, "merged weights", out=sys.stdout)
    return 0
