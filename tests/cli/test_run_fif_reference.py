"""Issue 14's check, as a new user would run it: a data root in the FiF reference's exact layout (its info
files apart in an info folder, ``_224`` variants, non-standard split names, null captions, FSCOCO by
class, a corrupt JPEG in a pool shard), the reference's stream format over all 41 datasets, and
``fif run --preset fif ... stream.ordering=file`` with a tiny model, for finetune and ewc."""

from __future__ import annotations

import json
import random

import pytest

from fif.cli import main
from fif.data.fif_catalogue import TIME_ORDER
from fif_reference import CORRUPT_JPEG, class_names, write_dataset, write_pairs, write_shard, write_stream

ADAPTATION = {  # name -> (classes, info-file splits and images per class, options)
    "FLOWERS102": (3, {"train": 3, "test": 2}, {}),
    "CIFAR100": (3, {"train": 3, "test": 2}, {"resized": ("train", "test")}),
    "AI2DIAGRAMS": (2, {"train": 3, "test": 2}, {"resized": ("train", "test"), "null_train_captions": True}),
    "MTSD": (3, {"train": 3, "val": 2}, {"resized": ("train",), "resized_json_only": ("val",)}),
    "iNATURALIST2021": (4, {"train_mini": 2, "val": 2}, {}),
    "FSCOCO": (3, {"train": 3, "test": 2}, {"native_captions": True}),
    "SynthCLIP106": (2, {"train": 3, "test": 2}, {}),
}
EVAL_ONLY = {"IMAGENET": 3, "MNIST": 2}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    base = tmp_path_factory.mktemp("fif_reference")
    root, info = base / "fif_data", base / "fomo_in_flux" / "data_lib" / "00_info"
    for name, (n, splits, options) in ADAPTATION.items():
        write_dataset(root, name, class_names(name, n), splits, info, **options)
    for name, n in EVAL_ONLY.items():
        write_dataset(root, name, class_names(name, n), {"test": 2}, info)
    write_pairs(root, "MSCOCO", 6, info)
    # The stream file as the reference writes time_incremental_dschunked_1.json: every one of the 41
    # datasets in release order, classes shuffled within each, FSCOCO by class.
    rng, concepts = random.Random(1), []
    for name in TIME_ORDER:
        names = class_names(name, ADAPTATION[name][0] if name in ADAPTATION else 5)
        rng.shuffle(names)
        concepts += [f"{name}+++{c}" for c in names]
    stream = write_stream(base / "time_incremental_dschunked_1.json", concepts)
    write_shard(base / "laion" / "00000.tar", 24, corrupt=(3,))
    write_shard(base / "laion" / "00001.tar", 24, start=24)
    pool = f"{base / 'laion'}/{{00000..00001}}.tar"
    return base, root, info, stream, pool


def args(reference, method: str, out, ft_steps: int = 6) -> list[str]:
    base, root, info, stream, pool = reference
    return [
        "run", "--no-progress", "--preset", "fif", f"data.root={root}", f"data.options.info_dir={info}",
        "data.options.missing=skip", f"data.mixture.pool={pool}", "stream.ordering=file", f"stream.file={stream}",
        f"method.name={method}", "model.arch=fif-mini-rn32", "model.pretrained=null", "run.device=cpu",
        f"run.cache_dir={base / 'cache'}", "data.num_workers=0", "run.threads=1", "stream.tasks=3",
        f"budget.ft_steps={ft_steps}", "train.batch_size=8", "train.log_every=1", "eval.batch_size=64", "eval.min_samples=8",
        "--out", str(out),
    ]


def test_the_reference_layout_checks_clean_and_lists_every_primer(reference, capsys):
    base, root, info, stream, pool = reference
    assert main(["data", "check", f"data.root={root}", f"data.options.info_dir={info}", "data.options.missing=skip",
                 f"data.mixture.pool={pool}", "stream.ordering=file", f"stream.file={stream}",
                 f"run.cache_dir={base / 'cache'}", "--decode", "64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    checked = {d["name"]: d for d in report["datasets"] if d["role"] != "-"}
    assert set(checked) == {*ADAPTATION, *EVAL_ONLY, "MSCOCO"} and report["ok"]
    assert report["stream"]["kept"] == sum(n for n, _, _ in ADAPTATION.values())
    files = {d: [s["file"].rsplit("/", 1)[1] for s in checked[d]["splits"]] for d in ("MTSD", "AI2DIAGRAMS", "IMAGENET")}
    assert files == {"MTSD": ["MTSD_train_224.json", "MTSD_val.json"],  # val's _224 JSON has no folder
                     "AI2DIAGRAMS": ["AI2DIAGRAMS_train_224.json", "AI2DIAGRAMS_test_224.json"],
                     "IMAGENET": ["IMAGENET_test.json"]}
    assert report["pool"]["status"] == "warning" and "1 of 48 sampled images cannot be read" in report["pool"]["warnings"][0]


@pytest.mark.parametrize("method, ft_steps", [("finetune", 6), ("ewc", 15)])  # ewc: its Fisher pass costs ~3 steps
def test_fif_run_on_the_reference_layout_evaluates_every_dataset_present(reference, method, ft_steps, tmp_path):
    out = tmp_path / method
    assert main(args(reference, method, out, ft_steps)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [p["task"] for p in summary["trajectory"]] == [-1, 0, 1, 2]
    assert set(summary["trajectory"][-1]["scores"]) == {*ADAPTATION, *EVAL_ONLY, "MSCOCO"}
    run = json.loads((out / "run.json").read_text())
    streamed = [c for task in run["tasks"] for c in task]
    assert len(streamed) == 20 and {c.split("+++")[0] for c in streamed} == set(ADAPTATION)
    assert [c for c in streamed if c.startswith("FSCOCO")] == [c for c in streamed if c.startswith("FSCOCO+++fscoco")]
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    roles = next(e for e in events if e["event"] == "eval")["roles"]
    assert roles["FSCOCO"] == "adaptation" and "i2t_r5" in next(e for e in events if e["event"] == "eval")["metrics"]["FSCOCO"]
    bad = summary["bad_samples"]  # the corrupt JPEG is met only if a batch draws it: counted when it is
    assert bad["total"] == len(bad["files"].get("pretraining_pool", [])) <= 1
    if bad["total"]:
        assert bad["files"]["pretraining_pool"][0].endswith("00000.tar (sample 3)")


@pytest.mark.slow
def test_a_corrupt_jpeg_in_every_batch_of_the_pool_is_skipped_and_counted(reference, tmp_path):
    base, pool = reference[0], reference[-1]
    shard = base / "laion_bad" / "00000.tar"
    write_shard(shard, 24, corrupt=range(0, 24, 3))
    assert (shard.read_bytes().count(CORRUPT_JPEG)) == 8
    argv = args(reference, "finetune", tmp_path / "run")
    argv[argv.index(f"data.mixture.pool={pool}")] = f"data.mixture.pool={shard}"
    assert main(argv) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert 0 < summary["bad_samples"]["by_source"]["pretraining_pool"] <= 8
    assert set(summary["trajectory"][-1]["scores"]) == {*ADAPTATION, *EVAL_ONLY, "MSCOCO"}
