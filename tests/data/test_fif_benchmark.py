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


# ---------------------------------------------------------------------------------------------
# The reference's own formats (issue 14): split names, _224 variants, null captions, FSCOCO, time order


@pytest.fixture(scope="module")
def ref_root(tmp_path_factory):
    """A root in the reference layout, the JSON files apart in an info folder (FiF's data_lib/00_info)."""
    from fif_reference import class_names, write_dataset, write_pairs

    base = tmp_path_factory.mktemp("fif_ref")
    root, info = base / "data", base / "00_info"
    write_dataset(root, "iNATURALIST2021", class_names("inat", 3), {"train_mini": 2, "val": 1}, info)
    write_dataset(root, "MTSD", class_names("sign", 2), {"train": 2, "val": 1}, info, resized=("train",))
    write_dataset(root, "AI2DIAGRAMS", class_names("diagram", 2), {"train": 2, "test": 1}, info,
                  resized_json_only=("train", "test"), null_train_captions=True)
    write_dataset(root, "FSCOCO", class_names("sketch", 3), {"train": 2, "test": 1}, info, native_captions=True)
    write_dataset(root, "IMAGENET", class_names("object", 2), {"test": 2}, info)
    write_pairs(root, "MSCOCO", 4, info)
    return root, info


def test_split_files_are_named_as_the_reference_names_them(ref_root):
    root, info = ref_root
    bench = build_fif(root, info_dir=info, missing="skip")
    assert list(bench.datasets) == ["AI2DIAGRAMS", "iNATURALIST2021", "MTSD", "FSCOCO", "IMAGENET", "MSCOCO"]
    inat_train, inat_test = bench.load("iNATURALIST2021", "train"), bench.load("iNATURALIST2021", "test")
    assert inat_train.index_file.name == "iNATURALIST2021_train_mini.json" and len(inat_train) == 6
    assert inat_test.index_file.name == "iNATURALIST2021_val.json" and inat_test.split == "test"
    assert bench.load("MTSD", "test").index_file.name == "MTSD_val.json"  # today: "missing .../MTSD_test.json"
    assert bench.load("IMAGENET", "test").images([0, 1], 8).shape == (2, 3, 8, 8)
    assert bench.left_out["CUB200"].startswith("missing folder")


def test_split_names_can_be_overridden_per_dataset(ref_root, tmp_path):
    root, info = ref_root
    shutil.copy(info / "MTSD_val.json", tmp_path / "MTSD_test.json")
    for f in ("MTSD_classnames.json", "MTSD_train.json", "MTSD_train_224.json"):
        shutil.copy(info / f, tmp_path / f)
    bench = build_fif(root, datasets=["MTSD"], info_dir=tmp_path, splits={"mtsd": {"test": "test"}})
    assert bench.load("MTSD", "test").index_file.name == "MTSD_test.json"
    with pytest.raises(FileNotFoundError, match=r"MTSD: missing .*MTSD_val\.json"):
        build_fif(root, datasets=["MTSD"], info_dir=tmp_path)
    with pytest.raises(KeyError, match="did you mean 'MTSD'"):
        build_fif(root, info_dir=info, missing="skip", splits={"MTDS": {"test": "test"}})
    with pytest.raises(ValueError, match="splits.MTSD must map train and/or test"):
        build_fif(root, info_dir=info, missing="skip", splits={"MTSD": {"val": "test"}})


def test_a_224_file_is_used_only_with_its_image_folder_per_dataset(ref_root):
    root, info = ref_root
    bench = build_fif(root, info_dir=info, missing="skip")
    mtsd = bench.load("MTSD", "train")  # both the _224 JSON and MTSD/MTSD_train_224/ exist
    assert mtsd.index_file.name == "MTSD_train_224.json" and mtsd.paths[0].startswith("MTSD_train_224/")
    assert mtsd.images(list(range(len(mtsd))), 8).shape == (4, 3, 8, 8)
    ai2d = bench.load("AI2DIAGRAMS", "test")  # the _224 JSON without its folder: the full-size images
    assert ai2d.index_file.name == "AI2DIAGRAMS_test.json"
    assert ai2d.images(list(range(len(ai2d))), 8).shape == (2, 3, 8, 8)
    assert bench.load("MTSD", "test").index_file.name == "MTSD_val.json"  # no _224 for this split
    assert build_fif(root, info_dir=info, missing="skip", resized=False).load("MTSD", "train").index_file.name == (
        "MTSD_train.json")


def test_null_captions_fall_back_to_the_primer_caption(ref_root):
    root, info = ref_root
    bench = build_fif(root, info_dir=info, missing="skip")
    train = bench.load("AI2DIAGRAMS", "train")  # null default and merged captions, as in the reference's file
    assert list(train.captions(0)) == ["A photo of a diagram thing 0."] and train.own_captions == 0
    test = bench.load("iNATURALIST2021", "test")
    assert list(test.captions(0)) == ["A photo of a inat thing 0."]
    assert bench.load("iNATURALIST2021", "train").own_captions == 6  # its train split has merged captions


def test_fscoco_is_a_retrieval_set_with_classes(ref_root):
    root, info = ref_root
    bench = build_fif(root, info_dir=info, missing="skip")
    spec = bench.spec("FSCOCO")
    assert spec.kind == "retrieval" and spec.classnames == ("sketch thing 0", "sketch thing 1", "sketch thing 2")
    assert spec.primer == "A sketch of a {}"
    train = bench.load("FSCOCO", "train")
    assert train.targets.tolist() == [0, 0, 1, 1, 2, 2]
    assert list(train.captions(2)) == ["A sketch of sketch thing 1 number 0 in a park."]
    fscoco = [c for c in benchmark_concepts(bench) if c.startswith("FSCOCO")]
    assert fscoco == [f"FSCOCO+++sketch thing {i}" for i in range(3)]  # by class, as the reference's streams
    assert bench.spec("MSCOCO").classnames == ()


def test_primers_and_templates_are_overridable_per_dataset(ref_root):
    root, info = ref_root
    bench = build_fif(root, info_dir=info, missing="skip", primers={"imagenet": "itap of a {}."},
                      templates={"IMAGENET": ["a bad photo of a {}.", "a origami {}."]})
    assert bench.spec("IMAGENET").prompts(ensemble=True) == ("itap of a {}.", "a bad photo of a {}.", "a origami {}.")
    assert bench.spec("MTSD").primer == 'A centered photo of a "{}" traffic sign.'
    with pytest.raises(ValueError, match="data.options.primers/templates.*exactly one"):
        build_fif(root, info_dir=info, missing="skip", primers={"IMAGENET": "no placeholder"})


def test_time_order_and_period_groups_reproduce_the_reference():
    from fif.data.fif_catalogue import TIME_ORDER
    from fif.data.registry import Benchmark
    from fif.data.specs import DatasetSpec
    from fif.data.stream import order_by_release

    specs = {d.name: DatasetSpec(d.name, d.kind, d.role, ("a", "b"), d.primer, release_year=d.release_year,
                                 release_rank=d.release_rank) for d in CATALOGUE if d.role == "adaptation"}
    bench = Benchmark("fif-meta", specs, loader=None)
    concepts = [f"{n}+++{c}" for n in sorted(specs) for c in ("a", "b")]
    for seed in (0, 1):
        whole = order_by_release(concepts, bench, seed)
        assert list(dict.fromkeys(c.split("+++")[0] for c in whole)) == list(TIME_ORDER)
    mixed = order_by_release(concepts, bench, 0, interleave=True)
    groups, period = [], None
    for c in mixed:
        year = specs[c.split("+++")[0]].release_year
        if year != period:
            groups.append(set())
            period = year
        groups[-1].add(c.split("+++")[0])
    assert groups == [
        {"FLOWERS102"}, {"CIFAR100"}, {"SUN397"}, {"CUB200"}, {"FGVCAircraft"}, {"ZAPPOS50k", "BIRDSNAP", "DTD"},
        {"MITSTATES", "PLANTVILLAGE"}, {"OPENIMAGES", "AI2DIAGRAMS"}, {"VEG200", "CLEVR", "PLACES365", "FRU92", "DSPRITES"},
        {"SHAPES3D", "PATTERNNET"}, {"DOMAINNET_CLIPART", "OBJECTNET", "DOMAINNET_INFOGRAPH", "DOMAINNET_SKETCH",
                                     "DOMAINNET_PAINTING", "MVTECAD_Eval", "MVTECAD_Adapt"},
        {"MTSD", "ISICMELANOMA", "CLRS"}, {"iNATURALIST2021", "DF20MINI", "COUNTRY211", "RESISC45"},
        {"SNAKECLEF", "ARTBENCH10", "FSCOCO", "DOLLARSTREET"}, {"OBSC_THINGS", "QUILT", "SynthCLIP106", "OBSC_ANIMALS"},
    ]


def test_catalogue_rows_list_every_dataset_on_disk_or_not(ref_root):
    from fif.data.fif_benchmark import catalogue_rows

    rows = catalogue_rows()
    assert len(rows) == 63 and {r["name"]: r["primer"] for r in rows} == {d.name: d.primer for d in CATALOGUE}
    inat = next(r for r in rows if r["name"] == "iNATURALIST2021")
    assert inat["splits"] == {"train": "train_mini", "test": "val"} and inat["folder"] == "iNATURALIST2021"
    assert next(r for r in rows if r["name"] == "IMAGENET")["splits"] == {"test": "test"}
    root, info = ref_root
    present = {r["name"] for r in catalogue_rows(root=root, info_dir=info) if r["on_disk"]}
    assert present == {"AI2DIAGRAMS", "iNATURALIST2021", "MTSD", "FSCOCO", "IMAGENET", "MSCOCO"}
