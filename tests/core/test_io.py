"""Writes the storage refuses become a StorageError naming the file and the bytes it needed, and leave
nothing half-written under a final name."""

from __future__ import annotations

import errno
import io

import pytest

import fif.core.io as fio
from fif.core.io import StorageError, atomic_write_bytes, human_bytes, write_synced


class FullDisk(io.RawIOBase):
    """A file on a full disk: every write fails with ENOSPC, like write(2) does."""

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def full_disk_open(path, mode="r", *args, **kwargs):
    return io.BufferedWriter(FullDisk()) if "w" in mode or "a" in mode else open(path, mode, *args, **kwargs)


@pytest.mark.parametrize("write", ["atomic", "synced"])
def test_a_full_disk_names_the_file_and_leaves_nothing(write, tmp_path, monkeypatch):
    target = tmp_path / "final.safetensors"
    target.write_bytes(b"old")
    monkeypatch.setattr(fio, "open", full_disk_open, raising=False)  # fif.core.io's own calls only
    monkeypatch.setattr(fio.os, "fdopen", lambda fd, mode: (fio.os.close(fd), io.BufferedWriter(FullDisk()))[1])
    with pytest.raises(StorageError) as e:
        atomic_write_bytes(target, b"x" * 2_500_000) if write == "atomic" else write_synced(target, b"x" * 2_500_000)
    assert e.value.errno == errno.ENOSPC and str(e.value) == (
        f"No space left on device: cannot write {target} (2.5 MB); free space there or write somewhere else")
    if write == "atomic":
        assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["final.safetensors"]


def test_other_errors_pass_through(tmp_path):
    with pytest.raises(IsADirectoryError):
        write_synced(tmp_path, b"x")


def test_human_bytes():
    assert [human_bytes(n) for n in (512, 33_200_000, 1.8e9)] == ["512 B", "33.2 MB", "1.8 GB"]
