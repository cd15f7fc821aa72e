import json

import pytest

from fif.data.specs import split_concept
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


# ----------------------------------------------------------------------------------------------
# Time orderings, seeded ties, reference points, summaries (issue 4)


def test_time_interleaved_spreads_a_period_over_its_stretch(toy):
    from fif.data.stream import OrderingOptions, order_concepts

    opts = OrderingOptions(interleave=True, period_years=10)  # 1990s: toy_b; 2000s: toy_a (2001), toy_r (2005)
    streams = {tuple(order_concepts(toy, "time", seed=s, options=opts)) for s in range(8)}
    # toy_a's concepts sit at 1/6, 3/6, 5/6 of the 2000s, toy_r's single one at 3/6: the seed breaks that tie.
    assert streams == {
        ("toy_b+++one", "toy_b+++two", "toy_a+++ant", "toy_a+++bee", "toy_r+++*", "toy_a+++cat"),
        ("toy_b+++one", "toy_b+++two", "toy_a+++ant", "toy_r+++*", "toy_a+++bee", "toy_a+++cat"),
    }
    whole = order_concepts(toy, "time", options=OrderingOptions(period_years=10))
    assert whole == ["toy_b+++one", "toy_b+++two", "toy_a+++ant", "toy_a+++bee", "toy_a+++cat", "toy_r+++*"]


def test_time_whole_datasets_keep_datasets_contiguous_and_seed_same_year_ties():
    from fif.data.registry import get_benchmark
    from fif.data.stream import order_concepts

    mini = get_benchmark("mini")  # lazy: nothing is generated for metadata orderings
    orders = [order_concepts(mini, "time", seed=s) for s in range(6)]
    for stream in orders:
        datasets = [split_concept(c)[0] for c in stream]
        blocks = [d for i, d in enumerate(datasets) if i == 0 or datasets[i - 1] != d]
        assert len(blocks) == len(set(blocks))  # each dataset in one piece
        years = [mini.spec(d).release_year for d in blocks]
        assert years == sorted(years)
    same_year = {tuple(d for d in dict.fromkeys(split_concept(c)[0] for c in s) if mini.spec(d).release_year == 2017)
                 for s in orders}
    assert len(same_year) > 1  # fills, counting and dsprites (all 2017) come in a seeded order


def test_time_needs_release_years(toy):
    from dataclasses import replace

    toy.datasets["toy_a"] = replace(toy.datasets["toy_a"], release_year=None)
    with pytest.raises(ValueError, match="toy_a has none"):
        build_tasks(toy, "time", 2)


def test_reference_points(toy):
    normal = build_tasks(toy, "random", 3, seed=4)
    assert build_tasks(toy, "random", 3, seed=4, reference="zeroshot") == []
    oracle = build_tasks(toy, "random", 3, seed=4, reference="oracle")
    assert len(oracle) == 1 and oracle[0].index == 0
    assert oracle[0].concepts == tuple(c for t in normal for c in t.concepts)  # the whole stream, one task
    assert len(build_tasks(toy, "dataset", 3, reference="oracle")) == 1
    with pytest.raises(ValueError, match="did you mean 'oracle'"):
        build_tasks(toy, "random", 3, reference="orcale")


def test_unknown_ordering_names_the_valid_ones(toy):
    with pytest.raises(ValueError, match="did you mean 'similarity'"):
        build_tasks(toy, "similarty", 2)


def test_build_tasks_is_deterministic(toy):
    for ordering in ("random", "time", "dataset"):
        assert build_tasks(toy, ordering, 3, seed=7) == build_tasks(toy, ordering, 3, seed=7)
    assert len({tuple(build_tasks(toy, "random", 3, seed=s)) for s in range(6)}) > 1


def test_describe_tasks_counts_concepts_and_samples(toy):
    from fif.data.stream import describe_tasks

    tasks = [Task(0, ("toy_a+++ant", "toy_a+++cat", "toy_r+++*")), Task(1, ("toy_b+++one",))]
    first, second = describe_tasks(tasks, toy)
    assert first.concepts == {"toy_a": 2, "toy_r": 1} and first.num_concepts == 3
    assert first.samples == {"toy_a": 24, "toy_r": 12} and first.num_samples == 36  # 12 per class, 12 pairs
    assert second.concepts == {"toy_b": 1} and second.samples == {"toy_b": 12}


def test_plot_stream_writes_a_png(toy, tmp_path):
    from fif.data.stream import describe_tasks
    from fif.results.report.stream import concept_matrix, plot_stream

    summaries = describe_tasks(build_tasks(toy, "random", 3, seed=1), toy)
    datasets, matrix = concept_matrix(summaries)
    assert sorted(datasets) == ["toy_a", "toy_b", "toy_r"] and matrix.shape == (3, 3)
    assert matrix.sum() == 6 and matrix.sum(axis=0).tolist() == [2, 2, 2]
    out = plot_stream(summaries, tmp_path / "stream.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no tasks"):
        plot_stream([], tmp_path / "empty.png")


def test_stream_config_is_validated():
    from fif.config import load_config
    from fif.core.typed import ConfigError

    with pytest.raises(ConfigError) as e:
        load_config("mini", ["stream.ordering=easy_to_hrd", "stream.reference=orcale", "stream.period_years=0",
                             "stream.difficulty_split=val"])
    text = str(e.value)
    for part in ("did you mean easy_to_hard", "did you mean oracle", "stream.period_years", "stream.difficulty_split"):
        assert part in text
    with pytest.raises(ConfigError, match="stream.file"):
        load_config("mini", ["stream.ordering=file"])
    cfg = load_config("mini", ["stream.ordering=time", "stream.interleave=true", "stream.reference=oracle"])
    assert cfg.stream.interleave and cfg.stream.reference == "oracle"


def test_classes_without_training_images_stay_out_of_streams(toy):
    from fif.data.registry import Benchmark
    from fif.data.specs import DatasetSpec

    spec = toy.datasets["toy_a"]
    wider = DatasetSpec(spec.name, spec.kind, spec.role, spec.classnames + ("dog",), spec.primer)

    def loader(s, split):  # the data of the 3-class set, described with a 4th class that has no images
        data = toy.loader(spec if s.name == "toy_a" else s, split)
        data.spec = s
        return data

    bench = Benchmark("toy2", {**toy.datasets, "toy_a": wider}, loader, toy.pretraining_pool)
    concepts = benchmark_concepts(bench, ["toy_a"])
    assert concepts == ["toy_a+++ant", "toy_a+++bee", "toy_a+++cat"]  # 'dog' has no train images
