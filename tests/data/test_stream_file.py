"""Stream files in the reference's format: FSCOCO by class, a full stream file filtered to a partial
download with one line on what was dropped, and the errors that stay errors."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fif.data.fif_benchmark import build_fif
from fif.data.mixture import Pool, concept_labels
from fif.data.stream import build_stream, task_indices
from fif.data.stream_file import fit_stream, read_stream, validate_stream
from fif_reference import class_names, write_dataset, write_pairs, write_stream

PRESENT = {"CUB200": 3, "FSCOCO": 3, "DTD": 3}


@pytest.fixture(scope="module")
def partial(tmp_path_factory):
    """A partial download (CUB200, FSCOCO, DTD, MSCOCO) and a stream file written for more datasets."""
    root = tmp_path_factory.mktemp("partial")
    write_dataset(root, "CUB200", class_names("bird", 3), {"train": 2, "test": 1})
    write_dataset(root, "FSCOCO", class_names("sketch", 3), {"train": 2, "test": 1}, native_captions=True)
    # DTD's classnames list a class its (cut-down) train split has no image of, as FiF's full lists do.
    write_dataset(root, "DTD", class_names("texture", 2), {"train": 2, "test": 1})
    names = class_names("texture", 3)
    (root / "DTD_classnames.json").write_text(__import__("json").dumps(names))
    write_pairs(root, "MSCOCO", 4)
    concepts = []
    for name, n in (("FLOWERS102", 4), *PRESENT.items(), ("SUN397", 5)):  # in time order, as dschunked
        prefix = {"CUB200": "bird", "FSCOCO": "sketch", "DTD": "texture"}.get(name, name)
        concepts += [f"{name}+++{c}" for c in class_names(prefix, n)]
    stream = write_stream(root / "time_incremental_dschunked_1.json", concepts)
    return root, stream, concepts


def test_a_full_stream_file_is_filtered_to_the_datasets_present(partial, caplog):
    root, stream, concepts = partial
    bench = build_fif(root, missing="skip")
    with caplog.at_level(logging.WARNING):
        built = build_stream(bench, "file", 2, file=str(stream))
    kept = [c for t in built.tasks for c in t.concepts]
    assert kept == [c for c in concepts if c.split("+++")[0] in PRESENT and c != "DTD+++texture thing 2"]
    note = built.ordered.note
    assert note == (f"stream file {stream}: kept 8 of 18 concepts; dropped 9 concept(s) of 2 dataset(s) not present "
                    f"(FLOWERS102 4, SUN397 5); 1 concept(s) without training images (DTD+++texture thing 2)")
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING][-1] == note  # one line


def test_stream_datasets_restricts_a_stream_file(partial):
    root, stream, _ = partial
    bench = build_fif(root, missing="skip")
    kept, note = fit_stream(read_stream(stream), bench, ["FSCOCO"], source="s")
    assert kept == [f"FSCOCO+++sketch thing {i}" for i in range(3)]
    assert "6 concept(s) of 2 dataset(s) outside stream.datasets (CUB200 3, DTD 3)" in note
    with pytest.raises(KeyError, match="did you mean 'FSCOCO'"):
        fit_stream(read_stream(stream), bench, ["FSCOC"])


def test_names_the_benchmark_does_not_know_stay_errors(partial, tmp_path):
    root, _, _ = partial
    bench = build_fif(root, missing="skip")
    with pytest.raises(ValueError, match="unknown class 'bird thing x' in dataset 'CUB200'; did you mean"):
        fit_stream(["CUB200+++bird thing 1", "CUB200+++bird thing x"], bench)
    with pytest.raises(ValueError, match="adaptation dataset 'CUB2000'"):
        fit_stream(["CUB2000+++bird thing 1"], bench)
    with pytest.raises(ValueError, match="MSCOCO"):
        fit_stream(["MSCOCO+++*"], bench)  # an evaluation-only set is never streamed
    with pytest.raises(ValueError, match=r"none of its 1 concepts is of a dataset present \(CUB200, DTD, FSCOCO\)"):
        fit_stream(["SUN397+++a"], bench)


def test_fscoco_by_class_selects_its_pairs_and_labels_them(partial):
    root, _, _ = partial
    bench = build_fif(root, missing="skip")
    concepts = ["CUB200+++bird thing 2", "FSCOCO+++sketch thing 1", "FSCOCO+++sketch thing 2"]
    validate_stream(concepts, bench)
    validate_stream(["FSCOCO+++*"], bench)  # the whole set is still one valid concept
    from fif.data.stream import Task

    task = Task(0, tuple(concepts))
    idx = task_indices(task, bench)
    assert bench.load("FSCOCO", "train").targets[idx["FSCOCO"]].tolist() == [1, 1, 2, 2]
    pool = Pool([(bench.load(d, "train"), i) for d, i in idx.items()])
    # Replay and importance methods (GDumb, EWC, MAS) read these; the old code raised an IndexError here.
    assert concept_labels(pool, task.concepts).tolist() == [0, 0, 1, 1, 2, 2]
    whole = Pool([(bench.load("FSCOCO", "train"), np.arange(6))])
    assert concept_labels(whole, ("FSCOCO+++*",)).tolist() == [0] * 6
