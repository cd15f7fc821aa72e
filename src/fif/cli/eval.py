"""`fif eval`: zero-shot scores of any model (a run's final weights, a checkpoint file, a base model)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from safetensors import safe_open


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a run, a checkpoint or a base model",
        description="Zero-shot evaluation (top-1/top-5 accuracy; image<->text Recall@1/5/10) on a benchmark's "
        "adaptation and eval-only datasets, with A_KA / A_ZS / GM. TARGET is a run folder (its final.safetensors, "
        "or its newest checkpoint), a .safetensors/.pt weights file, or nothing for a base model given by "
        "--arch/--pretrained. A weights file's architecture is the one fif recorded in it, else the open_clip "
        "architecture its tensor shapes fit (the preset's when several do; else name it with --arch). Other "
        "settings come from the run's config.yaml or --preset, then section.key=value overrides, anywhere on "
        "the line (e.g. eval.ensemble=true eval.batch_size=128).",
    )
    p.add_argument("args", nargs="*", metavar="TARGET | section.key=value", help="what to evaluate, and overrides")
    p.add_argument("--preset", default="mini", help="preset for settings when TARGET is not a run folder (default: mini)")
    p.add_argument("--arch", help="model architecture (model.arch)")
    p.add_argument("--pretrained", help="base weights: open_clip tag, file, or mini-base (model.pretrained)")
    p.add_argument("--benchmark", help="benchmark (data.benchmark)")
    p.add_argument("--datasets", help="comma-separated datasets to evaluate (eval.datasets; default: all)")
    p.add_argument("--subset", action="store_true", help="use FiF's fixed stream subsets instead of full test sets")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], help="autocast (eval.precision)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, auto (run.device)")
    p.add_argument("--json", action="store_true", help="print the scores as JSON")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="evaluate weights holding NaN/inf (refused by default: a diverged model)")
    p.set_defaults(func=main, intermixed="args")  # overrides after the flags land in args too (fif.cli.main)


def run_weights(folder: Path) -> tuple[Path, str]:
    """A run folder's weights: ``final.safetensors``, else the newest checkpoint's model (with a note)."""
    final = folder / "final.safetensors"
    if final.is_file():
        return final, "final weights"
    ckpts = sorted((folder / "checkpoints").glob("*/model.safetensors"), key=lambda p: p.stat().st_mtime)
    if ckpts:
        return ckpts[-1], f"training weights of checkpoint {ckpts[-1].parent.name} (the run has no final.safetensors)"
    from fif.cli import CliError

    raise CliError(f"{folder} has neither final.safetensors nor checkpoints/*/model.safetensors; nothing to evaluate")


def resolve(args: argparse.Namespace):
    """(config, description of the weights) from TARGET, --preset, the flags and the overrides."""
    from fif.cli import CliError
    from fif.config import load_config, read_yaml
    from fif.model.clip import infer_arch

    targets = [a for a in args.args if "=" not in a]
    overrides = [a for a in args.args if "=" in a]
    if len(targets) > 1:
        raise CliError(f"give at most one TARGET (run folder or weights file), got {', '.join(targets)}")
    base, weights, note = None, None, "base model"
    if targets:
        target = Path(targets[0])
        if target.is_dir():
            if not (target / "config.yaml").is_file():
                raise CliError(f"{target} is a folder without config.yaml; is it a fif run folder?")
            base = read_yaml(target / "config.yaml")
            weights, note = run_weights(target)
        elif target.is_file():
            weights, note = target, "weights file"
        else:
            raise CliError(f"TARGET {str(target)!r} is neither a run folder nor a weights file")
    flags = []
    if weights is not None:
        flags.append(f"model.pretrained={weights}")
    for flag, key in (("arch", "model.arch"), ("pretrained", "model.pretrained"), ("benchmark", "data.benchmark"),
                      ("precision", "eval.precision"), ("device", "run.device")):
        if getattr(args, flag):
            flags.append(f"{key}={getattr(args, flag)}")
    if args.datasets:
        flags.append(f"eval.datasets=[{args.datasets}]")
    cfg = load_config(None if base is not None else args.preset, flags + overrides, base=base)
    named = args.arch or any(o.startswith("model.arch=") for o in overrides)
    if weights is None and args.pretrained and Path(args.pretrained).is_file():
        weights = Path(args.pretrained)
    if weights is not None and base is None and not named:  # a weights file: its own architecture, not the preset's
        arch = weights_arch(weights) or infer_arch(weights, prefer=cfg.model.arch)
        if arch != cfg.model.arch:
            cfg = load_config(args.preset, [*flags, f"model.arch={arch}", *overrides])
    return cfg, note


def weights_arch(path: Path) -> str | None:
    """The architecture a fif safetensors file records in its metadata (None if none: a plain state dict,
    whose architecture :func:`fif.model.clip.infer_arch` finds from its shapes)."""
    if path.suffix != ".safetensors":
        return None

    try:
        with safe_open(str(path), "pt") as f:
            return (f.metadata() or {}).get("arch")
    except Exception:  # not our file or not readable: the model build reports it properly
        return None


def print_table(result, note: str, out=None) -> None:
    out = out or sys.stdout
    def fmt(v, spec=".2f"):
        return "-" if v is None else format(v, spec)

    print(f"{result.arch} ({note}: {result.pretrained}) on {result.benchmark}, "
          f"{'subsets' if result.subset else 'full test sets'}, {result.precision} on {result.device}", file=out)
    print(f"{'dataset':24s} {'role':10s} {'score':>7s} {'top1/R@1':>9s} {'top5/R@5':>9s} {'R@10':>6s} {'samples':>8s} {'img/s':>7s}",
          file=out)
    for s in result.scores:
        m = s.metrics
        if s.kind == "classification":
            r1, r5, r10 = m.get("top1"), m.get("top5"), None
        else:
            r1, r5, r10 = [(m[f"i2t_r{k}"] + m[f"t2i_r{k}"]) / 2 for k in (1, 5, 10)]
        rate = s.samples / s.seconds if s.seconds > 0 else None
        print(f"{s.dataset:24s} {s.role:10s} {fmt(s.score):>7s} {fmt(r1):>9s} {fmt(r5):>9s} {fmt(r10):>6s} "
              f"{s.samples:>8d} {fmt(rate, '.0f'):>7s}", file=out)
    p = result.point
    images = sum(s.samples for s in result.scores)
    print(f"A_KA {fmt(p['a_ka'])}  A_ZS {fmt(p['a_zs'])}  GM {fmt(p['gm'])}  "
          f"({images} images in {result.seconds:.1f} s)", file=out)


def main(args: argparse.Namespace) -> int:
    from fif.runner.evaluate import evaluate_config

    cfg, note = resolve(args)

    def on_event(event: dict) -> None:
        if event.get("status") == "checking" and not args.json:
            print(f"base model {event['arch']}: building it if not cached (first time: a few minutes)...", file=sys.stderr)

    result = evaluate_config(cfg, subset=args.subset, on_event=on_event, allow_nonfinite=args.allow_nonfinite)
    if args.json:
        print(json.dumps({"weights": note, **result.to_dict()}, indent=2))
    else:
        print_table(result, note)
    return 0
