"""Sweeps: a grid (or a YAML file) of config overrides expanded into named runs, one run folder each.

A sweep folder holds::

    sweep.yaml          the expanded sweep: preset, common overrides, every run's name and overrides
    configs/<name>.yaml each run's resolved, validated config (what `fif run --preset` is given)
    commands.txt        one idempotent command per run (start, resume or skip it), for any scheduler
    <name>/             each run's own run folder (config.yaml, events.jsonl, summary.json, ...)
    slurm.sh            optionally, a SLURM array script (one array task per run)

Every config is validated when the sweep is expanded, so a typo fails before anything is submitted.
A run's state is read from its folder (:func:`run_state`): ``new``, ``started`` (resumable) or
``finished``, so running a sweep again with ``resume`` skips finished runs and continues the others.

A sweep file (YAML)::

    preset: mini
    overrides: [budget.ft_steps=200]      # every run
    grid:                                 # the Cartesian product of these axes
      method.name: [finetune, lnfit]
      train.lr: [1e-4, 5e-4]
    runs:                                 # optional variants, each crossed with the grid
      - {name: lora4, overrides: [method.name=lora, method.rank=4]}
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from fif.config import dump_yaml, load_config, read_yaml
from fif.core.io import atomic_write_text
from fif.core.typed import ConfigError
from fif.runner import stream as runner
from fif.runner.state import is_finished

SWEEP_FILE = "sweep.yaml"
CONFIG_DIR = "configs"
COMMANDS_FILE = "commands.txt"
STATES = ("new", "started", "finished")


@dataclass
class SweepRun:
    """One run of a sweep: its folder name and the overrides that make it (on top of the common ones)."""

    name: str
    overrides: list[str]


@dataclass
class Sweep:
    """An expanded sweep: ``preset`` + ``overrides`` (every run) + each run's own overrides."""

    preset: str
    overrides: list[str] = field(default_factory=list)
    runs: list[SweepRun] = field(default_factory=list)

    def run(self, name: str) -> SweepRun:
        for r in self.runs:
            if r.name == name:
                return r
        raise KeyError(f"sweep has no run {name!r}; its runs: {', '.join(r.name for r in self.runs)}")

    def run_overrides(self, run: SweepRun) -> list[str]:
        return [*self.overrides, *run.overrides]

    def to_dict(self) -> dict[str, Any]:
        return {"preset": self.preset, "overrides": list(self.overrides),
                "runs": [{"name": r.name, "overrides": list(r.overrides)} for r in self.runs]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Sweep":
        return cls(data["preset"], list(data.get("overrides") or []),
                   [SweepRun(r["name"], list(r["overrides"])) for r in data["runs"]])


# ----------------------------------------------------------------------------------------------
# Expansion


def split_values(text: str) -> list[str]:
    """``'a,b'`` → ['a', 'b'], splitting on commas outside brackets, braces and quotes
    (``'[x,y],[z]'`` → ['[x,y]', '[z]'])."""
    values, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            values.append(text[start:i].strip())
            start = i + 1
    values.append(text[start:].strip())
    return [v for v in values if v]


def parse_grid(text: str) -> tuple[str, list[str]]:
    """``'train.lr=1e-4,5e-4'`` → ('train.lr', ['1e-4', '5e-4']).

    Raises:
        ConfigError: not of the form ``section.key=v1,v2,...``.
    """
    key, sep, raw = text.partition("=")
    values = split_values(raw)
    if not sep or not key.strip() or not values:
        raise ConfigError([f"--grid {text!r} is not of the form section.key=value1,value2,..."])
    return key.strip(), values


def value_text(value: Any) -> str:
    """A YAML value as override text (strings as they are, e.g. ``1e-4``; lists and maps in flow style)."""
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Name part of each grid key: its last component (``method.name`` → ``method``), the whole key when
    two keys would share it."""
    short = {k: ("method" if k == "method.name" else k.rsplit(".", 1)[-1]) for k in keys}
    clashes = {s for s in short.values() if list(short.values()).count(s) > 1}
    return {k: (k if s in clashes else s) for k, s in short.items()}


def safe_name(text: str) -> str:
    """A folder name: letters, digits and ``._=+-`` kept, anything else a ``-`` (collapsed, trimmed)."""
    name = re.sub(r"[^A-Za-z0-9._=+-]+", "-", text).strip("-.")
    return name or "run"


def _value_part(value: str) -> str:
    """A value in a run name: outer brackets and quotes dropped, other unsafe characters a ``-`` (signs kept)."""
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", value.strip("[]{}()'\" ")) or "-"


def expand(
    preset: str,
    grid: Sequence[tuple[str, Sequence[str]]] = (),
    overrides: Sequence[str] = (),
    variants: Sequence[SweepRun] = (),
) -> Sweep:
    """Every variant × every point of the grid, as named runs (the first axis varies slowest).

    A run is named by the values it sets: ``<short key>=<value>`` joined with ``_`` (e.g.
    ``method=lnfit_lr=1e-4``), after its variant's name; a name taken twice gets ``-2``, ``-3``, ...

    Raises:
        ConfigError: a grid key given twice, or an empty axis.
    """
    keys = [k for k, _ in grid]
    problems = [f"--grid {k}: given twice" for k in sorted({k for k in keys if keys.count(k) > 1})]
    problems += [f"--grid {k}: no values" for k, values in grid if not values]
    if problems:
        raise ConfigError(problems)
    short = _short_keys(keys)
    runs: list[SweepRun] = []
    taken: set[str] = set()
    for variant in variants or [SweepRun("", [])]:
        for point in itertools.product(*[values for _, values in grid]):
            parts = [variant.name] if variant.name else []
            parts += [f"{short[k]}={_value_part(v)}" for k, v in zip(keys, point)]
            name = base = safe_name("_".join(parts) if parts else "run")
            n = 1
            while name in taken:
                n += 1
                name = f"{base}-{n}"
            taken.add(name)
            runs.append(SweepRun(name, [*variant.overrides, *(f"{k}={v}" for k, v in zip(keys, point))]))
    return Sweep(preset, list(overrides), runs)


def load_sweep_file(path: str | Path, preset: str | None = None, overrides: Sequence[str] = ()) -> Sweep:
    """Expand a sweep YAML file (see the module docstring); ``preset``/``overrides`` from the command line
    replace the file's preset and come after its overrides.

    Raises:
        ConfigError: unknown keys or malformed entries, listing every problem.
    """
    data = read_yaml(path)
    problems = [f"{path}: unknown key {k!r}; valid: preset, overrides, grid, runs"
                for k in data if k not in ("preset", "overrides", "grid", "runs")]
    grid = data.get("grid") or {}
    if not isinstance(grid, dict):
        problems.append(f"{path}: grid must map section.key to a list of values")
        grid = {}
    axes = [(str(k), [value_text(v) for v in (vs if isinstance(vs, list) else [vs])]) for k, vs in grid.items()]
    variants = []
    for i, entry in enumerate(data.get("runs") or []):
        if not isinstance(entry, dict) or not isinstance(entry.get("overrides", []), list):
            problems.append(f"{path}: runs[{i}] must be a mapping with a name and a list of overrides")
            continue
        name = safe_name(str(entry.get("name") or f"variant{i}"))
        variants.append(SweepRun(name, [str(o) for o in entry.get("overrides", [])]))
    file_overrides = data.get("overrides") or []
    if not isinstance(file_overrides, list):
        problems.append(f"{path}: overrides must be a list of section.key=value")
        file_overrides = []
    if problems:
        raise ConfigError(problems)
    return expand(preset or data.get("preset") or "mini", axes, [*map(str, file_overrides), *overrides], variants)


def validate(sweep: Sweep) -> dict[str, Any]:
    """Every run's resolved config, by name.

    Raises:
        ConfigError: every problem of every run at once, each prefixed with the run's name.
    """
    configs, problems = {}, []
    for run in sweep.runs:
        try:
            configs[run.name] = load_config(sweep.preset, sweep.run_overrides(run))
        except ConfigError as e:
            problems += [f"{run.name}: {p}" for p in e.problems]
    if problems:
        raise ConfigError(problems, source=f"sweep of {len(sweep.runs)} runs")
    return configs


# ----------------------------------------------------------------------------------------------
# The sweep folder


def write_sweep(sweep: Sweep, out: str | Path, command_prefix: Sequence[str] | None = None,
                subcommand: str = "sweep") -> Path:
    """Validate every run and write the sweep folder's ``sweep.yaml``, ``configs/`` and ``commands.txt``.

    Writing the same sweep again is a no-op for the runs (their folders are kept). ``subcommand`` is the fif
    command that runs one run of the folder in ``commands.txt`` (``study`` for a study's folder, which also
    scores the run's validation signal).

    Raises:
        ConfigError: a run's config is invalid.
        FileExistsError: ``out`` holds a different sweep.
    """

    out = Path(out)
    configs = validate(sweep)
    existing = out / SWEEP_FILE
    if existing.is_file():
        old = Sweep.from_dict(read_yaml(existing))
        if old.to_dict() != sweep.to_dict():
            raise FileExistsError(
                f"{out} already holds a different sweep ({len(old.runs)} runs, preset {old.preset!r}); choose another "
                f"--out, or continue that one with: fif sweep --out {out} --run --resume"
            )
    (out / CONFIG_DIR).mkdir(parents=True, exist_ok=True)
    for name, cfg in configs.items():
        atomic_write_text(out / CONFIG_DIR / f"{name}.yaml", dump_yaml(cfg))
    atomic_write_text(existing, yaml.safe_dump(sweep.to_dict(), sort_keys=False))
    lines = [shlex.join([*(command_prefix or fif_command()), subcommand, "--out", str(out), "--only", r.name, "--run-here", "--resume"])
             for r in sweep.runs]
    atomic_write_text(out / COMMANDS_FILE, "\n".join(lines) + "\n")
    return out


def read_sweep(out: str | Path) -> Sweep:
    """The sweep written to folder ``out``.

    Raises:
        FileNotFoundError: ``out`` is not a sweep folder.
    """
    path = Path(out) / SWEEP_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{out} is not a sweep folder (no {SWEEP_FILE}); expand one with fif sweep --grid/--file")
    return Sweep.from_dict(read_yaml(path))


def run_state(run_dir: str | Path) -> str:
    """``finished`` (summary written, last event run_end), ``started`` (a run folder: resume it) or ``new``."""

    run_dir = Path(run_dir)
    if is_finished(run_dir):
        return "finished"
    if (run_dir / "config.yaml").is_file():
        return "started"
    return "new"


def sweep_run_folders(path: str | Path) -> list[Path] | None:
    """The run folders of sweep folder ``path`` that have an event log (for reports); None if ``path``
    is not a sweep folder."""
    path = Path(path)
    if not (path / SWEEP_FILE).is_file():
        return None
    return [path / r.name for r in read_sweep(path).runs if (path / r.name / "events.jsonl").is_file()]


@dataclass
class RunOutcome:
    """What :func:`run_sweep` did with one run: ``ran``, ``resumed`` or ``skipped``; its final metrics."""

    name: str
    action: str
    out_dir: Path
    final: dict[str, Any] = field(default_factory=dict)


def run_sweep(
    out: str | Path,
    only: Sequence[str] = (),
    resume: bool = False,
    on_start: Callable[[str, str], None] | None = None,
    events_for: Callable[[str], Callable[[dict], None] | None] | None = None,
    progress: bool = False,
) -> list[RunOutcome]:
    """Run a written sweep's runs here, one after another (each its own :func:`fif.runner.stream.run`).

    Under torchrun every rank runs this; each run is then data-parallel (its config's train.distributed).

    Args:
        out: the sweep folder (see :func:`write_sweep`).
        only: run just these names (default all).
        resume: skip finished runs and resume started ones; without it an existing run folder is an error.
        on_start: called with (name, action) before each run.
        events_for: gives each run's ``on_event`` (see :func:`fif.runner.stream.run`) from its name.
        progress: show tqdm progress bars.

    Raises:
        KeyError: a name in ``only`` is not in the sweep.
        RunFolderError: a run folder exists and ``resume`` is False.
    """

    out = Path(out)
    sweep = read_sweep(out)
    runs = [sweep.run(n) for n in only] if only else sweep.runs
    outcomes = []
    for r in runs:
        run_dir = out / r.name
        kwargs = {"on_event": events_for(r.name) if events_for else None, "progress": progress}
        state = run_state(run_dir) if resume else "new"
        action = {"finished": "skipped", "started": "resumed", "new": "ran"}[state]
        if on_start is not None:
            on_start(r.name, action)
        if state == "finished":

            final = json.loads((run_dir / "summary.json").read_text()).get("final", {})
        elif state == "started":
            final = runner.resume(run_dir, **kwargs).final
        else:
            cfg = load_config(str(out / CONFIG_DIR / f"{r.name}.yaml"))
            final = runner.run(cfg, out_dir=run_dir, **kwargs).final
        outcomes.append(RunOutcome(r.name, action, run_dir, final))
    return outcomes


# ----------------------------------------------------------------------------------------------
# Cluster scripts


def fif_command() -> list[str]:
    """How to call fif from a script: this Python (an absolute path) with ``-m fif``."""
    return [str(Path(sys.executable).absolute()), "-m", "fif"]


@dataclass
class SlurmOptions:
    """The resources of each array task (one run); None leaves a setting to the cluster's defaults."""

    gpus_per_task: int = 1
    nodes: int = 1
    cpus_per_task: int | None = None
    mem: str | None = None
    time: str | None = None
    partition: str | None = None
    account: str | None = None
    max_parallel: int | None = None
    setup: list[str] = field(default_factory=list)  # shell lines before the run (module load, venv activate)


def slurm_script(sweep: Sweep, out: str | Path, opts: SlurmOptions, python: str | None = None,
                 workdir: str | Path | None = None, subcommand: str = "sweep") -> str:
    """A SLURM array script: array task i runs (or resumes, or skips) run i of the sweep (with ``fif
    SUBCOMMAND``: ``sweep``, or ``study`` for a study's folder).

    Each task runs ``fif sweep --out OUT --only NAME --run-here --resume`` (``--run-here`` is ``--run``, spelled
    so that torchrun's parser does not take it for its ``--run-path``): one process per GPU through torchrun
    (multi-node: torchrun's c10d rendezvous on the first node). SLURM sends SIGTERM two minutes before the
    time limit; fif checkpoints and stops, and submitting the script again continues every unfinished run.

    Raises:
        ValueError: non-positive GPU or node counts.
    """
    if opts.gpus_per_task < 1 or opts.nodes < 1:
        raise ValueError(f"--gpus-per-task ({opts.gpus_per_task}) and --nodes ({opts.nodes}) must be >= 1")
    out = Path(out).absolute()
    python = python or str(Path(sys.executable).absolute())
    workdir = Path(workdir or Path.cwd()).absolute()
    n = len(sweep.runs)
    array = f"0-{n - 1}" + (f"%{opts.max_parallel}" if opts.max_parallel else "")
    sbatch = [
        f"--job-name=fif-{safe_name(out.name)}", f"--array={array}", f"--nodes={opts.nodes}", "--ntasks-per-node=1",
        f"--gpus-per-node={opts.gpus_per_task}", f"--output={out}/slurm-%A_%a.out", "--signal=TERM@120",
    ]
    for flag, value in (("cpus-per-task", opts.cpus_per_task), ("mem", opts.mem), ("time", opts.time),
                        ("partition", opts.partition), ("account", opts.account)):
        if value is not None:
            sbatch.append(f"--{flag}={value}")
    fif_args = ["-m", "fif", subcommand, "--out", str(out), "--only", '"$NAME"', "--run-here", "--resume", "--no-progress"]
    if opts.gpus_per_task == 1 and opts.nodes == 1:
        launch = f"srun {shlex.quote(python)} " + " ".join(fif_args)
    else:
        rdzv = (
            "--standalone" if opts.nodes == 1 else
            f"--nnodes={opts.nodes} --rdzv_backend=c10d --rdzv_id=$SLURM_JOB_ID --rdzv_endpoint=$MASTER_ADDR:29500"
        )
        launch = f"srun {shlex.quote(python)} -m torch.distributed.run {rdzv} --nproc_per_node={opts.gpus_per_task} " + " ".join(fif_args)
    names = " ".join(shlex.quote(r.name) for r in sweep.runs)
    lines = [
        "#!/bin/bash",
        f"# fif {subcommand} {out}: {n} runs, one per array task. Submit with sbatch; submitting it again",
        "# continues unfinished runs and skips finished ones.",
        *(f"#SBATCH {s}" for s in sbatch),
        "set -euo pipefail",
        f"cd {shlex.quote(str(workdir))}",
        *opts.setup,
        f"NAMES=({names})",
        'NAME="${NAMES[$SLURM_ARRAY_TASK_ID]}"',
    ]
    if opts.nodes > 1:
        lines.append('MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"')
    lines.append(launch)
    return "\n".join(lines) + "\n"


def multi_gpu_overrides(opts: SlurmOptions) -> list[str]:
    """The overrides a run needs for ``opts`` (data-parallel when a task has several GPUs)."""
    return ["train.distributed=ddp"] if opts.gpus_per_task * opts.nodes > 1 else []
