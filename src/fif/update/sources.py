"""An update's data: from what the user names (``--data SOURCE``) to a dataset entry of the lineage's benchmark,
and the content hash that lets a later update trust it as buffer data.

SOURCE is one of:

- a folder in FiF's layout, as ``fif data materialize`` writes it (``DIR/NAME/`` beside ``DIR/NAME_classnames.json``);
- a class-folder tree (``DIR/train/<class>/*.png`` and ``DIR/test/<class>/...``);
- a caption manifest with a ``{split}`` placeholder (``data/{split}.csv``) or a folder holding ``train.csv`` and
  ``test.csv`` (or ``.jsonl``);
- ``BENCHMARK:DATASET``: a dataset of a registered benchmark (``mini:mini_digits``) or of a benchmark YAML
  (``/data/bench.yaml:birds``; a YAML with a single adaptation dataset may be named alone).

``--concepts A,B``: only those classes of SOURCE (not of a caption manifest, which has none): the dataset entry
keeps them (``classes:``, see :mod:`fif.data.user_benchmark`) and the hash covers only their samples' files.

Earlier updates' data is referenced, never copied: each version records the files it was trained on with their
sha256 (``data.json``), and :func:`verify` checks them before any later update trains on them as its buffer.
Generated data (a procedural benchmark such as ``mini``) has no files; its hash is taken over the generated
splits' pixels, captions and labels.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from fif.core.io import sha256_file
from fif.data.registry import Benchmark, get_benchmark
from fif.data.sources import manifest as manifest_source
from fif.data.sources.fif_layout import read_prompts
from fif.data.specs import InMemorySplit

SPLITS = ("train", "test")


class LineageDataError(ValueError):
    """An update's data is missing, changed since its version was made, or cannot be read as a dataset."""


@dataclass
class UpdateData:
    """One update's data as the lineage records it.

    Attributes:
        name: the dataset's name in the lineage's benchmark (unique in the lineage).
        source: SOURCE as the user gave it.
        entry: its dataset entry in the lineage's benchmark YAML (absolute paths).
        digest: sha256 over ``files`` (or over the generated splits).
        files: relative path -> sha256 of every file the data is made of (empty for generated data).
        root: the folder ``files`` are relative to (None for generated data).
        concepts: the classes the update keeps (``--concepts``; empty: all of them).
    """

    name: str
    source: str
    entry: dict[str, Any]
    digest: str
    files: dict[str, str] = field(default_factory=dict)
    root: str | None = None
    concepts: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """What a version's ``data.json`` holds."""
        return {"name": self.name, "source": self.source, "entry": self.entry, "digest": self.digest,
                "root": self.root, "files": self.files, **({"concepts": self.concepts} if self.concepts else {})}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> UpdateData:
        return cls(data["name"], data["source"], data["entry"], data["digest"], dict(data.get("files") or {}),
                   data.get("root"), list(data.get("concepts") or []))


def resolve_source(text: str, taken: set[str], recipe_benchmark: str, recipe_options: dict,
                   concepts: list[str] | None = None) -> UpdateData:
    """Turn ``--data SOURCE`` into the update's dataset entry and hash its content.

    Args:
        text: SOURCE (see the module docstring).
        taken: dataset names the lineage already uses (a repeated name gets ``_2``, ``_3``, ...).
        recipe_benchmark / recipe_options: the recipe's ``data.benchmark`` and ``data.options``: a
            ``BENCHMARK:DATASET`` of that benchmark is built with the same options.
        concepts: keep only these classes of SOURCE (None or empty: all).

    Returns:
        The update's data, hashed.

    Raises:
        LineageDataError: SOURCE is none of the accepted forms, or its data cannot be read, or ``concepts``
            names a class SOURCE does not have (or SOURCE has no classes).
    """
    path = Path(text).expanduser()
    if path.is_dir():
        name, entry, root, members = _folder_entry(path.resolve())
    elif "{split}" in text or (path.is_file() and path.suffix.lower() in manifest_source.FORMATS):
        name, entry, root, members = _manifest_entry(text)
    elif path.is_file() and path.suffix.lower() in (".yaml", ".yml"):
        return _benchmark_entry(str(path.resolve()), _only_adaptation(path), taken, {}, None, concepts)
    elif ":" in text:
        bench, _, dataset = text.rpartition(":")
        if bench.lower().endswith((".yaml", ".yml")):
            bench = str(Path(bench).expanduser().resolve())
        return _benchmark_entry(bench, dataset, taken, recipe_options if bench == recipe_benchmark else {}, text,
                                concepts)
    else:
        raise LineageDataError(
            f"--data {text!r}: no such folder or file, and not BENCHMARK:DATASET. Give a folder that `fif data "
            f"materialize` wrote (DIR/NAME), a class-folder tree (DIR/train/<class>/...), a caption manifest "
            f"(DIR/{{split}}.csv), a benchmark YAML, or BENCHMARK:DATASET such as mini:mini_digits"
        )
    name = _unique(name, taken)
    if concepts:
        return with_concepts(UpdateData(name, text, {**entry, "name": name}, "", {}, str(root)), concepts)
    files = _hash_tree(root, members)
    return UpdateData(name, text, {**entry, "name": name}, _digest_files(files), files, str(root))


def _folder_entry(path: Path) -> tuple[str, dict, Path, list[Path]]:
    """A FiF-layout folder (``DIR/NAME`` + ``DIR/NAME_*.json``) or a class-folder tree (``DIR/{train,test}/``)."""
    meta = sorted(path.parent.glob(f"{path.name}_*.json"))
    if (path.parent / f"{path.name}_classnames.json").is_file():
        entry = {"source": "fif", "location": str(path), "role": "adaptation", "kind": "classification",
                 **(read_prompts(path) or {})}  # the prompts `fif data materialize` saved, if any
        return path.name, entry, path.parent, [path, *meta]
    if all((path / s).is_dir() for s in SPLITS):
        entry = {"source": "folder", "location": str(path), "role": "adaptation", "kind": "classification"}
        return path.name, entry, path, [path]
    for fmt in manifest_source.FORMATS:
        if all((path / f"{s}{fmt}").is_file() for s in SPLITS):
            return _manifest_entry(str(path / f"{{split}}{fmt}"))
    raise LineageDataError(
        f"--data {str(path)!r}: a folder, but neither FiF's layout (no {path.name}_classnames.json beside it), nor "
        f"a class-folder tree (no train/ and test/ inside), nor a caption manifest (no train.csv / test.csv inside)"
    )


def _manifest_entry(text: str) -> tuple[str, dict, Path, list[Path]]:
    files = [Path(text.replace("{split}", s)).expanduser().resolve() for s in SPLITS]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise LineageDataError(f"--data {text!r}: the caption manifest {missing[0]} does not exist (train and test "
                               "manifests are both needed)")
    root = files[0].parent
    location = str(Path(text).expanduser().resolve()) if "{split}" in text else None
    entry = {"source": "manifest", "role": "adaptation", "kind": "classification",
             **({"location": location} if location else {"splits": {s: str(f) for s, f in zip(SPLITS, files)}})}
    name = root.name if "{split}" in Path(text).name else files[0].stem
    return name, entry, root, [root]


def _only_adaptation(path: Path) -> str:
    bench = get_benchmark(str(path.resolve()))
    names = [s.name for s in bench.adaptation]
    if len(names) != 1:
        raise LineageDataError(f"--data {str(path)!r}: the benchmark has {len(names)} adaptation datasets "
                               f"({', '.join(names)}); name one as {path}:DATASET")
    return names[0]


def _benchmark_entry(bench_name: str, dataset: str, taken: set[str], options: dict,
                     given: str | None = None, concepts: list[str] | None = None) -> UpdateData:
    given = given or f"{bench_name}:{dataset}"
    try:
        bench = get_benchmark(bench_name, **options)
        spec = bench.spec(dataset)
    except (KeyError, TypeError) as e:
        raise LineageDataError(f"--data {given!r}: {e.args[0] if e.args else e}") from e
    if spec.role != "adaptation":
        raise LineageDataError(f"--data {given!r}: {dataset} is a {spec.role} dataset of {bench.name}; updates "
                               f"train on adaptation datasets ({', '.join(s.name for s in bench.adaptation)})")
    name = _unique(spec.name, taken)
    entry = {"name": name, "source": "benchmark", "location": f"{bench_name}:{dataset}", "role": "adaptation",
             "kind": spec.kind, "primer": spec.primer, "templates": list(spec.templates),
             "options": {"options": dict(options)}}
    if concepts:
        return with_concepts(UpdateData(name, given, entry, "", {}, None), concepts)
    digest, files, root = benchmark_digest(bench, dataset)
    return UpdateData(name, given, entry, digest, files, root)


def with_concepts(data: UpdateData, concepts: list[str]) -> UpdateData:
    """``data`` restricted to the classes ``concepts`` (kept in the source's class order), hashed over their
    samples only: their files (and a FiF layout's metadata), or their generated pixels, labels and captions.

    Raises:
        LineageDataError: SOURCE is a caption manifest or has no classes, or a concept is not one of its classes
            (naming it, the closest class and a few of the others).
    """
    entry = data.entry
    if entry.get("source") == "manifest":
        raise LineageDataError(f"--concepts: --data {data.source!r} is a caption manifest; its samples carry "
                               "captions, not classes to choose from. Update with the whole manifest, or give a "
                               "class-folder tree, a `fif data materialize` folder or BENCHMARK:DATASET")
    known = _whole(entry).spec(data.name).classnames
    if entry.get("kind") != "classification" or not known:
        raise LineageDataError(f"--concepts: --data {data.source!r} has no classes to choose from")
    unknown = [c for c in concepts if c not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1, cutoff=0.5)
        raise LineageDataError(
            f"--concepts: {', '.join(repr(c) for c in unknown)} {'is' if len(unknown) == 1 else 'are'} not a class of "
            f"{data.source}" + (f" (did you mean {close[0]!r}?)" if close else "") + f"; its {len(known)} classes "
            f"include {', '.join(known[:6])}{', ...' if len(known) > 6 else ''}"
        )
    chosen = [c for c in known if c in concepts]
    entry = {**entry, "classes": chosen}
    paths, content = concept_files(entry)
    if not paths:
        return UpdateData(data.name, data.source, entry, content, {}, None, chosen)
    root = Path(data.root) if data.root and all(Path(data.root) in p.parents for p in paths) else \
        Path(os.path.commonpath(paths))
    files = {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(paths)}
    return UpdateData(data.name, data.source, entry, _digest_files(files), files, str(root), chosen)


def _whole(entry: dict[str, Any]) -> Benchmark:
    """A benchmark holding the dataset of ``entry`` with all its classes (``classes:`` left out)."""
    whole = {k: v for k, v in entry.items() if k != "classes"}
    with tempfile.TemporaryDirectory() as tmp:  # the YAML is read at once; every path in it is absolute
        path = Path(tmp) / "benchmark.yaml"
        path.write_text(yaml.safe_dump({"datasets": [whole]}))
        try:
            return get_benchmark(str(path))
        except (KeyError, ValueError) as e:
            raise LineageDataError(f"{entry.get('location')}: cannot read it as a dataset ({e})") from e


def concept_files(entry: dict[str, Any]) -> tuple[list[Path], str]:
    """The files the samples of ``entry["classes"]`` are read from (with a FiF layout's metadata files), or for
    generated data ([], the sha256 of those samples' pixels, labels and captions).

    Raises:
        LineageDataError: the data is neither files nor generated in memory.
    """
    bench, name = _whole(entry), entry["name"]
    names = bench.spec(name).classnames
    ids = [names.index(c) for c in entry["classes"]]
    paths: list[Path] = []
    h = hashlib.sha256()
    for split in SPLITS:
        data = bench.load(name, split)
        keep = np.flatnonzero(np.isin(data.targets, ids))
        if isinstance(data, InMemorySplit):
            h.update(split.encode())
            h.update(data.pixels[torch.as_tensor(keep)].contiguous().numpy().tobytes())
            h.update(data.targets[keep].tobytes())
            h.update(json.dumps([data.texts[i] for i in keep]).encode())
        elif (listed := getattr(data, "paths", None)) is not None:  # FiF layout: relative to its root; else absolute
            paths += [Path(getattr(data, "root", "")) / listed[i] for i in keep]
        else:
            raise LineageDataError(f"{entry.get('location')}: its {split} split is neither files nor generated data "
                                   "fif can hash")
    if paths and entry.get("source") == "fif":
        prefix = Path(entry["location"])
        paths += sorted(prefix.parent.glob(f"{prefix.name}_*.json"))
    return [p.resolve() for p in dict.fromkeys(paths)], h.hexdigest()


def benchmark_digest(bench: Benchmark, dataset: str) -> tuple[str, dict[str, str], str | None]:
    """(digest, files, root) of a registered benchmark's dataset: its files when it reads them from a folder,
    else the generated splits' content.

    Raises:
        LineageDataError: the data cannot be hashed (neither files nor generated in memory).
    """
    spec = bench.spec(dataset)
    where = Path(spec.location).expanduser() if spec.location else None
    if where is not None and where.exists():
        root = where if where.is_dir() else where.parent
        files = _hash_tree(root, [root])
        return _digest_files(files), files, str(root)
    h = hashlib.sha256()
    for split in SPLITS:
        data = bench.load(dataset, split)
        if not isinstance(data, InMemorySplit):
            raise LineageDataError(f"{bench.name}:{dataset} has neither files nor generated data fif can hash")
        h.update(split.encode())
        h.update(data.pixels.contiguous().numpy().tobytes())
        h.update(data.targets.tobytes())
        h.update(json.dumps(data.texts).encode())
    return h.hexdigest(), {}, None


def _unique(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    n = 2
    while f"{name}_{n}" in taken:
        n += 1
    return f"{name}_{n}"


def _hash_tree(root: Path, members: list[Path]) -> dict[str, str]:
    """relative path -> sha256 of every file under ``members`` (files or folders), relative to ``root``."""
    out: dict[str, str] = {}
    for m in members:
        for f in sorted(m.rglob("*")) if m.is_dir() else [m]:
            if f.is_file():
                out[f.relative_to(root).as_posix()] = sha256_file(f)
    if not out:
        raise LineageDataError(f"{root}: no data files found")
    return dict(sorted(out.items()))


def _digest_files(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def verify(data: UpdateData, version: str) -> None:
    """Check that an earlier update's data is still what its version was trained on.

    Raises:
        LineageDataError: naming the version and the first file missing, changed or added (or the generated
            dataset whose content changed), and the fix.
    """
    fix = (f"restore it, or roll back to a version made before {version} (fif update rollback) and apply updates "
           "with the data as it is now")
    if data.concepts:
        _verify_concepts(data, version, fix)
        return
    if not data.files:
        bench_name, _, dataset = data.entry["location"].rpartition(":")
        try:
            digest = benchmark_digest(get_benchmark(bench_name, **data.entry.get("options", {}).get("options", {})),
                                      dataset)[0]
        except (KeyError, TypeError, ValueError) as e:
            raise LineageDataError(f"version {version}: its data {data.source} cannot be read ({e}); {fix}") from e
        if digest != data.digest:
            raise LineageDataError(f"version {version}: its data {data.source} has changed since (content hash "
                                   f"{digest[:12]} != recorded {data.digest[:12]}); {fix}")
        return
    root = _check_recorded(data, version, fix)
    # a file added since would change what the dataset reads: list names only (the contents were checked above)
    top = Path(data.entry["location"]) if data.entry.get("source") == "fif" else root
    present = {f.relative_to(root).as_posix() for f in top.rglob("*") if f.is_file()}
    extra = sorted(present - set(data.files))
    if extra:
        raise LineageDataError(f"version {version}: file {root / extra[0]} was added to its data since ({data.source}); "
                               f"{fix}")


def _verify_concepts(data: UpdateData, version: str, fix: str) -> None:
    """:func:`verify` of an update restricted to some classes: their files only (a file of another class may come
    and go), or their generated samples."""
    try:
        paths, content = concept_files(data.entry)
    except (LineageDataError, ValueError, KeyError, OSError) as e:
        raise LineageDataError(f"version {version}: its data {data.source} cannot be read ({e}); {fix}") from e
    if not data.files:
        if content != data.digest:
            raise LineageDataError(f"version {version}: its data {data.source} (classes {', '.join(data.concepts)}) "
                                   f"has changed since; {fix}")
        return
    root = _check_recorded(data, version, fix)
    now = {p.relative_to(root).as_posix() if root in p.parents else str(p) for p in paths}
    if extra := sorted(now - set(data.files)):
        raise LineageDataError(f"version {version}: file {root / extra[0]} was added to its data since "
                               f"({data.source}, classes {', '.join(data.concepts)}); {fix}")


def _check_recorded(data: UpdateData, version: str, fix: str) -> Path:
    """Every recorded file is there with its recorded sha256; returns the folder they are relative to."""
    root = Path(data.root or ".")
    for rel, sha in data.files.items():
        f = root / rel
        if not f.is_file():
            raise LineageDataError(f"version {version}: its data file {f} is missing ({data.source}); {fix}")
        if sha256_file(f) != sha:
            raise LineageDataError(f"version {version}: its data file {f} has changed since (sha256 differs from "
                                   f"the one recorded); {fix}")
    return root
