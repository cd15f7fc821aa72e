"""Mini-world generation speed: images per second per dataset, at 32 and 64 px, on one core.

The issue's target is >= 5,000 images/s at 32 px on one core (so caching to disk is optional).
Numpy is single-threaded here; run it on a quiet machine for honest numbers:

    .venv/bin/python benchmarks/bench_mini_generator.py [--n 4000] [--sizes 32 64]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, as the target says

from fif.data.mini import MiniSizes, generate_split  # noqa: E402
from fif.data.mini.render import digit_glyphs, letter_glyphs  # noqa: E402
from fif.data.mini.world import DEFAULT_LETTERS, catalogue  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=4000, help="images per dataset (about)")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    digit_glyphs(), letter_glyphs(DEFAULT_LETTERS)  # one-off glyph set-up is not generation
    datasets = catalogue()
    for size in args.sizes:
        total_n, total_s = 0, 0.0
        print(f"image size {size}px")
        for name, ds in datasets.items():
            spec = ds.spec
            classes = max(spec.num_classes, 1)
            sizes = MiniSizes(pool_size=args.n, train_per_class=max(1, args.n // classes), eval_size=args.n,
                              retrieval_train=args.n)
            t0 = time.perf_counter()
            data = generate_split(ds, "train", args.seed, size, sizes)
            dt = time.perf_counter() - t0
            total_n += len(data)
            total_s += dt
            print(f"  {name:20s} {len(data):6d} images {len(data) / dt:9.0f} img/s")
        print(f"  {'all':20s} {total_n:6d} images {total_n / total_s:9.0f} img/s")


if __name__ == "__main__":
    main()
