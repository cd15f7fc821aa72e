"""`fif update`: minor updates of a deployed CLIP, one at a time, as a lineage of versions (docs/update.md)."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "update",
        help="minor updates of a deployed model: a lineage of versions with a retention gate",
        description="Keep a deployed CLIP current one update at a time (months apart if need be): each update "
        "trains on new data plus a buffer of the earlier updates' data and pretraining replay, under a budget, "
        "exactly as the next task of a `fif run` would; it is released only if the retention gate passes.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    init = actions.add_parser("init", help="create a lineage folder: base weights (v1.0), recipe, manifest")
    init.add_argument("overrides", nargs="*", metavar="section.key=value",
                      help="recipe overrides, and update.KEY=value lineage settings (ft_steps, max_zs_drop, "
                      "max_dataset_drop, guard, pool, horizon, major_zs_drop, max_held, backfill)")
    init.add_argument("--out", required=True, help="the new lineage folder")
    init.add_argument("--model", help="model.arch (default: the recipe's)")
    init.add_argument("--pretrained", help="model.pretrained: an open_clip tag, a weights file, or mini-base")
    init.add_argument("--recipe", default="mini", help="preset name or YAML (default: mini); the paper's guidance "
                      "(fine-tuning + EMA merge, autoregressive meta schedule, 1/3 mixture) is applied on top")
    init.set_defaults(func=main_init, intermixed="overrides")

    ap = actions.add_parser("apply", help="train one update on new data; release it if the retention gate passes")
    ap.add_argument("lineage")
    ap.add_argument("overrides", nargs="*", metavar="section.key=value", help="config changes for this update only")
    ap.add_argument("--data", required=True, metavar="SOURCE", help="a `fif data materialize` folder (DIR/NAME), a "
                    "class-folder tree, a caption manifest (DIR/{split}.csv), a benchmark YAML, or BENCHMARK:DATASET")
    ap.add_argument("--concepts", metavar="A,B,...", help="train on only these classes of SOURCE (a new concept set "
                    "out of a larger folder; not for caption manifests)")
    ap.add_argument("--budget", type=float, help="this update's budget in full fine-tuning steps")
    ap.add_argument("--dry-run", action="store_true", help="print the plan (steps, mixture, expected time) only")
    ap.add_argument("--restart", action="store_true", help="discard an interrupted apply of other data")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.set_defaults(func=main_apply, intermixed="overrides")

    lg = actions.add_parser("log", help="the versions with their metrics, data and budget")
    lg.add_argument("lineage")
    lg.add_argument("--json", action="store_true")
    lg.set_defaults(func=main_log)
    ev = actions.add_parser("eval", help="score versions on every update dataset and guard set they lack a score on")
    ev.add_argument("lineage")
    ev.add_argument("--versions", help="comma-separated versions (default: all)")
    ev.set_defaults(func=main_eval)
    sh = actions.add_parser("show", help="everything recorded about one version (default: the deployed one)")
    sh.add_argument("lineage")
    sh.add_argument("version", nargs="?")
    sh.set_defaults(func=main_show)
    df = actions.add_parser("diff", help="per-dataset deltas between two versions")
    df.add_argument("lineage")
    df.add_argument("a")
    df.add_argument("b")
    df.set_defaults(func=main_diff)
    rb = actions.add_parser("rollback", help="point the deployed version back (default: to its parent)")
    rb.add_argument("lineage")
    rb.add_argument("--to", help="the released version to deploy")
    rb.add_argument("--reason", default="", help="recorded in lineage.json")
    rb.set_defaults(func=main_rollback)
    pr = actions.add_parser("promote", help="release a candidate the gate held, with a recorded reason")
    pr.add_argument("lineage")
    pr.add_argument("version")
    pr.add_argument("--reason", required=True)
    pr.set_defaults(func=main_promote)
    ex = actions.add_parser("export", help="write a version's weights as a plain open_clip .safetensors")
    ex.add_argument("lineage")
    ex.add_argument("version", nargs="?", help="default: the deployed one")
    ex.add_argument("-o", "--out", required=True)
    ex.set_defaults(func=main_export)
    pl = actions.add_parser("plan", help="minor or major update next, and why")
    pl.add_argument("lineage")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(func=main_plan)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def main_init(args: argparse.Namespace) -> int:
    from fif.cli.run import TablePrinter
    from fif.update import init

    lin = init(args.out, recipe=args.recipe, arch=args.model, pretrained=args.pretrained, overrides=args.overrides,
               on_event=TablePrinter())
    s = lin.settings
    print(f"lineage {lin.root}: v1.0 = {args.pretrained or 'the recipe base model'}; each update {s['ft_steps']:g} "
          f"fine-tuning steps of budget, gate: A_ZS may drop <= {s['max_zs_drop']:g} points on "
          f"{', '.join(s['guard'])}")
    return 0


def main_apply(args: argparse.Namespace) -> int:
    from fif.cli.run import TablePrinter
    from fif.update import apply

    concepts = [c.strip() for c in args.concepts.split(",") if c.strip()] if args.concepts else None
    if args.dry_run:
        plan = apply(args.lineage, args.data, args.budget, args.overrides, dry_run=True, concepts=concepts)
        print(f"{plan.version} (update {plan.update_index}, from {plan.parent}) on {plan.data} as {plan.dataset}"
              + (f", {len(plan.concepts)} classes: {', '.join(plan.concepts)}" if plan.concepts else ""))
        print(f"  budget {fmt(plan.ft_steps, 'g')} FT steps = {plan.budget_mafs:.4g} MAFs; {plan.mafs_per_step:.4g} "
              f"MAFs/step -> {plan.steps} steps at batch {plan.batch_size}")
        print("  per batch: " + ", ".join(f"{k} {v}" for k, v in plan.per_batch.items())
              + "; over the update: " + ", ".join(f"{k} {v}" for k, v in plan.samples.items()) + " samples")
        print("  training samples: " + ", ".join(f"{k} {v}" for k, v in plan.dataset_sizes.items())
              + f"; buffer: {', '.join(plan.buffer) or 'empty (first update)'}")
        print(f"  expected training time: {fmt(plan.expected_seconds, '.0f')} s"
              + ("" if plan.expected_seconds is not None else " (no update yet to time it by)"))
        for note in plan.notes:
            print(f"  note: {note}")
        return 0
    result = apply(args.lineage, args.data, args.budget, args.overrides, restart=args.restart,
                   on_event=TablePrinter(), progress=not args.no_progress, concepts=concepts)
    gate = result.gate
    if result.released:
        print(f"released {result.version} (deployed): {gate['summary']}")
        _print_backfill(result.backfilled)
        return 0
    print(f"held {result.version} (not deployed): {gate['summary']}")
    _print_backfill(result.backfilled)
    for r in gate["regressions"]:
        print(f"  {r['dataset']:24s} {r['before']:7.2f} -> {r['after']:7.2f}  ({r['delta']:+.2f})")
    print(f"promote it by hand with: fif update promote {args.lineage} {result.version} --reason '...'")
    return 3


def _print_backfill(filled: dict[str, dict[str, float]]) -> None:
    """The score table's cells the apply filled: earlier versions scored on the new data (percent)."""
    for version, scores in filled.items():
        print(f"  score table: {version} on " + ", ".join(f"{d} {s:.2f}" for d, s in sorted(scores.items())))


def main_log(args: argparse.Namespace) -> int:
    from fif.update import log_rows

    rows = log_rows(args.lineage)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    sets = rows[0]["update_sets"]
    print(f"A_KA and GM on {len(sets)} update sets ({', '.join(sets) or 'none yet'}), the same for every version; "
          "A_KA so far: on the version's own updates")
    print(f"{'version':8s} {'status':9s} {'parent':7s} {'A_KA':>7s} {'so far':>7s} {'A_ZS':>7s} {'GM':>7s} "
          f"{'steps':>6s} {'MAFs':>10s}  data")
    for r in rows:
        mark = "*" if r["deployed"] else " "
        print(f"{r['version'] + mark:8s} {r['status']:9s} {r['parent'] or '-':7s} {fmt(r['a_ka_all']):>7s} "
              f"{fmt(r['a_ka']):>7s} {fmt(r['a_zs']):>7s} {fmt(r['gm_all']):>7s} {fmt(r['steps'], 'd'):>6s} "
              f"{fmt(r['spent_mafs'], '.3e'):>10s}  {r['data'] or '-'}")
    print("* deployed" + ("; - : a score is missing (fill it with: fif update eval "
                          f"{args.lineage})" if any(r["missing"] for r in rows) else ""))
    return 0


def main_eval(args: argparse.Namespace) -> int:
    from fif.cli.run import TablePrinter
    from fif.update import evaluate

    versions = [v.strip() for v in args.versions.split(",") if v.strip()] if args.versions else None
    filled = evaluate(args.lineage, versions, on_event=TablePrinter())
    if not filled:
        print("nothing to score: every version has a score on every update dataset and guard set")
    for version, cells in filled.items():
        print(f"{version}: " + ", ".join(f"{d} {s:.2f}" for d, s in cells.items()))
    return 0


def main_show(args: argparse.Namespace) -> int:
    from fif.update import show

    print(json.dumps(show(args.lineage, args.version), indent=2))
    return 0


def main_diff(args: argparse.Namespace) -> int:
    from fif.update import diff

    print(f"{'dataset':24s} {'role':11s} {args.a:>8s} {args.b:>8s} {'delta':>8s}")
    for r in diff(args.lineage, args.a, args.b):
        delta = "-" if r["delta"] is None else f"{r['delta']:+.2f}"
        print(f"{r['dataset']:24s} {r['role'] or '-':11s} {fmt(r[args.a]):>8s} {fmt(r[args.b]):>8s} {delta:>8s}")
    return 0


def main_rollback(args: argparse.Namespace) -> int:
    from fif.update import rollback

    print(f"deployed: {rollback(args.lineage, args.to, args.reason)}")
    return 0


def main_promote(args: argparse.Namespace) -> int:
    from fif.update import promote

    print(f"deployed: {promote(args.lineage, args.version, args.reason)} (promoted by hand: {args.reason})")
    return 0


def main_export(args: argparse.Namespace) -> int:
    from fif.update import export

    print(f"wrote {export(args.lineage, args.version, args.out)}")
    return 0


def main_plan(args: argparse.Namespace) -> int:
    from fif.update import plan

    p = plan(args.lineage)
    if args.json:
        print(json.dumps(p, indent=2))
        return 0
    print(f"next: a {p['recommendation']} update")
    for reason in p["reasons"]:
        print(f"  - {reason}")
    return 0
