"""fif.studies.spec and the named studies: parsing, every problem reported at once, round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fif.core.typed import ConfigError
from fif.studies.catalog import named_study, study_names
from fif.studies.spec import Comparison, parse_study


def test_every_named_study_parses_and_round_trips():
    assert study_names() == ["methods", "merging", "schedules", "mixtures", "orderings", "compute", "init_deploy", "models"]
    for name in study_names():
        study = parse_study(named_study(name, ["fif-mini-rn32", "fif-mini-rn32-x2"]))
        assert study.name == name and len(study.seeds) >= 3 and study.compare, name
        again = parse_study(study.to_dict())
        assert again.to_dict() == study.to_dict(), name


def test_the_example_study_files_parse():
    files = sorted((Path(__file__).parents[2] / "examples" / "studies").glob("*.yaml"))
    assert files, "examples/studies/ holds the study files that docs/findings.md ran"
    for path in files:
        study = parse_study(yaml.safe_load(path.read_text()))
        assert study.name == path.stem and study.compare, path


def test_every_problem_at_once_with_the_fix():
    bad = {
        "name": "x", "variantz": [],
        "variants": [{"name": "a", "overrides": ["train.lr"]}, {"name": "a"}, {"name": "bad name!"}],
        "seeds": [0, 0], "select": "acc",
        "compare": [{"claim": "c", "a": "a", "b": "nope", "metric": "gm", "at": "end", "expect": "more"},
                    {"claim": "d"}, {"claim": "e", "a": "a", "b": "a"}],
        "quick": {"variants": ["zzz"]},
    }
    with pytest.raises(ConfigError) as e:
        parse_study(bad)
    text = str(e.value)
    for part in ("unknown key 'variantz'; did you mean 'variants'?", "'train.lr' is not of the form",
                 "'a' is given twice", "name 'bad name!' must be", "lists a seed twice", "select 'acc' is unknown",
                 "no variant 'nope'", "at 'end' is unknown", "expect 'more' is unknown", "compare[1]: give the variants",
                 "quick.variants: no variant 'zzz'", "compare[2]: a and b are both 'a'"):
        assert part in text, part


def test_comparison_labels_and_shorthand():
    study = parse_study({"name": "s", "variants": [{"name": "a"}, {"name": "b"}],
                         "compare": [{"claim": "a beats b", "a": "a", "b": "b", "metric": "a_ka", "at": "change"},
                                     {"claim": "spread", "spread": "a_zs", "expect": "higher"}]})
    c, s = study.compare
    assert c.weights == {"a": 1.0, "b": -1.0} and c.label == "change from zero-shot of A_KA: a − b"
    assert s.kind == "spread" and s.label.startswith("mid-stream − final spread of A_ZS")
    assert Comparison("x", "gm", weights={"a2": 1, "a1": -1, "b2": -0.5}).label == "final GM: a2 − a1 − 0.5·b2"
    assert study.quick.variants == ["a", "b"] and study.validation == "auto" and study.seeds == [0, 1, 2]


def test_unknown_study_name_suggests():
    with pytest.raises(KeyError, match="did you mean 'merging'"):
        named_study("mergin")
