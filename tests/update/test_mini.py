"""The lineage on the real mini world (slow: the mini base model, three 40-step updates at batch 128 from
`fif data materialize` folders; about a minute on one CPU thread): the paper's A_KA over the lineage's fixed set
of update datasets, and a 3-task `fif run` of v1.3's config deploying the same bytes.

A candidate the gate holds is promoted by hand (`fif update promote`), as an operator would after reading its
report, so that the chain v1.1-v1.3 exists. The issue asks for A_KA rising with every update: on mini v4 it
does, under the paper's guidance recipe (FT + EMA merge + autoregressive cosine) and under plain fine-tuning
with a per-task cosine (the control). On mini v3 it rose with the first update only under the guidance recipe
(docs/update.md).
"""

from __future__ import annotations

import pytest

import fif
from fif import update
from fif.config import load_config
from fif.data.registry import get_benchmark
from fif.data.show import materialize

DATASETS = ("mini_digits", "mini_letters", "mini_novel_shapes")


def three_updates(root, overrides: list[str]):
    materialize(get_benchmark("mini"), root / "mat", list(DATASETS), ["train", "test"])
    update.init(root / "acme", recipe="mini", pretrained="mini-base", overrides=["update.max_zs_drop=3", *overrides])
    for name in DATASETS:
        result = update.apply(root / "acme", str(root / "mat" / name))
        if not result.released:
            update.promote(root / "acme", result.version, reason=f"accepted: {result.gate['summary']}")
    return root


@pytest.fixture(scope="module")
def lineage(tmp_path_factory):
    return three_updates(tmp_path_factory.mktemp("mini"), [])


def fixed_a_ka(lineage) -> list[float]:
    rows = update.log_rows(lineage / "acme")
    assert [r["version"] for r in rows] == ["v1.0", "v1.1", "v1.2", "v1.3"]
    assert all(r["update_sets"] == list(DATASETS) and r["missing"] == [] for r in rows)
    return [r["a_ka_all"] for r in rows]


@pytest.mark.slow
def test_every_mini_update_knows_more_than_the_base_on_the_fixed_set(lineage):
    a_ka = fixed_a_ka(lineage)
    assert a_ka[1] > a_ka[0] + 3 and a_ka[3] > a_ka[0] + 3


# Measured (seed 0, 40 steps per update): A_KA on the fixed set on mini v4 31.78 / 40.42 / 43.21 / 45.12 for
# v1.0-v1.3 (docs/update.md's walkthrough). On mini v3 it was 18.01 / 23.35 / 23.35 / 23.11 and this test was a
# strict expected failure: v3's base knew nothing of mini_letters, which stayed below chance after its own update.
@pytest.mark.slow
def test_a_ka_on_the_fixed_set_rises_with_every_mini_update(lineage):
    a_ka = fixed_a_ka(lineage)
    assert a_ka[0] < a_ka[1] < a_ka[2] < a_ka[3]


# The control (seed 0): plain fine-tuning, per-task cosine, no merge: 31.78 / 42.85 / 47.42 / 55.12 for v1.0-v1.3
# on mini v4 (18.01 / 25.37 / 27.78 / 42.90 on mini v3).
@pytest.mark.slow
def test_a_ka_on_the_fixed_set_rises_with_every_plain_fine_tuning_update(tmp_path):
    a_ka = fixed_a_ka(three_updates(tmp_path, ["merge.preset=none", "train.schedule=cosine"]))
    assert a_ka[0] < a_ka[1] < a_ka[2] < a_ka[3]


@pytest.mark.slow
def test_three_mini_updates_deploy_what_a_three_task_run_deploys(lineage, tmp_path):
    lin = update.Lineage.open(lineage / "acme")
    assert lin.deployed == "v1.3" and lin.chain("v1.3") == ["v1.1", "v1.2", "v1.3"]
    run = fif.run(load_config(str(lineage / "acme/versions/v1.3/config.yaml")), out_dir=tmp_path / "run3")
    assert (run.out_dir / "final.safetensors").read_bytes() == \
        (lineage / "acme/versions/v1.3/model.safetensors").read_bytes()
