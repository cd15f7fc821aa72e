"""Atomic result files: whole or absent, with the permissions a plain open() gives."""

from __future__ import annotations

import os
import stat

from fif.core.io import atomic_write_bytes, atomic_write_json


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_write_replaces_whole_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "sub" / "summary.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"second"
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]


def test_result_files_are_readable_like_any_new_file(tmp_path):
    """mkstemp's 0600 must not leak into results: a group sharing a run folder reads them."""
    path = atomic_write_bytes(tmp_path / "final.safetensors", b"x")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()
