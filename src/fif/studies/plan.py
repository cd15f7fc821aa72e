"""A study expanded into runs: every variant × grid point × seed, as a sweep (:mod:`fif.runner.sweep`) plus
``study.yaml``, which maps each run back to its variant, grid point and seed; and the time estimate.

The study folder is a sweep folder (``sweep.yaml``, ``configs/``, ``commands.txt``, one run folder per run)
with ``study.yaml`` beside it, ``validation/<run>.json`` (each run's validation score) and ``report/``.
How long it will take: :mod:`fif.studies.estimate`.
Runs are ordered seed by seed (every variant's seed 0 first), so a study stopped half-way already holds
complete comparisons for its first seeds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from fif.budget.mafs import run_budget_mafs
from fif.budget.measure import measure_step_cost, meta_clip
from fif.config import load_config, read_yaml
from fif.core.io import atomic_write_text
from fif.core.typed import ConfigError
from fif.methods.finetune import Finetune
from fif.model.clip import CONFIG_DIR as MODEL_CONFIG_DIR
from fif.runner.sweep import SWEEP_FILE, Sweep, SweepRun, read_sweep, safe_name, validate, write_sweep
from fif.studies.catalog import named_study
from fif.studies.spec import MULTIPLE, Study, Validation, parse_study

STUDY_FILE = "study.yaml"
VALIDATION_DIR = "validation"
TUNING_MODES = ("validation", "test", "fixed")

# Quick grids shrink the stream, the budget and the evaluations, so a run takes seconds, not minutes. They
# leave data.options alone: the cached mini base model is keyed by them, and a changed world means building
# another base (minutes).
QUICK_MINI = [
    "stream.tasks=3", "budget.ft_steps=60", "train.batch_size=64", "train.log_every=10", "eval.full_at_ends=false",
    "eval.min_samples=100", "eval.subset_frac=0.05",
]
QUICK_OTHER = ["stream.tasks=3", "budget.ft_steps=x0.02", "eval.full_at_ends=false"]
# Mini's validation draw: every split is a pure function of data.options.seed, so another seed is a fresh,
# independent draw of every test set from the same generator (never trained on, never reported).
MINI_VALIDATION_SEED_OFFSET = 1000


@dataclass
class StudyRun:
    """One run of a study: its folder name, variant, grid point (key → resolved value) and seed."""

    name: str
    variant: str
    point: dict[str, str]
    seed: int

    @property
    def point_label(self) -> str:
        return point_label(self.point)


def point_label(point: dict[str, str]) -> str:
    """``lr=0.00025 strength=1e5``; ``-`` for the single point of an untuned variant."""
    short = _short_keys(list(point))
    return " ".join(f"{short[k]}={v}" for k, v in point.items()) or "-"


@dataclass
class StudyPlan:
    """An expanded study: the study, how it runs (preset, common overrides, quick or not), its runs, its
    validation (None: none), and the tuning mode (``validation``, ``test`` = no validation signal, the
    grid point is the best on test scores and the report says so, or ``fixed`` = nothing is tuned)."""

    study: Study
    preset: str
    overrides: list[str]
    quick: bool
    runs: list[StudyRun]
    validation: Validation | None
    tuning: str
    benchmark: str = ""
    budget_mafs: float | None = None  # equal_compute: the whole stream's budget every variant gets
    lr: float | None = None  # the resolved train.lr before any grid (what an untuned study runs at)

    def sweep(self, run_overrides: dict[str, list[str]]) -> Sweep:
        return Sweep(self.preset, list(self.overrides), [SweepRun(r.name, run_overrides[r.name]) for r in self.runs])

    def variants(self) -> list[str]:
        seen: list[str] = []
        for r in self.runs:
            if r.variant not in seen:
                seen.append(r.variant)
        return seen

    def seeds(self) -> list[int]:
        return sorted({r.seed for r in self.runs})

    def to_dict(self) -> dict[str, Any]:
        v = self.validation
        return {
            "study": self.study.to_dict(), "preset": self.preset, "overrides": list(self.overrides),
            "quick": self.quick, "tuning": self.tuning, "benchmark": self.benchmark, "budget_mafs": self.budget_mafs,
            "lr": self.lr,
            "validation": None if v is None else {"overrides": list(v.overrides), "split": v.split,
                                                  "subset": v.subset, "note": v.note},
            "runs": [{"name": r.name, "variant": r.variant, "point": dict(r.point), "seed": r.seed} for r in self.runs],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StudyPlan":
        v = data.get("validation")
        return cls(
            parse_study(data["study"]), data["preset"], list(data.get("overrides") or []), bool(data.get("quick")),
            [StudyRun(r["name"], r["variant"], {str(k): str(x) for k, x in (r.get("point") or {}).items()},
                      int(r["seed"])) for r in data["runs"]],
            None if v is None else Validation(list(v.get("overrides") or []), v.get("split", "test"),
                                              bool(v.get("subset", True)), v.get("note", "")),
            data.get("tuning", "fixed"), data.get("benchmark", ""), data.get("budget_mafs"), data.get("lr"),
        )


# ----------------------------------------------------------------------------------------------
# Loading a study


def mini_archs() -> list[str]:
    """The model-size ladder of the fif-mini architectures this fif ships (model/configs/fif-mini-*.json): the
    ResNet family of the default, by width then name (fif-mini-vit32 is another design, not a size of it)."""
    names = [p.stem for p in MODEL_CONFIG_DIR.glob("fif-mini-rn*.json")]

    def width(name: str) -> tuple[float, str]:
        cfg = json.loads((MODEL_CONFIG_DIR / f"{name}.json").read_text())
        return float(cfg.get("vision_cfg", {}).get("width", 0)) + float(cfg.get("text_cfg", {}).get("width", 0)), name

    return sorted(names, key=width)


def load_study(name_or_file: str, preset: str | None = None) -> Study:
    """A named study (``fif study --list``) or a study file (YAML).

    Args:
        name_or_file: a study name or the path of a study YAML file.
        preset: the preset the study will run on (``models`` picks its architectures by the benchmark).

    Raises:
        KeyError: neither a study name nor an existing file.
        ConfigError: the file's problems, all at once.
    """
    path = Path(name_or_file)
    if name_or_file.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"study file {name_or_file} does not exist")
        return parse_study(read_yaml(path), source=str(path))
    benchmark = "mini"
    if name_or_file == "models":
        benchmark = load_config(preset or "mini").data.benchmark
    data = named_study(name_or_file, mini_archs(), benchmark)
    if name_or_file == "models" and len(data["variants"]) < 2:
        raise ConfigError([
            f"the models study needs at least two architectures; the {benchmark} world has "
            f"{', '.join(v['overrides'][0].split('=')[1] for v in data['variants']) or 'none'}. Add a wider fif-mini "
            "architecture (model/configs/fif-mini-rn*.json), run it on --preset fif, or write a study "
            "file with your own model variants (docs/studies.md)"
        ], "study 'models'")
    return parse_study(data, source=f"study {name_or_file!r}")


# ----------------------------------------------------------------------------------------------
# Resolving multiples (x0.5) against the resolved config


def _config_value(cfg: dict[str, Any], key: str) -> Any:
    """The value of dotted ``key`` in a resolved config dict (``method.k`` reads ``method.options.k``)."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            if key.startswith("method.") and key.count(".") == 1:
                return cfg.get("method", {}).get("options", {}).get(key.split(".", 1)[1])
            return None
        node = node[part]
    return node


def _number_text(value: float, integer: bool) -> str:
    return str(int(round(value))) if integer else format(value, ".4g")


def resolve_value(key: str, value: str, cfg: dict[str, Any], where: str) -> str:
    """``value`` as override text: ``x<f>`` becomes f × the key's value in ``cfg``, anything else is kept.

    Raises:
        ConfigError: a multiple of a key whose resolved value is not a number.
    """
    m = MULTIPLE.match(value.strip())
    if not m:
        return value
    base = _config_value(cfg, key)
    if isinstance(base, bool) or not isinstance(base, (int, float)):
        raise ConfigError([f"{where}: {key}={value} is a multiple, but {key} resolves to {base!r}, not a number; "
                           f"give {key} a value first (in the study's or the variant's overrides)"])
    integer = isinstance(base, int) or (key == "budget.ft_steps" and float(base).is_integer())
    return _number_text(float(m.group(1)) * base, integer)


def _resolve_overrides(preset: str, base: list[str], overrides: list[str], where: str) -> list[str]:
    out: list[str] = []
    for o in overrides:
        key, _, value = o.partition("=")
        if MULTIPLE.match(value.strip()):
            cfg = load_config(preset, [*base, *out]).to_dict()
            value = resolve_value(key.strip(), value, cfg, where)
        out.append(f"{key.strip()}={value}")
    return out


def _short_keys(keys: list[str]) -> dict[str, str]:
    short = {k: k.rsplit(".", 1)[-1] for k in keys}
    clashes = {s for s in short.values() if list(short.values()).count(s) > 1}
    return {k: (k if s in clashes else s) for k, s in short.items()}


def _grid_points(grid: dict[str, list[str]], cfg: dict[str, Any], where: str) -> list[dict[str, str]]:
    points: list[dict[str, str]] = [{}]
    for key, values in grid.items():
        resolved = [resolve_value(key, v, cfg, f"{where}.tune.{key}") for v in values]
        if len(set(resolved)) != len(resolved):
            raise ConfigError([f"{where}.tune.{key}: {values} resolve to repeated values {resolved}"])
        points = [{**p, key: v} for p in points for v in resolved]
    return points


def _key(override: str) -> str:
    return override.partition("=")[0].strip()


def _check_user_overrides(study: Study, user: Sequence[str]) -> None:
    """A user's override of a key that a variant or a grid sets to an absolute value would be silently lost."""
    absolute: dict[str, str] = {}
    for v in study.variants:
        for o in v.overrides:
            if not MULTIPLE.match(o.partition("=")[2].strip()):
                absolute.setdefault(_key(o), f"variant {v.name}")
        for key, values in study.grid_of(v).items():
            if any(not MULTIPLE.match(x) for x in values):
                absolute.setdefault(key, f"the tuning grid of {v.name}")
    clashes = [f"{_key(o)} is set by {absolute[_key(o)]}" for o in user if _key(o) in absolute]
    if clashes:
        raise ConfigError([f"override {c}; the study varies it, so it cannot be set for every run (drop it, or "
                           "write a study file with your own variants: fif study NAME --print)" for c in clashes],
                          f"study {study.name!r}")


def equal_compute_mafs(arch: str, batch_size: int, ft_steps: float | None) -> float:
    """The whole stream's MAFs of fine-tuning ``arch`` for ``ft_steps`` steps at ``batch_size``: FLOPs of one
    step (counted on the meta device, no weights) × steps; full fine-tuning's memory multiplier is 1."""
    clip = meta_clip(arch)
    cost = measure_step_cost(clip, Finetune(clip, None), batch_size, "meta")
    return run_budget_mafs(ft_steps, None, cost)


def auto_validation(cfg: dict[str, Any]) -> Validation | None:
    """The benchmark's own validation signal: on mini, a fresh draw of every test split (another
    ``data.options.seed``); None for other benchmarks (FiF has no split held out from test and train)."""
    if cfg.get("data", {}).get("benchmark") != "mini":
        return None
    seed = int((cfg["data"].get("options") or {}).get("seed", 0)) + MINI_VALIDATION_SEED_OFFSET
    return Validation([f"data.options.seed={seed}"], "test", True,
                      f"a fresh draw of every mini test split (data.options.seed={seed}), FiF's fixed subsets")


def expand_study(study: Study, preset: str | None = None, overrides: Sequence[str] = (), quick: bool = False,
                 seeds: Sequence[int] | None = None) -> tuple[StudyPlan, Sweep]:
    """Every variant × grid point × seed of ``study`` as named runs, every config validated.

    Args:
        study: the study.
        preset: the preset (default: the study's, else mini).
        overrides: overrides for every run, after the study's own (a key a variant or grid sets to an
            absolute value is refused; one it multiplies sets the base of the multiple).
        quick: the study's quick grid (fewer variants, seeds and grid points; a tiny budget).
        seeds: the seeds (default: the study's, or its quick seeds).

    Returns:
        The plan and its sweep (write both with :func:`write_study`).

    Raises:
        ConfigError: every invalid run config, a refused override, or a multiple of a non-number.
    """
    preset = preset or study.preset or "mini"
    _check_user_overrides(study, overrides)
    benchmark = load_config(preset, [*study.overrides, *overrides]).data.benchmark
    base = [*study.overrides]
    if quick:
        base += [*(QUICK_MINI if benchmark == "mini" else QUICK_OTHER), *study.quick.overrides]
    base = _resolve_overrides(preset, [], [*base, *overrides], "overrides")
    variants = [study.variant(n) for n in study.quick.variants] if quick and study.quick.variants else study.variants
    seeds = list(seeds if seeds is not None else (study.quick.seeds if quick else study.seeds))
    resolved: dict[str, tuple[list[str], list[dict[str, str]]]] = {}
    for v in variants:
        v_over = _resolve_overrides(preset, base, v.overrides, f"variants.{v.name}")
        cfg = load_config(preset, [*base, *v_over]).to_dict()
        grid = study.quick.tune if quick and study.quick.tune is not None else study.grid_of(v)
        resolved[v.name] = (v_over, _grid_points(grid, cfg, f"variants.{v.name}"))
    budget_mafs = None
    if study.equal_compute:
        first = load_config(preset, [*base, *resolved[variants[0].name][0]])
        budget_mafs = equal_compute_mafs(first.model.arch, first.train.batch_size, first.budget.ft_steps)
        base.append(f"budget.mafs={budget_mafs:.6g}")
    runs, run_overrides = [], {}
    for seed in seeds:
        for v in variants:
            v_over, points = resolved[v.name]
            for point in points:
                label = "_".join(f"{k}={val}" for k, val in zip(_short_keys(list(point)).values(), point.values()))
                name = safe_name("_".join(p for p in (v.name, label, f"seed={seed}") if p))
                runs.append(StudyRun(name, v.name, point, seed))
                run_overrides[name] = [*v_over, *(f"{k}={val}" for k, val in point.items()), f"run.seed={seed}"]
    cfg0 = load_config(preset, base).to_dict()
    validation = auto_validation(cfg0) if study.validation == "auto" else study.validation
    tuned = any(len(points) > 1 for _, points in resolved.values())
    tuning = "fixed" if not tuned else ("validation" if validation is not None else "test")
    lrs = {load_config(preset, [*base, *v_over]).train.lr for v_over, _ in resolved.values()}
    plan = StudyPlan(study, preset, base, quick, runs, validation, tuning, benchmark, budget_mafs,
                     lrs.pop() if len(lrs) == 1 else None)
    return plan, plan.sweep(run_overrides)


# ----------------------------------------------------------------------------------------------
# The study folder


def write_study(plan: StudyPlan, sweep: Sweep, out: str | Path) -> Path:
    """Write the sweep folder (every config validated) and ``study.yaml``; writing the same study again is
    a no-op for its runs.

    Raises:
        FileExistsError: ``out`` holds another study or sweep (the message says how to continue it).
        ConfigError: a run's config is invalid.
    """
    out = Path(out)
    validate(sweep)  # every run's config, before anything is written
    existing = out / STUDY_FILE
    text = yaml.safe_dump(plan.to_dict(), sort_keys=False, allow_unicode=True)
    # Under torchrun every rank writes the same files, in any interleaving: refuse only real differences.
    old_study = existing.is_file() and StudyPlan.from_dict(read_yaml(existing)).to_dict() != plan.to_dict()
    old_sweep = (out / SWEEP_FILE).is_file() and read_sweep(out).to_dict() != sweep.to_dict()
    if old_study or old_sweep:
        what = "a different study" if existing.is_file() else "a sweep that is not this study"
        raise FileExistsError(f"{out} already holds {what}; choose another --out, or continue that one with: "
                              f"fif study --out {out} --run")
    atomic_write_text(existing, text)
    write_sweep(sweep, out, subcommand="study")
    return out


def read_plan(out: str | Path) -> StudyPlan:
    """The plan written to study folder ``out``.

    Raises:
        FileNotFoundError: ``out`` is not a study folder.
    """
    path = Path(out) / STUDY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{out} is not a study folder (no {STUDY_FILE}); start one with: fif study NAME --out {out}")
    return StudyPlan.from_dict(read_yaml(path))
