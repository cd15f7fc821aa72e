"""The `fif budget` tables of docs/budget.md, and how long the command takes from a fresh process.

Usage:
    python benchmarks/bench_budget.py [--methods finetune,locked_text,locked_image,bitfit,lnfit] [--json]

Runs, each in its own process (so the time includes Python start-up and imports, as a user sees it):
  * ViT-B-16 at batch 512 (FiF's setup: 28,400 full fine-tuning steps, T ∈ {20, 50, 100, 200});
  * fif-mini-rn32 at batch 128 (the mini preset: 720 full fine-tuning steps, T ∈ {6, 20}).
Prints each table and its wall-clock time; the issue's requirement is under a minute for ViT-B-16.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

SETUPS = [
    ("ViT-B-16", 512, "28400", "20,50,100,200"),
    ("fif-mini-rn32", 128, "720", "6,20"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="all", help="comma-separated method names, or 'all'")
    parser.add_argument("--json", action="store_true", help="print the JSON tables")
    args = parser.parse_args()
    for arch, batch, ft_steps, tasks in SETUPS:
        cmd = [sys.executable, "-m", "fif", "budget", "--arch", arch, "--batch-size", str(batch),
               "--ft-steps", ft_steps, "--tasks", tasks, "--methods", args.methods]  # fmt: skip
        if args.json:
            cmd.append("--json")
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        print(f"$ fif budget --arch {arch} --batch-size {batch} --ft-steps {ft_steps} --tasks {tasks}")
        print(done.stdout.rstrip())
        if done.returncode:
            print(done.stderr.rstrip(), file=sys.stderr)
            return done.returncode
        print(f"wall-clock {seconds:.1f} s (fresh process, including imports)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
