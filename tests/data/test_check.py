"""`fif data check` as a library: what it finds in a data root, a pool and a stream file, and when a run
would fail."""

from __future__ import annotations

import pytest

from fif.data.check import check_data, format_report
from fif.data.fif_benchmark import build_fif
from fif_reference import CORRUPT_JPEG, class_names, write_dataset, write_pairs, write_shard, write_stream


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "data"
    write_dataset(root, "CUB200", class_names("bird", 2), {"train": 2, "test": 1})
    write_dataset(root, "AI2DIAGRAMS", class_names("diagram", 2), {"train": 2, "test": 1}, null_train_captions=True)
    write_pairs(root, "MSCOCO", 3)
    return root


def check(root, **kw):
    bench = build_fif(root, datasets=["CUB200", "AI2DIAGRAMS", "MSCOCO", "DTD"], missing="skip")
    return check_data(bench, decode=4, max_bad=1, **kw)


def test_a_complete_root_reports_sizes_captions_and_primers(root):
    report = check(root, missing_is_error=False)
    rows = {d.name: d for d in report.datasets}
    assert report.ok and rows["CUB200"].status == "ok"
    assert [(s.split, s.size, s.own_captions) for s in rows["CUB200"].splits] == [("train", 4, 4), ("test", 2, 0)]
    assert rows["AI2DIAGRAMS"].status == "note" and "4 of 4 entries have no caption of their own" in rows["AI2DIAGRAMS"].notes[0]
    assert rows["DTD"].status == "warning" and "skipped: data.options.missing=skip" in rows["DTD"].warnings[0]
    text = format_report(report)
    assert "A photo of a {}, a type of bird." in text and text.endswith("ok: a run can start")
    assert report.to_dict()["ok"] is True


def test_what_a_run_would_fail_on_is_an_error(root, tmp_path):
    (root / "CUB200" / "cub200" / "images" / "train" / "0" / "0.jpg").write_bytes(CORRUPT_JPEG)
    (root / "CUB200" / "cub200" / "images" / "train" / "1" / "1.jpg").unlink()
    pool = write_shard(tmp_path / "pool" / "00000.tar", 4, corrupt=(0,))
    stream = write_stream(tmp_path / "s.json", ["CUB200+++bird thing 0", "CUB200+++bird thing 9"])
    report = check(root, missing_is_error=True, pool=str(pool), index_dir=tmp_path / "idx", stream_file=str(stream))
    rows = {d.name: d for d in report.datasets}
    assert rows["DTD"].status == "error"  # data.options.missing=error: an absent dataset stops a run
    assert rows["CUB200"].status == "error" and "2 of 4 sampled images cannot be read" in rows["CUB200"].problems[0]
    assert report.pool.status == "warning" and "1 of 4 sampled images" in report.pool.warnings[0]
    assert "unknown class 'bird thing 9'" in report.problems[0]
    assert not report.ok and format_report(report).endswith("not ok: a run would fail on the errors above")
