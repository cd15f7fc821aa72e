"""A study as typed data: variants × seeds × (optionally) a tuning grid per variant, the comparisons that
test the paper's claims, how the grid is tuned, and the small ``quick`` grid for smoke tests.

A study file (YAML; the named studies of :mod:`fif.studies.catalog` are the same mappings)::

    name: merging
    paper: "§7: fine-tuning + EMA-style merging gives the best accumulation/retention trade-off"
    preset: mini                          # default; --preset on the command line wins
    overrides: [merge.preset=none]        # every run
    seeds: [0, 1, 2]
    tune: {train.lr: [x0.5, x1, x2]}      # every variant's grid; "x2" = twice the variant's resolved value
    select: gm                            # the validation metric the grid point is chosen on
    validation: auto                      # auto | none | {overrides: [...], split: test, subset: true}
    variants:
      - {name: finetune, overrides: [merge.preset=none]}
      - {name: ema_merge, overrides: [merge.preset=ema_merge], tune: {train.lr: [x0.5, x1], merge.alpha: [0.5, 0.7]}}
    compare:
      - claim: FT + EMA-merge reaches a higher GM than plain fine-tuning
        a: ema_merge                      # shorthand for contrast: {ema_merge: 1, finetune: -1}
        b: finetune
        metric: gm                        # a_ka | a_zs | gm
        at: final                         # final | trajectory_mean | change (final − zero-shot)
        expect: higher                    # higher | lower | not_lower | not_higher
      - claim: ordering changes the trajectory a lot, the end point much less
        spread: a_ka                      # mid-stream spread across variants − final spread, per seed
        expect: higher
    quick: {variants: [finetune, ema_merge], seeds: [0, 1], tune: {train.lr: [x0.5, x1]}}

Override values may be multiples too (``budget.ft_steps=x2``): a value ``x<number>`` of a key whose
resolved value is a number means that number times the resolved value.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from fif.core.typed import ConfigError
from fif.studies.stats import EXPECTATIONS

METRICS = ("a_ka", "a_zs", "gm")
AT = ("final", "trajectory_mean", "change")
METRIC_NAMES = {"a_ka": "A_KA", "a_zs": "A_ZS", "gm": "GM"}
AT_NAMES = {"final": "final", "trajectory_mean": "trajectory-mean", "change": "change from zero-shot of"}
MULTIPLE = re.compile(r"^x(\d+(?:\.\d*)?(?:e[-+]?\d+)?|\.\d+(?:e[-+]?\d+)?)$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
STUDY_KEYS = ("name", "description", "paper", "preset", "overrides", "seeds", "tune", "select", "validation",
              "equal_compute", "variants", "compare", "quick")


@dataclass
class Variant:
    """One arm of a study: its name, the overrides that make it, and its own tuning grid (None = the study's)."""

    name: str
    overrides: list[str] = field(default_factory=list)
    tune: dict[str, list[str]] | None = None


@dataclass
class Comparison:
    """A claim tested on the study's results.

    ``kind="contrast"``: d_s = Σ_v weights[v] · metric(v, s) at ``at`` (final, trajectory-mean or change
    from zero-shot), paired by seed. ``kind="spread"``: d_s = (mean over the mid-stream evaluations of the
    range of the metric across ``variants``) − (its range at the end), per seed.
    """

    claim: str
    metric: str
    kind: str = "contrast"
    at: str = "final"
    weights: dict[str, float] = field(default_factory=dict)
    variants: list[str] = field(default_factory=list)
    expect: str | None = None

    @property
    def label(self) -> str:
        metric = METRIC_NAMES[self.metric]
        if self.kind == "spread":
            return f"mid-stream − final spread of {metric} across {', '.join(self.variants) or 'all variants'}"
        terms = []
        for v, w in self.weights.items():
            sign = "−" if w < 0 else "+"
            mag = "" if abs(w) == 1 else f"{abs(w):g}·"
            terms.append(f"{sign} {mag}{v}")
        text = " ".join(terms).lstrip("+ ").strip()
        return f"{AT_NAMES[self.at]} {metric}: {text}"


@dataclass
class Validation:
    """Where a grid point is chosen: the deployed weights of each run evaluated with these overrides on
    ``split`` (FiF's fixed subsets when ``subset``), never on the reported test scores."""

    overrides: list[str] = field(default_factory=list)
    split: str = "test"
    subset: bool = True
    note: str = ""


@dataclass
class Quick:
    """The smoke-test grid: a subset of the variants, fewer seeds and grid points, a tiny budget."""

    variants: list[str] | None = None
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    tune: dict[str, list[str]] | None = None
    overrides: list[str] = field(default_factory=list)


@dataclass
class Study:
    """A study (see the module docstring). ``validation`` is ``"auto"`` (the benchmark's own held-out draw
    where it has one, see :func:`fif.studies.tuning.auto_validation`), None (no validation: the report shows
    the whole front and flags any choice as made on test scores) or a :class:`Validation`."""

    name: str
    variants: list[Variant]
    description: str = ""
    paper: str = ""
    preset: str | None = None
    overrides: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    tune: dict[str, list[str]] = field(default_factory=dict)
    select: str = "gm"
    validation: Validation | str | None = "auto"
    equal_compute: bool = False
    compare: list[Comparison] = field(default_factory=list)
    quick: Quick = field(default_factory=Quick)

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(f"study {self.name!r} has no variant {name!r}; its variants: "
                       f"{', '.join(v.name for v in self.variants)}")

    def grid_of(self, variant: Variant) -> dict[str, list[str]]:
        return dict(self.tune if variant.tune is None else variant.tune)

    def is_tuned(self) -> bool:
        """Whether any variant has more than one grid point."""
        return any(_points(self.grid_of(v)) > 1 for v in self.variants)

    def to_dict(self) -> dict[str, Any]:
        validation: Any = self.validation
        if isinstance(validation, Validation):
            validation = {"overrides": list(validation.overrides), "split": validation.split,
                          "subset": validation.subset, **({"note": validation.note} if validation.note else {})}
        compare = []
        for c in self.compare:
            item: dict[str, Any] = {"claim": c.claim}
            if c.kind == "spread":
                item.update(spread=c.metric, **({"variants": list(c.variants)} if c.variants else {}))
            else:
                item.update(contrast=dict(c.weights), metric=c.metric, at=c.at)
            if c.expect:
                item["expect"] = c.expect
            compare.append(item)
        out: dict[str, Any] = {
            "name": self.name, "description": self.description, "paper": self.paper, "preset": self.preset,
            "overrides": list(self.overrides), "seeds": list(self.seeds), "tune": dict(self.tune),
            "select": self.select, "validation": validation, "equal_compute": self.equal_compute,
            "variants": [{"name": v.name, "overrides": list(v.overrides), **({"tune": v.tune} if v.tune is not None else {})}
                         for v in self.variants],
            "compare": compare,
            "quick": {"variants": self.quick.variants, "seeds": list(self.quick.seeds), "tune": self.quick.tune,
                      "overrides": list(self.quick.overrides)},
        }
        return out


def _points(grid: Mapping[str, list[str]]) -> int:
    n = 1
    for values in grid.values():
        n *= len(values)
    return n


# ----------------------------------------------------------------------------------------------
# Parsing (every problem collected, then one ConfigError)


def _str_list(value: Any, where: str, problems: list[str]) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float, bool)) for v in value):
        problems.append(f"{where} must be a list of section.key=value strings, got {value!r}")
        return []
    out = [str(v) for v in value]
    for o in out:
        if "=" not in o:
            problems.append(f"{where}: {o!r} is not of the form section.key=value")
    return out


def _value_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _grid(value: Any, where: str, problems: list[str]) -> dict[str, list[str]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"{where} must map section.key to a list of values, got {value!r}")
        return {}
    grid = {}
    for key, values in value.items():
        values = values if isinstance(values, list) else [values]
        if not values or "." not in str(key):
            problems.append(f"{where}.{key}: give a dotted key (e.g. train.lr) and at least one value")
            continue
        grid[str(key)] = [_value_text(v) for v in values]
    return grid


def _seeds(value: Any, where: str, problems: list[str]) -> list[int]:
    if not isinstance(value, list) or not value or not all(isinstance(s, int) and not isinstance(s, bool) for s in value):
        problems.append(f"{where} must be a non-empty list of integers, got {value!r}")
        return [0]
    if len(set(value)) != len(value):
        problems.append(f"{where} lists a seed twice: {value}")
    return list(value)


def _unknown_keys(data: Mapping, valid: tuple[str, ...], where: str, problems: list[str]) -> None:
    for key in data:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(f"{where}unknown key {key!r}{hint} Valid: {', '.join(valid)}")


def _variants(value: Any, problems: list[str]) -> list[Variant]:
    if not isinstance(value, list) or not value:
        problems.append("variants must be a non-empty list of {name, overrides, tune}")
        return []
    out = []
    for i, item in enumerate(value):
        where = f"variants[{i}]"
        if not isinstance(item, dict) or "name" not in item:
            problems.append(f"{where} must be a mapping with a name, got {item!r}")
            continue
        _unknown_keys(item, ("name", "overrides", "tune"), f"{where}: ", problems)
        name = str(item["name"])
        if not NAME.match(name):
            problems.append(f"{where}: name {name!r} must be letters, digits and ._+- (it names run folders)")
        tune = _grid(item["tune"], f"{where}.tune", problems) if item.get("tune") is not None else None
        out.append(Variant(name, _str_list(item.get("overrides"), f"{where}.overrides", problems), tune))
    names = [v.name for v in out]
    problems += [f"variants: {n!r} is given twice" for n in sorted({n for n in names if names.count(n) > 1})]
    return out


def _comparison(item: Any, i: int, names: list[str], problems: list[str]) -> Comparison | None:
    where = f"compare[{i}]"
    if not isinstance(item, dict) or "claim" not in item:
        problems.append(f"{where} must be a mapping with a claim, got {item!r}")
        return None
    _unknown_keys(item, ("claim", "a", "b", "contrast", "metric", "at", "expect", "spread", "variants"),
                  f"{where}: ", problems)
    expect = item.get("expect")
    if expect is not None and expect not in EXPECTATIONS:
        problems.append(f"{where}.expect {expect!r} is unknown; valid: {', '.join(EXPECTATIONS)}")
    if "spread" in item:
        metric, variants = item["spread"], [str(v) for v in item.get("variants") or []]
        c = Comparison(str(item["claim"]), metric, "spread", variants=variants, expect=expect)
        named = variants
    else:
        weights = item.get("contrast")
        if weights is None and "a" in item and "b" in item:
            if str(item["a"]) == str(item["b"]):
                problems.append(f"{where}: a and b are both {item['a']!r}; compare two different variants")
                return None
            weights = {str(item["a"]): 1.0, str(item["b"]): -1.0}
        if not isinstance(weights, dict) or not weights:
            problems.append(f"{where}: give the variants compared, as a: and b: or as contrast: {{variant: weight}}")
            return None
        try:
            weights = {str(k): float(w) for k, w in weights.items()}
        except (TypeError, ValueError):
            problems.append(f"{where}.contrast: weights must be numbers, got {weights!r}")
            return None
        metric = item.get("metric", "gm")
        c = Comparison(str(item["claim"]), metric, "contrast", str(item.get("at", "final")), weights, expect=expect)
        named = list(weights)
        if c.at not in AT:
            problems.append(f"{where}.at {c.at!r} is unknown; valid: {', '.join(AT)}")
    if c.metric not in METRICS:
        problems.append(f"{where}: metric {c.metric!r} is unknown; valid: {', '.join(METRICS)}")
    for n in named:
        if n not in names:
            problems.append(f"{where}: no variant {n!r}; the study's variants: {', '.join(names)}")
    return c


def _validation(value: Any, problems: list[str]) -> Validation | str | None:
    if value in (None, "none", False):
        return None
    if value == "auto":
        return "auto"
    if not isinstance(value, dict):
        problems.append(f"validation must be auto, none or {{overrides, split, subset}}, got {value!r}")
        return None
    _unknown_keys(value, ("overrides", "split", "subset", "note"), "validation: ", problems)
    return Validation(_str_list(value.get("overrides"), "validation.overrides", problems),
                      str(value.get("split", "test")), bool(value.get("subset", True)), str(value.get("note", "")))


def _quick(value: Any, names: list[str], problems: list[str]) -> Quick:
    if value is None:
        return Quick(variants=names[:2])
    if not isinstance(value, dict):
        problems.append(f"quick must be a mapping {{variants, seeds, tune, overrides}}, got {value!r}")
        return Quick()
    _unknown_keys(value, ("variants", "seeds", "tune", "overrides"), "quick: ", problems)
    variants = [str(v) for v in value["variants"]] if value.get("variants") else names[:2]
    for v in variants:
        if v not in names:
            problems.append(f"quick.variants: no variant {v!r}; the study's variants: {', '.join(names)}")
    tune = _grid(value["tune"], "quick.tune", problems) if value.get("tune") is not None else None
    return Quick(variants, _seeds(value.get("seeds", [0, 1]), "quick.seeds", problems), tune,
                 _str_list(value.get("overrides"), "quick.overrides", problems))


def parse_study(data: Mapping[str, Any], source: str = "") -> Study:
    """A :class:`Study` from its mapping (a study file's YAML, or a named study).

    Raises:
        ConfigError: every problem at once (unknown keys with the nearest valid ones, malformed entries,
            comparisons naming variants the study does not have).
    """
    problems: list[str] = []
    if not isinstance(data, Mapping):
        raise ConfigError([f"a study must be a mapping of {', '.join(STUDY_KEYS)}, got {type(data).__name__}"], source)
    _unknown_keys(data, STUDY_KEYS, "", problems)
    name = str(data.get("name") or "study")
    if not NAME.match(name):
        problems.append(f"name {name!r} must be letters, digits and ._+-")
    variants = _variants(data.get("variants"), problems)
    names = [v.name for v in variants]
    select = data.get("select", "gm")
    if select not in METRICS:
        problems.append(f"select {select!r} is unknown; valid: {', '.join(METRICS)}")
    compare = [c for i, item in enumerate(data.get("compare") or [])
               if (c := _comparison(item, i, names, problems)) is not None]
    study = Study(
        name=name, variants=variants, description=str(data.get("description") or ""),
        paper=str(data.get("paper") or ""), preset=data.get("preset"),
        overrides=_str_list(data.get("overrides"), "overrides", problems),
        seeds=_seeds(data.get("seeds", [0, 1, 2]), "seeds", problems),
        tune=_grid(data.get("tune"), "tune", problems), select=select,
        validation=_validation(data.get("validation", "auto"), problems),
        equal_compute=bool(data.get("equal_compute", False)), compare=compare,
        quick=_quick(data.get("quick"), names, problems),
    )
    if problems:
        raise ConfigError(problems, source or f"study {name!r}")
    return study
