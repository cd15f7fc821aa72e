"""The fif benchmark: its 63-dataset catalogue, reading a fabricated FiF root, options and errors, and
the ``fif`` preset resolving (and running end to end) against that root."""

from __future__ import annotations

import json
import shutil

import pytest

from fif.data.fif_benchmark import CATALOGUE, build_fif, catalogue
from fif.data.mini import build_mini
from fif.data.registry import get_benchmark
from fif.data.sources.fif_layout import write_split
from fif.data.stream import benchmark_concepts, validate_stream

SMALL = dict(pool_size=24, train_per_class=4, test_per_class=3, eval_size=30, retrieval_train=12, retrieval_test=10)
# FiF dataset ← mini-world dataset standing in for it, and the splits to write.
FAKE = {
    "CUB200": ("mini_digits", ("train", "test")),
    "DTD": ("mini_fills", ("train", "test")),
    "MNIST": ("mini_colors", ("test",)),
    "MSCOCO": ("mini_captions", ("test",)),
}


@pytest.fixture(scope="module")
def mini():
    return build_mini(**SMALL)


@pytest.fixture(scope="module")
def fif_root(mini, tmp_path_factory):
    root = tmp_path_factory.mktemp("fif_data")
    for name, (source, splits) in FAKE.items():
        for split in splits:
            write_split(mini.load(source, split), root / name)
    return root


def test_catalogue_has_fifs_63_datasets():
    table = catalogue()
    assert len(CATALOGUE) == len(table) == 63
    adaptation = [d for d in CATALOGUE if d.role == "adaptation"]
    eval_only = [d for d in CATALOGUE if d.role == "eval_only"]
    assert len(adaptation) == 41 and len(eval_only) == 22
    assert [d.name for d in adaptation if d.kind == "retrieval"] == ["FSCOCO"]
    assert sorted(d.name for d in eval_only if d.kind == "retrieval") == ["FLICKR30K", "MSCOCO"]
    for d in CATALOGUE:
        assert d.primer.count("{}") == 1, d.name
        assert 1990 <= d.release_year <= 2025, d.name
    # The paper's primers (the reference's per-dataset modules), e.g. not CIFAR's "A blurry photo of a {}."
    assert table["CIFAR100"].primer == table["CIFAR10"].primer == table["IMAGENET_D"].primer == "A photo of a {}."
    assert table["CUB200"].primer == "A photo of a {}, a type of bird."
    assert table["BIRDSNAP"].primer == "A photo of the bird {}."
    assert table["MNIST"].primer == 'A black-and-white photo of the number: "{}".'
    assert table["SVHN"].primer == 'A photo of the number: "{}".'
    assert table["MTSD"].primer == table["GTSRB"].primer == 'A centered photo of a "{}" traffic sign.'
    assert table["DOMAINNET_SKETCH"].primer == "A sketch of a {}."
    assert table["FSCOCO"].primer == "A sketch of a {}"  # no full stop, as in the reference
    assert table["MSCOCO"].primer == table["FLICKR30K"].primer == "{}"
    assert {table[n].primer for n in ("PATTERNNET", "CLRS")} == {"A satellite image of a {}."}
    assert table["RESISC45"].primer == "A satellite image of {}."
    assert table["EuroSAT"].primer == "A centered satellite photo of a {}."
    assert sum(d.primer == "A photo of a {}." for d in CATALOGUE) == 20
    # Split files as the reference names them.
    assert table["iNATURALIST2021"].split_files() == {"train": "train_mini", "test": "val"}
    assert table["MTSD"].split_files() == {"train": "train", "test": "val"}
    assert table["IMAGENET"].splits == ("test",) and table["CUB200"].splits == ("train", "test")
    # FiF's download folder names double as the names in its stream files.
    assert {"FGVCAircraft", "iNATURALIST2021", "MVTECAD_Adapt", "MVTECAD_Eval", "ZAPPOS50k", "SynthCLIP106"} <= set(table)


def test_reads_the_datasets_present(fif_root, mini):
    bench = get_benchmark("fif", root=str(fif_root), missing="skip")
    assert list(bench.datasets) == ["CUB200", "DTD", "MNIST", "MSCOCO"]  # catalogue order
    assert [s.name for s in bench.adaptation] == ["CUB200", "DTD"]
    assert [s.name for s in bench.eval_only] == ["MNIST", "MSCOCO"]
    cub = bench.spec("CUB200")
    assert cub.classnames == mini.spec("mini_digits").classnames  # read from CUB200_classnames.json
    assert cub.primer == "A photo of a {}, a type of bird." and cub.release_year == 2011 and cub.source == "fif"
    assert bench.spec("MSCOCO").classnames == ()
    train = bench.load("CUB200", "train")
    source = mini.load("mini_digits", "train")
    assert len(train) == len(source) and train.split == "train"
    assert train.targets.tolist() == source.targets.tolist()
    assert list(train.captions(3)) == list(source.captions(3))
    assert bench.load("CUB200", "test").images([0, 1], 16).shape == (2, 3, 16, 16)
    assert len(bench.load("MSCOCO", "test")) == SMALL["retrieval_test"]
    with pytest.raises(ValueError, match=r"'MNIST' has no 'train' split \(.*MNIST_train\.json not found\)"):
        bench.load("MNIST", "train")


def test_extra_splits_load_when_their_file_exists(fif_root, mini, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(fif_root / "MNIST", root / "MNIST")
    for f in fif_root.glob("MNIST_*.json"):
        shutil.copy(f, root / f.name)
    write_split(mini.load("mini_colors", "train"), root / "MNIST")  # eval-only sets need only test
    assert len(build_fif(root, datasets=["MNIST"]).load("MNIST", "train")) == len(mini.load("mini_colors", "train"))


def test_fifs_stream_names_are_valid_concepts(fif_root):
    bench = build_fif(fif_root, missing="skip")
    concepts = benchmark_concepts(bench)
    assert concepts[0].startswith("CUB200+++")
    validate_stream(concepts, bench)


def test_missing_datasets_are_listed_or_skipped(fif_root, caplog):
    with pytest.raises(FileNotFoundError) as err:
        build_fif(fif_root, datasets=["cub200", "Flowers102", "SVHN"])
    msg = str(err.value)
    assert "2 FiF dataset(s) are missing" in msg and "FLOWERS102: missing folder" in msg and "SVHN" in msg
    assert "data.options.missing=skip" in msg and "download_and_process_all_datasets.sh" in msg
    bench = build_fif(fif_root, datasets=["cub200", "Flowers102"], missing="skip")
    assert list(bench.datasets) == ["CUB200"]
    assert "skipping 1 dataset(s)" in caplog.text and "FLOWERS102" in caplog.text


def test_incomplete_dataset_names_the_missing_file(fif_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(fif_root / "DTD", root / "DTD")
    shutil.copy(fif_root / "DTD_train.json", root / "DTD_train.json")
    shutil.copy(fif_root / "DTD_classnames.json", root / "DTD_classnames.json")
    with pytest.raises(FileNotFoundError, match=r"DTD: missing .*DTD_test\.json"):
        build_fif(root, datasets=["DTD"])


@pytest.mark.parametrize("root, match", [
    (None, "needs data.root"),
    ("", "needs data.root"),
    ("/nonexistent/fif", "is not a folder"),
])
def test_root_errors_say_where_to_get_the_data(root, match):
    with pytest.raises(ValueError, match=match) as err:
        build_fif(root)
    assert "download_and_process_all_datasets.sh" in str(err.value)


def test_empty_root_and_nothing_present(tmp_path):
    with pytest.raises(ValueError, match="is empty"):
        build_fif(tmp_path)
    (tmp_path / "unrelated").mkdir()
    with pytest.raises(ValueError, match="none of the chosen FiF datasets is present"):
        build_fif(tmp_path, missing="skip")


def test_bad_options(fif_root):
    with pytest.raises(KeyError, match="did you mean 'CUB200'"):
        build_fif(fif_root, datasets=["CUB2000"])
    with pytest.raises(ValueError, match="missing='ignore' must be one of error, skip"):
        build_fif(fif_root, missing="ignore")
    with pytest.raises(ValueError, match="unknown fif benchmark option.*'rot'.*did you mean 'root'"):
        get_benchmark("fif", root=str(fif_root), rot="x")


def test_json_files_in_a_separate_info_dir(fif_root, tmp_path):
    root, info = tmp_path / "images", tmp_path / "00_info"
    shutil.copytree(fif_root / "DTD", root / "DTD")
    info.mkdir()
    for f in fif_root.glob("DTD_*.json"):
        shutil.copy(f, info / f.name)
    bench = build_fif(root, datasets=["DTD"], info_dir=str(info))
    assert len(bench.load("DTD", "test")) == len(json.loads((info / "DTD_test.json").read_text()))
    with pytest.raises(FileNotFoundError):
        build_fif(root, datasets=["DTD"])


def test_resized_variant_is_preferred_when_present(fif_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(fif_root / "DTD", root / "DTD")
    for f in fif_root.glob("DTD_*.json"):
        shutil.copy(f, root / f.name)
    entries = json.loads((root / "DTD_test.json").read_text())
    first = next(iter(entries))
    resized = {f"DTD_test_224/{first}": entries[first]}  # FiF keeps resized copies in ROOT/ROOT_<split>_224/
    (root / "DTD" / "DTD_test_224" / first).parent.mkdir(parents=True)
    shutil.copy(root / "DTD" / first, root / "DTD" / "DTD_test_224" / first)
    (root / "DTD_test_224.json").write_text(json.dumps(resized))
    test = build_fif(root, datasets=["DTD"]).load("DTD", "test")
    assert len(test) == 1 and test.split == "test" and test.index_file.name == "DTD_test_224.json"
    assert test.images([0], 8).shape == (1, 3, 8, 8)
    assert len(build_fif(root, datasets=["DTD"], resized=False).load("DTD", "test")) == len(entries)


def test_duplicate_class_names_name_the_file(fif_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(fif_root / "DTD", root / "DTD")
    for f in fif_root.glob("DTD_*.json"):
        shutil.copy(f, root / f.name)
    (root / "DTD_classnames.json").write_text('["a", "a"]')
    with pytest.raises(ValueError, match=r"DTD_classnames\.json: .*unique"):
        build_fif(root, datasets=["DTD"])


# ---------------------------------------------------------------------------------------------
# The preset, against a fabricated root


def preset_overrides(fif_root, tmp_path, pool):
    return [
        f"data.root={fif_root}",
        "data.options={missing: skip}",
        f"data.mixture.pool={pool}",
        "data.num_workers=0",
        "model.arch=fif-mini-rn32",
        "model.pretrained=null",
        "run.device=cpu",
        f"run.cache_dir={tmp_path / 'cache'}",
        "budget.ft_steps=4",
        "stream.tasks=2",
        "train.batch_size=8",
        "train.log_every=1",
        "eval.batch_size=64",
        "eval.min_samples=8",
    ]


@pytest.fixture(scope="module")
def pool_shards(mini, tmp_path_factory):
    from fif.data.sources.wds import write_shards

    folder = tmp_path_factory.mktemp("laion")
    write_shards(mini.load("mini_pretrain", "train"), folder, samples_per_shard=10, image_size=32)
    return f"{folder}/{{00000..00002}}.tar"


def test_fif_preset_resolves_against_a_fabricated_root(fif_root, pool_shards, tmp_path):
    import fif
    from fif.runner.setup import setup

    cfg = fif.load_config("fif", preset_overrides(fif_root, tmp_path, pool_shards))
    assert cfg.data.benchmark == "fif" and cfg.data.root == str(fif_root)
    spec, _ = setup(cfg, tmp_path / "run")
    assert list(spec.benchmark.datasets) == ["CUB200", "DTD", "MNIST", "MSCOCO"]
    assert len(spec.pretraining_pool) == SMALL["pool_size"]
    assert len(spec.tasks) == 2
    concepts = sorted(c for t in spec.tasks for c in t.concepts)
    assert concepts == sorted(benchmark_concepts(spec.benchmark))


@pytest.mark.slow
def test_fif_preset_runs_end_to_end(fif_root, pool_shards, tmp_path):
    import fif

    cfg = fif.load_config("fif", preset_overrides(fif_root, tmp_path, pool_shards))
    fif.run(cfg, out_dir=tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [p["task"] for p in summary["trajectory"]] == [-1, 0, 1]
    assert set(summary["trajectory"][-1]["scores"]) == {"CUB200", "DTD", "MNIST", "MSCOCO"}
    assert 0.0 <= summary["final"]["gm"] <= 100.0
