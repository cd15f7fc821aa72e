"""Data loading speed at 224 px on JPEG files: fif's training mixture and evaluation images against a plain
torchvision ``ImageFolder`` + ``DataLoader`` doing the same decode and transform, in one process.

    python benchmarks/bench_data.py                         # workers 0,1,2; 384 images per class folder set
    python benchmarks/bench_data.py --workers 0,2,4,8 --images 2000 --json out.json

Data (generated in a temp folder, deleted after): a class-folder dataset of JPEGs (PIL, quality 90, 500x375,
smooth content, so the files and their decode cost look like photos rather than noise) for the current
task, the buffer and evaluation, and WebDataset tar shards of JPEG + caption for the pretraining pool.

What is timed, per number of workers (0 = in the main process), after one untimed pass that starts the
workers and warms the caches (printed apart as the first pass): the fastest of 3 passes.

- ``fif train``: the mixed training batches (``MixedBatches`` of ``train.batch_size`` images: 33 % pool
  shards, 34 % current task, 33 % buffer; RandomResizedCrop(0.9-1, bicubic) as FiF; captions tokenized,
  images normalised) through the run's ``PersistentLoader``.
- ``fif eval``: evaluation images (Resize(224, bicubic) + CenterCrop) through ``Evaluator.image_batches``.
- ``torchvision train`` / ``torchvision eval``: ``ImageFolder`` (PIL decode) + the same tensor transforms
  (``fif.data.sources.fif_layout``'s torchvision calls) + ``DataLoader(batch_size, num_workers)``.
- ``torchvision eval (PIL resize)``: the common recipe that resizes the PIL image before ``ToTensor`` (other
  pixels than fif's tensor transform; shown for its speed).

Images/s per worker is images/s divided by max(1, workers). The machine's load average is printed before
and after: on a shared machine, compare rows of one run only.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SIZE = 224


def photo_like(rng: np.random.Generator, h: int = 375, w: int = 500) -> np.ndarray:
    """A smooth RGB image: a colour gradient, a few flat shapes and mild noise (compresses like a photo)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    img = c0 + (c1 - c0) * ((x / w + y / h) / 2)[..., None]
    for _ in range(4):
        top, left = rng.integers(0, h - 40), rng.integers(0, w - 40)
        img[top : top + rng.integers(20, 160), left : left + rng.integers(20, 200)] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_data(root: Path, images: int, classes: int = 8, per_shard: int = 256) -> tuple[Path, Path]:
    """Class folders ``root/folder/<class>/*.jpg`` and shards ``root/shards/*.tar`` (jpg + txt)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder, shards = root / "folder", root / "shards"
    for i in range(images):
        cls = folder / f"class{i % classes}"
        cls.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo_like(rng)).save(cls / f"{i:06d}.jpg", quality=90)
    shards.mkdir()
    for start in range(0, images, per_shard):
        with tarfile.open(shards / f"{start // per_shard:05d}.tar", "w") as tar:
            for i in range(start, min(start + per_shard, images)):
                buf = io.BytesIO()
                Image.fromarray(photo_like(rng)).save(buf, format="JPEG", quality=90)
                for name, data in ((f"{i:09d}.jpg", buf.getvalue()), (f"{i:09d}.txt", f"a photo number {i}".encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return folder, shards


def timed_pass(make_iter, images_per_item) -> tuple[float, int]:
    """(seconds, images) of one full pass."""
    t0, n = time.perf_counter(), 0
    for item in make_iter():
        n += images_per_item(item)
    return time.perf_counter() - t0, n


REPEATS = 3  # timed passes per row; the fastest is kept (other jobs only ever slow a pass down)


def measure(name: str, workers: int, make_iter, images_per_item) -> dict:
    first, _ = timed_pass(make_iter, images_per_item)  # starts the workers, warms the page cache
    seconds, images = min(timed_pass(make_iter, images_per_item) for _ in range(REPEATS))
    rate = images / seconds
    return {"pipeline": name, "workers": workers, "images": images, "seconds": round(seconds, 3),
            "images_per_second": round(rate, 1), "per_worker": round(rate / max(1, workers), 1),
            "first_pass_seconds": round(first, 3)}


def fif_pipelines(folder: Path, shards: Path, batch_size: int, workers: int, steps: int) -> list[dict]:
    import open_clip

    from fif.data.bad_samples import guard
    from fif.data.loader import PersistentLoader, StreamBatches
    from fif.data.mixture import MixedBatches, MixtureSampler, Pool, batch_counts
    from fif.data.registry import Benchmark
    from fif.data.sources.folder import class_folders, read_folder
    from fif.data.sources.wds import read_shards
    from fif.data.specs import DatasetSpec
    from fif.eval.zeroshot import Evaluator

    spec = DatasetSpec("jpegs", "classification", "adaptation", tuple(class_folders(folder)), source="folder")
    data = guard(read_folder(spec, "train", folder))  # as a run reads them: unreadable images replaced
    pool = guard(read_shards(DatasetSpec("pool", "retrieval", "pretraining", source="wds"), "train", str(shards),
                             index_dir=folder.parent / "index"))
    half = len(data) // 2  # current task: one half, buffer: the other
    counts = batch_counts(batch_size, 0.33, 0.34, 0.33)
    sampler = MixtureSampler(counts, Pool([(data, np.arange(half))]), Pool([(data, np.arange(half, len(data)))]),
                             Pool([(pool, np.arange(len(pool)))]), seed=0, task=1)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    batches = MixedBatches(sampler, open_clip.get_tokenizer("ViT-B-16"), lambda x: (x - mean) / std, SIZE, steps)
    feed = PersistentLoader(workers, StreamBatches({1: batches}))
    evaluator = Evaluator(Benchmark("jpegs", {"jpegs": spec}, lambda s, split: data), batch_size=batch_size,
                          num_workers=workers)
    idx = np.arange(len(data))
    try:
        return [
            measure("fif train", workers, lambda: feed.iterate((1, s) for s in range(steps)), len),
            measure("fif eval", workers, lambda: evaluator.image_batches([data], [idx], SIZE, torch.device("cpu")), len),
        ]
    finally:
        feed.close()
        evaluator.close()


def torchvision_pipelines(folder: Path, batch_size: int, workers: int, images: int) -> list[dict]:
    from torchvision import datasets, transforms
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    from fif.data.sources.fif_layout import resize_center_crop

    def to_float(pil):  # fif's decode: RGB uint8 -> float [0, 1]
        return TF.pil_to_tensor(pil).float().div_(255.0)

    recipes = {
        "torchvision train": transforms.Compose([
            to_float, transforms.RandomResizedCrop(SIZE, scale=(0.9, 1.0), interpolation=InterpolationMode.BICUBIC,
                                                   antialias=True)]),
        "torchvision eval": transforms.Compose([to_float, lambda x: resize_center_crop(x, SIZE)]),
        "torchvision eval (PIL resize)": transforms.Compose([
            transforms.Resize(SIZE, interpolation=InterpolationMode.BICUBIC), transforms.CenterCrop(SIZE),
            transforms.ToTensor()]),
    }
    out = []
    for name, transform in recipes.items():
        dataset = datasets.ImageFolder(str(folder), transform=transform)
        subset = torch.utils.data.Subset(dataset, range(min(images, len(dataset))))
        loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, num_workers=workers,
                                             persistent_workers=workers > 0)
        out.append(measure(name, workers, lambda loader=loader: iter(loader), lambda item: len(item[0])))
        del loader
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    parser.add_argument("--images", type=int, default=384, help="JPEGs in the class folders (and in the shards)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in DataLoader workers: one thread per process, so rows compare per core
    rows = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fif-bench-data-") as tmp:
        folder, shards = make_data(Path(tmp), args.images)
        steps = args.images // args.batch_size
        for workers in (int(w) for w in args.workers.split(",")):
            rows += fif_pipelines(folder, shards, args.batch_size, workers, steps)
            rows += torchvision_pipelines(folder, args.batch_size, workers, steps * args.batch_size)
    load_after = os.getloadavg()
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after; {args.images} JPEGs 500x375 -> {SIZE} px, "
          f"batch {args.batch_size}")
    print(f"{'pipeline':32s} {'workers':>7s} {'images/s':>9s} {'per worker':>10s} {'first pass s':>12s}")
    for r in sorted(rows, key=lambda r: (r["pipeline"], r["workers"])):
        print(f"{r['pipeline']:32s} {r['workers']:>7d} {r['images_per_second']:>9.1f} {r['per_worker']:>10.1f} "
              f"{r['first_pass_seconds']:>12.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"load_average": [load_before, load_after], "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
