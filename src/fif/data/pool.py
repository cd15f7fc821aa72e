"""The pretraining pool named by ``data.mixture.pool``: a dataset of the benchmark, WebDataset shards,
or a caption manifest."""

from __future__ import annotations

from pathlib import Path

from fif.core.names import unknown_name_message
from fif.data.bad_samples import guard
from fif.data.registry import Benchmark
from fif.data.sources import manifest as manifest_source
from fif.data.sources import wds as wds_source
from fif.data.specs import DatasetSpec, SplitData

POOL_DATASET = "pretraining_pool"


def pool_spec(location: str, source: str) -> DatasetSpec:
    """The spec of a pool given by path: image-caption pairs, never evaluated."""
    return DatasetSpec(name=POOL_DATASET, kind="retrieval", role="pretraining", source=source, location=location,
                       description=f"pretraining pool from {location}")


def load_pool(benchmark: Benchmark, pool: str, index_dir: str | Path | None = None) -> SplitData:
    """Load the pretraining pool ``pool`` (its ``train`` split when it is a dataset of the benchmark),
    guarded: an undecodable image is replaced and reported (:mod:`fif.data.bad_samples`).

    Args:
        benchmark: the run's benchmark.
        pool: a dataset name of ``benchmark``; a shard pattern (``/data/laion/{00000..00099}.tar``,
            globs, ``::``-joined lists) or a folder of ``*.tar`` shards; or a CSV / JSONL manifest.
        index_dir: fallback folder for shard index caches (when the shards' folder is read-only).

    Raises:
        KeyError: ``pool`` is neither a dataset of the benchmark nor an existing path or pattern.
        fif.data.sources.common.SourceError: a malformed shard or manifest.
    """
    if pool in benchmark.datasets:
        return benchmark.load(pool, "train")
    path = Path(pool).expanduser()
    if path.suffix.lower() in manifest_source.FORMATS and path.is_file():
        return guard(manifest_source.read_manifest(pool_spec(pool, "manifest"), "train", path))
    if wds_source.looks_like_shards(pool) or path.is_dir():
        return guard(wds_source.read_shards(pool_spec(pool, "wds"), "train", pool, index_dir=index_dir))
    names = [s.name for s in benchmark.by_role("pretraining")] or list(benchmark.datasets)
    raise KeyError(
        unknown_name_message("pretraining pool (data.mixture.pool)", pool, names, where=f"benchmark {benchmark.name!r}")
        + " — or give WebDataset shards (/data/laion/{00000..00099}.tar, a folder of .tar files) or a CSV/JSONL "
        "manifest of image,caption"
    )
