"""Peak memory and time of merging N checkpoints: streamed from files vs loaded into RAM first.

Usage:
    python benchmarks/bench_merge_memory.py [--arch ViT-S-32] [--n 20] [--operators interpolation,ties]
        [--modes streaming,open_handles,in_ram] [--workdir DIR]

Writes a random-init open_clip model as ``base.safetensors`` plus N perturbed copies (θ + 0.01·ε) to a
temporary folder, then measures each (mode, operator) in a fresh subprocess, so ``ru_maxrss`` (the
process's peak resident set) belongs to that merge alone:

* streaming     — ``merge(op, paths, base_path)``: SafetensorsSource reads one tensor per key and input;
* open_handles  — the same, through a StateSource that keeps each file's ``safe_open`` handle open
                  (shows why SafetensorsSource reopens: mapped pages stay resident);
* in_ram        — every checkpoint loaded with ``safetensors.torch.load_file`` first, then merged.

The numbers in docs/merging.md come from this script.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MB = 1024 * 1024


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's RSS (Linux >= 4.0); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """VmHWM: peak resident set size since the process started or since :func:`reset_peak_rss`."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class RssSampler:
    """Polls the current RSS every few milliseconds: an independent check of the kernel's VmHWM."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s, self.peak_mb = interval_s, rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, rss_mb())
            time.sleep(self.interval_s)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def write_checkpoints(arch: str, n: int, folder: Path) -> tuple[Path, list[Path], float]:
    import open_clip
    import torch
    from safetensors.torch import save_file

    from fif.model.clip import register_fif_models

    register_fif_models()
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in open_clip.create_model(arch).state_dict().items()}
    model_mb = sum(v.numel() * v.element_size() for v in state.values()) / MB
    base = folder / "base.safetensors"
    save_file(state, str(base))
    paths = []
    for i in range(n):
        g = torch.Generator().manual_seed(i + 1)
        perturbed = {
            k: v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in state.items()
        }
        paths.append(folder / f"task_{i:03d}.safetensors")
        save_file(perturbed, str(paths[-1]))
    return base, paths, model_mb


class OpenHandleSource:
    """A StateSource that keeps its safe_open handle for the whole merge."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        from fif.merge import SafetensorsSource

        self._header = SafetensorsSource(path)
        self._handle = safe_open(str(path), framework="pt")
        self.name = str(path)

    def keys(self):
        return self._header.keys()

    def spec(self, key):
        return self._header.spec(key)

    def get(self, key):
        return self._handle.get_tensor(key)


def child(mode: str, operator: str, folder: Path) -> dict:
    """Run one merge in this process and report its memory and time."""
    import torch
    from safetensors.torch import load_file

    from fif.merge import OPERATORS, merge

    torch.set_num_threads(1)
    base = folder / "base.safetensors"
    paths = sorted(folder.glob("task_*.safetensors"))
    baseline = rss_mb()
    if not reset_peak_rss():
        print("warning: cannot reset the peak RSS; it includes the imports", file=sys.stderr)
    start = time.perf_counter()
    with RssSampler() as sampler:
        if mode == "streaming":
            models, base_in = paths, base
        elif mode == "open_handles":
            models, base_in = [OpenHandleSource(p) for p in paths], OpenHandleSource(base)
        elif mode == "in_ram":
            models, base_in = [load_file(str(p)) for p in paths], load_file(str(base))
        else:
            raise SystemExit(f"unknown mode {mode!r}")
        options = {"k": 0.2} if operator == "ties" else {}
        out = merge(operator, models, base_in if OPERATORS[operator].task_vectors else None, **options)
    seconds = time.perf_counter() - start
    result_mb = sum(v.numel() * v.element_size() for v in out.values()) / MB
    return {
        "mode": mode,
        "operator": operator,
        "checkpoints": len(paths),
        "baseline_rss_mb": round(baseline, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "sampled_peak_rss_mb": round(sampler.peak_mb, 1),
        "result_mb": round(result_mb, 1),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-S-32")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--operators", default="interpolation,ties")
    parser.add_argument("--modes", default="streaming,open_handles,in_ram")
    parser.add_argument("--workdir", default=None, help="where to write checkpoints (default: a temp dir)")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "OPERATOR", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], Path(args.child[2]))))
        return
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        _, paths, model_mb = write_checkpoints(args.arch, args.n, folder)
        print(f"# {args.arch}: {model_mb:.0f} MB per checkpoint, {len(paths)} checkpoints + base written "
              f"in {time.perf_counter() - t0:.0f} s", flush=True)
        print("| operator | mode | peak RSS (MB) | RSS after imports (MB) | peak − imports (MB) | × one model "
              "| sampled peak − imports (MB) | time (s) |")
        print("|---|---|---|---|---|---|---|---|", flush=True)
        for operator in args.operators.split(","):
            for mode in args.modes.split(","):
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", mode, operator, str(folder)],
                    capture_output=True, text=True, check=True,
                )
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                extra = r["peak_rss_mb"] - r["baseline_rss_mb"]
                print(f"| {operator} | {mode} | {r['peak_rss_mb']:.0f} | {r['baseline_rss_mb']:.0f} | {extra:.0f} | "
                      f"{extra / model_mb:.2f} | {r['sampled_peak_rss_mb'] - r['baseline_rss_mb']:.0f} | "
                      f"{r['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
