import json

import pytest

from fif.data.stream import (
    Task,
    benchmark_concepts,
    build_tasks,
    chunk,
    chunk_by_dataset,
    order_random,
    read_stream,
    task_indices,
    validate_stream,
    write_stream,
)


def test_concepts_cover_classes_and_retrieval(toy):
    concepts = benchmark_concepts(toy)
    assert concepts == ["toy_a+++ant", "toy_a+++bee", "toy_a+++cat", "toy_b+++one", "toy_b+++two", "toy_r+++*"]
    assert benchmark_concepts(toy, ["toy_b"]) == ["toy_b+++one", "toy_b+++two"]
    with pytest.raises(KeyError, match="toy_b"):
        benchmark_concepts(toy, ["toy_c"])


@pytest.mark.parametrize("n,t", [(10, 3), (6, 6), (7, 2), (41, 20)])
def test_chunk_fif_rule(n, t):
    tasks = chunk([f"d+++{i}" for i in range(n)], t)
    sizes = [len(x.concepts) for x in tasks]
    assert sum(sizes) == n and len(tasks) == t
    extra = n % t
    assert sizes == [n // t + 1] * extra + [n // t] * (t - extra)
    flat = [c for x in tasks for c in x.concepts]
    assert flat == [f"d+++{i}" for i in range(n)]  # contiguous, order kept


def test_chunk_too_many_tasks():
    with pytest.raises(ValueError, match="stream.tasks"):
        chunk(["a+++x"], 2)


def test_dataset_chunking_one_task_per_dataset(toy):
    tasks = build_tasks(toy, "dataset", num_tasks=99)
    assert [t.concepts[0].split("+++")[0] for t in tasks] == ["toy_a", "toy_b", "toy_r"]
    assert chunk_by_dataset(["x+++1", "y+++1", "x+++2"])[0].concepts == ("x+++1", "x+++2")


def test_random_ordering_is_seeded(toy):
    a = order_random(benchmark_concepts(toy), 1)
    assert a == order_random(benchmark_concepts(toy), 1)
    assert sorted(a) == sorted(benchmark_concepts(toy))
    assert any(order_random(benchmark_concepts(toy), s) != a for s in range(2, 6))


def test_time_ordering_and_reverse(toy):
    tasks = build_tasks(toy, "time", num_tasks=3)
    first = [c.split("+++")[0] for c in tasks[0].concepts]
    assert first[0] == "toy_b"  # 1999 first
    rev = build_tasks(toy, "time", num_tasks=3, reverse=True)
    assert rev[0].concepts[0] == "toy_r+++*"


def test_stream_file_roundtrip_and_validation(toy, tmp_path):
    path = write_stream(["toy_b+++two", "toy_a+++ant"], tmp_path / "s.json")
    assert read_stream(path) == ["toy_b+++two", "toy_a+++ant"]
    tasks = build_tasks(toy, "file", 2, file=str(path))
    assert tasks == [Task(0, ("toy_b+++two",)), Task(1, ("toy_a+++ant",))]
    with pytest.raises(ValueError, match="did you mean 'bee'"):
        validate_stream(["toy_a+++bea"], toy)
    with pytest.raises(ValueError, match="appears twice"):
        validate_stream(["toy_a+++bee", "toy_a+++bee"], toy)
    with pytest.raises(ValueError, match="toy_e"):
        validate_stream(["toy_e+++red"], toy)  # eval-only datasets are not in streams
    (tmp_path / "bad.json").write_text(json.dumps({"a": 1}))
    with pytest.raises(ValueError, match="JSON list"):
        read_stream(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="does not exist"):
        read_stream(tmp_path / "missing.json")


def test_task_indices_select_exactly_the_concepts(toy):
    idx = task_indices(Task(0, ("toy_a+++bee", "toy_r+++*")), toy)
    a = toy.load("toy_a", "train")
    assert set(a.targets[idx["toy_a"]].tolist()) == {1}
    assert len(idx["toy_a"]) == int((a.targets == 1).sum())
    assert len(idx["toy_r"]) == len(toy.load("toy_r", "train"))
