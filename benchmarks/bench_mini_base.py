"""Build a mini base model through fif's own path and score it zero-shot, per dataset and per class.

It builds (or, with ``--cache-dir``, reuses) the base model of an architecture with
`fif.train.pretrain.ensure_base_model` and its recipe, times the build, and evaluates the result on every
eval-only and adaptation set of the mini benchmark (full test sets). Per classification set it also counts
the classes the model recognises well above chance (recall >= 2x chance). The mini-world issue's
targets: no eval-only set above 95 %, >= 70 % of each eval-only set's classes well above chance, A_KA
>= 1.5x its chance level.

Usage (nothing else running, for the time):
    .venv/bin/python benchmarks/bench_mini_base.py [--arch fif-mini-rn32] [--cache-dir DIR] [--threads 2]
        [--steps N] [--lr LR] [key=value benchmark options ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time

import numpy as np
import torch
import yaml

from fif.data.registry import get_benchmark
from fif.eval.zeroshot import class_embeddings, encode_images, encode_texts, retrieval_recall
from fif.model.clip import build_clip
from fif.train.pretrain import ensure_base_model, recipe_for


def chance(spec, n: int) -> float:
    """Chance score in percent: 1/C for classification, R@5 of a random ranking (5/N) for retrieval."""
    return 100.0 / spec.num_classes if spec.kind == "classification" else 100.0 * min(1.0, 5.0 / n)


@torch.no_grad()
def score(clip, spec, data) -> tuple[float, int, int]:
    """(score %, classes with recall >= 2x chance, classes) on the whole test split."""
    idx = np.arange(len(data))
    img = encode_images(clip, data, idx, 500, torch.device("cpu"))
    if spec.kind != "classification":
        texts, owner = [], []
        for j in idx.tolist():
            caps = list(data.captions(j))
            texts += caps
            owner += [j] * len(caps)
        r = retrieval_recall(img, encode_texts(clip, texts, 500, torch.device("cpu")), torch.as_tensor(owner))
        return 0.5 * (r["i2t_r5"] + r["t2i_r5"]), 0, 0
    classifier = class_embeddings(clip, spec.classnames, (spec.primer,), 500, torch.device("cpu"))
    pred = (img @ classifier.t()).argmax(1).numpy()
    targets = data.targets
    recall = np.array([(pred[targets == c] == c).mean() for c in range(spec.num_classes)])
    return 100.0 * (pred == targets).mean(), int((recall >= 2.0 / spec.num_classes).sum()), spec.num_classes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="fif-mini-rn32")
    p.add_argument("--steps", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--cache-dir", help="base model cache (default: a fresh temporary folder, so it always builds)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--json", help="also write the scores here")
    p.add_argument("options", nargs="*", help="mini benchmark options, e.g. pool_digits=0.1")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    options = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.options)}
    spec = recipe_for(args.arch)
    spec = dataclasses.replace(spec, steps=args.steps or spec.steps, lr=args.lr or spec.lr)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path, built = ensure_base_model(args.cache_dir or tmp, spec, options, on_log=lambda step, loss: print(
            f"step {step}/{spec.steps} loss {loss:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True))
        build = time.perf_counter() - t0
        clip = build_clip(args.arch, pretrained=str(path))
    clip.model.eval()
    print(f"{'built' if built else 'cached'} in {build:.0f} s ({spec}, options {options}); "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    bench = get_benchmark("mini", **options)
    rows, by_role = [], {"eval_only": [], "adaptation": []}
    print(f"{'dataset':<18} {'role':<10} {'score':>6} {'chance':>6} {'classes >= 2x chance':>21}")
    for name, ds in bench.datasets.items():
        if ds.role == "pretraining":
            continue
        data = bench.load(name, "test")
        s, known, classes = score(clip, ds, data)
        c = chance(ds, len(data))
        by_role[ds.role].append((s, c))
        rows.append({"dataset": name, "role": ds.role, "score": s, "chance": c, "known_classes": known, "classes": classes})
        print(f"{name:<18} {ds.role:<10} {s:6.1f} {c:6.1f} {f'{known}/{classes}' if classes else '-':>21}")
    a_ka, a_zs = (np.mean([s for s, _ in by_role[r]]) for r in ("adaptation", "eval_only"))
    ka_chance = np.mean([c for _, c in by_role["adaptation"]])
    print(f"A_KA {a_ka:.2f} (chance {ka_chance:.2f}, {a_ka / ka_chance:.2f}x)  A_ZS {a_zs:.2f}  GM {np.sqrt(a_ka * a_zs):.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"arch": args.arch, "spec": dataclasses.asdict(spec), "build_seconds": build, "built": built,
                       "rows": rows, "a_ka": a_ka, "a_ka_chance": ka_chance, "a_zs": a_zs}, f, indent=1)


if __name__ == "__main__":
    main()
