"""Persistent DataLoader workers: the same items with 0 or 2 workers, one set of worker processes for every
pass, and torch's global RNG left alone."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from fif.data.loader import PersistentLoader, SplitImages, StreamBatches
from fif.data.mixture import MixedBatches, MixtureSampler, Pool, batch_counts
from fif.data.sources.common import SourceError
from fif.data.specs import BadSampleError


class WhoServes(torch.utils.data.Dataset):
    """Item k is (k, the process that computed it)."""

    def __getitem__(self, key: int) -> tuple[int, int]:
        return key, os.getpid()


def test_workers_persist_across_passes_and_keep_the_order():
    loader = PersistentLoader(2, WhoServes())
    try:
        first = list(loader.iterate(range(6)))
        second = list(loader.iterate([9, 3, 7]))
        abandoned = loader.iterate(range(100, 110))
        next(abandoned)  # a pass left unfinished: its prefetched items must not leak into the next one
        third = list(loader.iterate([1, 2]))
    finally:
        loader.close()
    assert [k for k, _ in first] == list(range(6)) and [k for k, _ in second] == [9, 3, 7]
    assert [k for k, _ in third] == [1, 2]
    workers = {pid for _, pid in first}
    assert len(workers) == 2 and os.getpid() not in workers
    assert {pid for _, pid in second + third} <= workers  # the same processes served every pass
    assert [k for k, _ in PersistentLoader(0, WhoServes()).iterate([4, 5])] == [4, 5]


def test_starting_workers_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    loader = PersistentLoader(2, WhoServes())
    list(loader.iterate(range(4)))
    list(loader.iterate(range(4)))
    loader.close()
    assert torch.equal(torch.rand(3), expected)  # a DataLoader without its own generator draws its seed here


def toy_task_batches(toy, task: int, buffer: Pool | None) -> MixedBatches:
    update = Pool([(toy.load("toy_a" if task == 0 else "toy_b", "train"), np.arange(12))])
    pool = Pool([(toy.load("toy_pool", "train"), np.arange(40))])
    counts = batch_counts(8, 0.25, 0.5, 0.25, buffer_empty=buffer is None)
    sampler = MixtureSampler(counts, update, buffer, pool, seed=3, task=task)
    return MixedBatches(sampler, lambda texts: torch.tensor([[len(t)] for t in texts]), lambda x: x * 2 - 1, 8, 5)


def test_stream_batches_are_the_same_with_and_without_workers(toy):
    first = toy_task_batches(toy, 0, None)
    second = toy_task_batches(toy, 1, Pool(first.sampler.pools["update"].segments))
    keys = [(0, s) for s in range(5)] + [(1, s) for s in range(2, 5)]
    seen = {}
    for workers in (0, 2):
        loader = PersistentLoader(workers, StreamBatches({0: first, 1: second}))
        seen[workers] = list(loader.iterate(keys[:5])) + list(loader.iterate(keys[5:]))  # two tasks, one pool
        loader.close()
    for a, b in zip(seen[0], seen[2], strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.tokens, b.tokens) and torch.equal(a.source, b.source)
    assert torch.equal(seen[0][5].images, second[2].images)


def test_split_images_are_the_test_time_images(toy):
    split = toy.load("toy_e", "test")
    images = SplitImages([toy.load("toy_a", "test"), split], image_size=8)
    pixels, unreadable = images[(1, np.array([3, 1]))]
    torch.testing.assert_close(pixels, split.images(np.array([3, 1]), 8, train=False), rtol=0, atol=0)
    assert unreadable == ()


class SignalDispositions(torch.utils.data.Dataset):
    def __getitem__(self, key: int) -> tuple[bool, bool]:
        import signal

        return signal.getsignal(signal.SIGINT) is signal.SIG_IGN, signal.getsignal(signal.SIGTERM) is signal.SIG_IGN


def test_workers_leave_group_signals_to_the_main_process():
    loader = PersistentLoader(1, SignalDispositions())
    try:
        assert [list(item) for item in loader.iterate([0])] == [[True, True]]  # a group SIGTERM: tests/runner/test_task.py
    finally:
        loader.close()


def test_a_loader_left_open_does_not_hang_the_exit():
    """Workers ignore SIGTERM, which multiprocessing's exit hook relies on: fif closes them first (it hung)."""
    import subprocess
    import sys

    script = (
        "import torch\nfrom fif.data.loader import PersistentLoader\n"
        "class D(torch.utils.data.Dataset):\n    def __getitem__(self, k):\n        return k\n"
        "LOADER = PersistentLoader(2, D())\nprint(list(LOADER.iterate(range(3))))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0 and done.stdout.strip() == "[0, 1, 2]", done.stderr


class FailsAt(torch.utils.data.Dataset):
    """Item k is k, but item ``bad`` raises ``error``."""

    def __init__(self, bad: int, error: Exception):
        self.bad, self.error = bad, error

    def __getitem__(self, key: int) -> int:
        if key == self.bad:
            raise self.error
        return key


class NeedsTwo(ValueError):
    """An error whose constructor cannot be called with its message alone."""

    def __init__(self, file: str, why: str):
        super().__init__(f"{file}: {why}")


def raised(loader: PersistentLoader, keys) -> Exception:
    try:
        list(loader.iterate(keys))
    except Exception as e:  # noqa: BLE001 - the test compares whatever came out
        return e
    finally:
        loader.close()
    raise AssertionError("nothing was raised")


@pytest.mark.parametrize("error", [
    SourceError("/data/birds/robin/a.png (listed in /data/birds): image file not found"),
    KeyError("unknown dataset 'x'; did you mean 'y'?"),
    BadSampleError("b.png: cannot decode image", index=2, where="b.png"),
    NeedsTwo("a.png", "truncated"),
], ids=["source error", "key error", "keyword arguments", "other arguments"])
def test_a_worker_error_is_the_error_without_workers(error):
    """torch would re-raise it with the worker's whole traceback folded into a ten-line message."""
    inline = raised(PersistentLoader(0, FailsAt(2, error)), range(4))
    from_worker = raised(PersistentLoader(1, FailsAt(2, error)), range(4))
    assert str(from_worker) == str(inline) and len(str(from_worker).splitlines()) == 1
    assert type(from_worker) is (ValueError if isinstance(error, NeedsTwo) else type(error))  # its base, if need be
