"""A lineage folder: a deployed CLIP, its versions, the recipe its updates follow, and the deployed pointer.

Layout::

    models/acme/
      lineage.json          format, provenance, the update settings, the deployed version, the pointer's history
      recipe.yaml           the resolved fif config every update starts from (model.pretrained = v1.0's weights)
      .lock                 one writer at a time (flock; released by the kernel when a process dies)
      versions/v1.0/        model.safetensors (the base weights) + version.json
      versions/v1.N/        model.safetensors    the deployed weights (a plain open_clip state dict)
                            version.json         status (released | held), parent, metrics, gate, budget, provenance
                            data.json            the update's data: source, entry, content hash, every file's sha256
                            scores.json          the version's scores on datasets its own apply did not score
                                                 (update datasets added later or on other branches): the score table
                            state/               the run checkpoint after the update: what the next update resumes
                            events.jsonl, summary.json, history/   the run's log, summary and merge history so far
      apply/                the apply in progress (apply.json + the run folder it trains in); gone once it ends

A version folder is written under a hidden name and renamed into place: it appears whole or not at all.
The pointer (``lineage.json``) is rewritten atomically after it.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fif.core.io import atomic_write_json, fsync_dir
from fif.core.names import unknown_name_message
from fif.data.registry import get_benchmark
from fif.eval.metrics import geometric_mean, macro_mean
from fif.runner.folder import RunFolderInUseError, RunLock
from fif.update.sources import UpdateData

FORMAT = 1
MANIFEST = "lineage.json"
RECIPE = "recipe.yaml"
VERSIONS = "versions"
APPLY_DIR = "apply"
BASE = "v1.0"
MODEL_FILE = "model.safetensors"
VERSION_FILE = "version.json"
DATA_FILE = "data.json"
STATE_DIR = "state"
SCORES_FILE = "scores.json"
_VERSION = re.compile(r"^v1\.(\d+)$")


class LineageError(ValueError):
    """A lineage command cannot do what it was asked (unknown version, nothing to roll back to, ...)."""


class LineageBusyError(RunFolderInUseError):
    """Another fif process writes in the lineage."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def version_number(name: str) -> int:
    m = _VERSION.match(name)
    if m is None:
        raise LineageError(f"{name!r} is not a version name (v1.0, v1.1, ...)")
    return int(m.group(1))


@dataclass
class Lineage:
    """A lineage folder, read: its manifest and its versions (oldest first)."""

    root: Path
    info: dict[str, Any]
    versions: list[dict[str, Any]]

    @classmethod
    def open(cls, root: str | Path) -> Lineage:
        """Read a lineage folder.

        Raises:
            FileNotFoundError: ``root`` is not a lineage folder (no lineage.json).
        """
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{str(root)!r} is not a lineage folder (no {MANIFEST}); create one with: fif "
                                    f"update init --out {root}")
        info = json.loads(path.read_text())
        found = []
        for d in (root / VERSIONS).iterdir() if (root / VERSIONS).is_dir() else []:
            if _VERSION.match(d.name) and (d / VERSION_FILE).is_file():
                found.append(json.loads((d / VERSION_FILE).read_text()))
        found.sort(key=lambda v: version_number(v["version"]))
        return cls(root, info, found)

    @property
    def deployed(self) -> str:
        return self.info["deployed"]

    @property
    def settings(self) -> dict[str, Any]:
        return self.info["settings"]

    def version(self, name: str) -> dict[str, Any]:
        """The version.json of ``name``.

        Raises:
            LineageError: no such version (with the valid names).
        """
        for v in self.versions:
            if v["version"] == name:
                return v
        raise LineageError(unknown_name_message("version", name, [v["version"] for v in self.versions],
                                                where=f"lineage {str(self.root)!r}"))

    def folder(self, name: str) -> Path:
        return self.root / VERSIONS / name

    def next_name(self) -> str:
        return f"v1.{max(version_number(v['version']) for v in self.versions) + 1}"

    def chain(self, name: str) -> list[str]:
        """The versions from the first update to ``name`` (parents first; v1.0 left out)."""
        out = []
        while name != BASE:
            out.append(name)
            name = self.version(name)["parent"]
        return out[::-1]

    def chain_data(self, name: str) -> list[tuple[str, UpdateData]]:
        """(version, its update's data) for every update in ``name``'s chain, oldest first."""
        return [(v, UpdateData.from_record(json.loads((self.folder(v) / DATA_FILE).read_text())))
                for v in self.chain(name)]

    def updates(self) -> dict[str, tuple[str, UpdateData]]:
        """Every update dataset the lineage knows, released or held, on any branch: name -> (the version that
        introduced it, its data), in the order the versions were made. The fixed set of the score table."""
        out: dict[str, tuple[str, UpdateData]] = {}
        for v in self.versions:
            path = self.folder(v["version"]) / DATA_FILE
            if path.is_file():
                data = UpdateData.from_record(json.loads(path.read_text()))
                out.setdefault(data.name, (v["version"], data))
        return out

    def extra_cells(self, name: str) -> dict[str, dict[str, Any]]:
        """The cells of ``name``'s scores.json: dataset -> {score, role, full, digest, at}."""
        path = self.folder(name) / SCORES_FILE
        return json.loads(path.read_text())["cells"] if path.is_file() else {}

    def row(self, name: str) -> dict[str, float]:
        """Version ``name``'s row of the score table (percent): its own apply's scores, then scores.json's."""
        row = {d: cell["score"] for d, cell in self.extra_cells(name).items()}
        row.update((self.version(name).get("metrics") or {}).get("scores") or {})  # its own run's eval comes first
        return row

    def roles(self) -> dict[str, str]:
        """The score table's columns: the guard sets (eval_only), then the update datasets (adaptation)."""
        return {**{g: "eval_only" for g in self.settings["guard"]}, **{n: "adaptation" for n in self.updates()}}


def fixed_set_point(row: dict[str, float], updates: list[str], guard: list[str]) -> dict[str, Any]:
    """A_KA over the fixed set ``updates`` (every update dataset of the lineage, as the paper scores every
    checkpoint on all adaptation datasets), A_ZS over ``guard`` and their geometric mean GM = sqrt(A_KA * A_ZS);
    a mean is None while one of its cells is missing.

    Returns:
        ``{"a_ka", "a_zs", "gm", "missing": [datasets without a cell]}``.
    """
    missing = [n for n in [*guard, *updates] if n not in row]
    a_ka = macro_mean(row, updates) if updates and not set(updates) & set(missing) else None
    a_zs = macro_mean(row, guard) if not set(guard) & set(missing) else None
    return {"a_ka": a_ka, "a_zs": a_zs, "gm": geometric_mean(a_ka, a_zs), "missing": missing}


def benchmark_doc(lin: Lineage, updates: list[dict[str, Any]]) -> dict[str, Any]:
    """The lineage benchmark's YAML: the guard sets (eval_only) and the pool from the recipe's benchmark, then
    one adaptation dataset per update (``updates``: their entries)."""
    s, bench = lin.settings, lin.info["benchmark"]
    options = {"options": lin.info.get("benchmark_options") or {}}
    inner = get_benchmark(bench, **options["options"])
    entries = []
    for name in s["guard"]:
        spec = inner.spec(name)
        entries.append({"name": name, "source": "benchmark", "location": f"{bench}:{name}", "role": "eval_only",
                        "kind": spec.kind, "primer": spec.primer, "templates": list(spec.templates), "options": options})
    if s.get("pool"):
        entries.append({"name": s["pool"], "source": "benchmark", "location": f"{bench}:{s['pool']}",
                        "role": "pretraining", "kind": "retrieval", "options": options})
    return {"name": lin.root.name, **({"pool": s["pool"]} if s.get("pool") else {}), "datasets": entries + updates}


def lock(root: Path) -> RunLock:
    """Take the lineage's writer lock.

    Raises:
        LineageBusyError: another fif process holds it (its pid is named).
    """
    try:
        return RunLock(root).acquire()
    except RunFolderInUseError as e:
        holder = (root / RunLock.NAME).read_text().strip() if (root / RunLock.NAME).is_file() else "?"
        raise LineageBusyError(
            f"lineage {str(root)!r} is in use by another fif process (pid {holder}); wait for it to finish (an "
            f"interrupted `fif update apply` resumes where it stopped when run again)"
        ) from e


def write_version(lineage: Lineage, name: str, files: dict[str, Path], record: dict[str, Any],
                  data: UpdateData | None = None) -> Path:
    """Release a version folder atomically: build it under a hidden name, then rename it into place.

    Args:
        files: name in the version folder -> source file or folder (copied).
        record: the version.json.
        data: the update's data (written to data.json).

    Returns:
        The version's folder.
    """
    final = lineage.folder(name)
    tmp = final.with_name(f".{name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for dest, src in files.items():
        if src.is_dir():
            shutil.copytree(src, tmp / dest)
        else:
            shutil.copyfile(src, tmp / dest)
    if data is not None:
        atomic_write_json(tmp / DATA_FILE, data.record())
    atomic_write_json(tmp / VERSION_FILE, record)
    fsync_dir(tmp)
    tmp.rename(final)
    fsync_dir(final.parent)
    return final


def set_pointer(lineage: Lineage, deployed: str, action: str, reason: str = "") -> None:
    """Point the lineage at ``deployed`` and record why (atomic)."""
    info = dict(lineage.info)
    info["pointer_log"] = [*info.get("pointer_log", []), {"at": now(), "deployed": deployed, "action": action,
                                                          "was": info.get("deployed"), "reason": reason}]
    info["deployed"] = deployed
    atomic_write_json(lineage.root / MANIFEST, info)
    lineage.info = info


def rewrite_version(lineage: Lineage, name: str, record: dict[str, Any]) -> None:
    atomic_write_json(lineage.folder(name) / VERSION_FILE, record)
    lineage.versions = [record if v["version"] == name else v for v in lineage.versions]


# ----------------------------------------------------------------------------------------------
# log / show / diff / rollback / promote / export


def log_rows(root: str | Path) -> list[dict[str, Any]]:
    """One row per version, oldest first: version, status, parent, data, budget, deployed, and the metrics:
    ``a_ka`` / ``gm`` over the version's own updates so far (what its apply measured), ``a_ka_all`` / ``gm_all``
    over every update dataset of the lineage (the fixed set, ``update_sets``; None while a cell is missing, listed
    in ``missing``: ``fif update eval`` fills them) and ``a_zs`` over the guard sets.

    Raises:
        FileNotFoundError: not a lineage folder.
    """
    lin = Lineage.open(root)
    updates, guard = list(lin.updates()), list(lin.settings["guard"])
    rows = []
    for v in lin.versions:
        m = v.get("metrics") or {}
        fixed = fixed_set_point(lin.row(v["version"]), updates, guard)
        rows.append({"version": v["version"], "status": v["status"], "parent": v.get("parent"),
                     "deployed": v["version"] == lin.deployed, "data": (v.get("data") or {}).get("source"),
                     "a_ka_all": fixed["a_ka"], "a_ka": m.get("a_ka"), "a_zs": m.get("a_zs", fixed["a_zs"]),
                     "gm_all": fixed["gm"], "gm": m.get("gm"), "update_sets": updates, "missing": fixed["missing"],
                     "steps": (v.get("budget") or {}).get("steps"),
                     "spent_mafs": (v.get("budget") or {}).get("spent_mafs"), "created": v.get("created")})
    return rows


def show(root: str | Path, version: str | None = None) -> dict[str, Any]:
    """Everything recorded about ``version`` (default: the deployed one), with ``deployed``, ``chain``, its row of
    the score table (``table``: dataset -> percent) and the fixed-set point (``fixed``: a_ka, a_zs, gm, missing).

    Raises:
        LineageError: no such version.
    """
    lin = Lineage.open(root)
    name = version or lin.deployed
    row = lin.row(name)
    return {**lin.version(name), "deployed": name == lin.deployed, "chain": lin.chain(name),
            "table": {d: row[d] for d in lin.roles() if d in row},
            "fixed": fixed_set_point(row, list(lin.updates()), list(lin.settings["guard"]))}


def diff(root: str | Path, a: str, b: str) -> list[dict[str, Any]]:
    """Per-dataset scores of versions ``a`` and ``b`` (percent, their rows of the score table) and ``b - a``;
    None where one was not scored.

    Raises:
        LineageError: no such version, or one with no score yet.
    """
    lin = Lineage.open(root)
    sa, sb = (_scores(lin, v) for v in (a, b))
    roles = lin.roles()
    for v in (a, b):
        roles.update({n: r for n, r in ((lin.version(v).get("metrics") or {}).get("roles") or {}).items()
                      if n not in roles})
    rows = []
    for name in dict.fromkeys([*[n for n in roles if n in sa or n in sb], *sa, *sb]):
        x, y = sa.get(name), sb.get(name)
        rows.append({"dataset": name, "role": roles.get(name), a: x, b: y,
                     "delta": None if x is None or y is None else round(y - x, 4)})
    return rows


def _scores(lin: Lineage, name: str) -> dict[str, float]:
    row = lin.row(name)
    if not row:
        raise LineageError(f"version {name} has no scores yet (the base model is measured by the first update, or "
                           f"by fif update eval {lin.root})")
    return row


def rollback(root: str | Path, to: str | None = None, reason: str = "") -> str:
    """Point the lineage back at a released version (default: the deployed version's parent).

    Returns:
        The version deployed now.

    Raises:
        LineageError: the target is held, unknown, or there is nothing before v1.0.
        LineageBusyError: another process writes in the lineage.
    """
    root = Path(root)
    with lock(root):
        lin = Lineage.open(root)
        if to is None:
            if lin.deployed == BASE:
                raise LineageError("the deployed version is v1.0, the base model; there is nothing to roll back to")
            to = lin.version(lin.deployed)["parent"]
        target = lin.version(to)
        if target["status"] not in ("released", "base"):
            raise LineageError(f"{to} is a {target['status']} candidate, never released; promote it instead "
                               f"(fif update promote {root} {to} --reason ...)")
        set_pointer(lin, to, "rollback", reason)
        return to


def promote(root: str | Path, version: str, reason: str) -> str:
    """Release a held candidate by hand and deploy it, recording who-knows-why in ``reason``.

    Raises:
        LineageError: ``version`` is not held, or no reason was given.
        LineageBusyError: another process writes in the lineage.
    """
    if not reason or not reason.strip():
        raise LineageError("promoting a candidate the retention gate held needs a reason (--reason '...')")
    root = Path(root)
    with lock(root):
        lin = Lineage.open(root)
        record = dict(lin.version(version))
        if record["status"] != "held":
            raise LineageError(f"{version} is {record['status']}, not a held candidate; to deploy it use fif update "
                               f"rollback {root} --to {version}")
        record.update(status="released", promoted={"at": now(), "reason": reason})
        rewrite_version(lin, version, record)
        set_pointer(lin, version, "promote", reason)
        return version


def export(root: str | Path, version: str | None, out: str | Path) -> Path:
    """Write ``version``'s weights (default: the deployed one) as a plain open_clip ``.safetensors`` file.

    Raises:
        LineageError: no such version.
        FileExistsError: ``out`` exists.
    """
    lin = Lineage.open(root)
    name = version or lin.deployed
    lin.version(name)
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose another path or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.copyfile(lin.folder(name) / MODEL_FILE, tmp)
    tmp.rename(out)
    return out
