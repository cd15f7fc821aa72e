"""A user's own benchmark, described by a YAML file (``data.benchmark=/path/to/benchmark.yaml``).

Example::

    name: my_bench                      # optional (default: the file's stem)
    pool: web_pairs                     # optional: the dataset used for pretraining replay
    datasets:
      - name: birds
        kind: classification            # classification (default) | retrieval
        role: adaptation                # adaptation (default) | eval_only | pretraining
        primer: "A photo of a {}, a type of bird."
        release_year: 2011              # optional (time-incremental streams need it)
        source: folder                  # folder | manifest | wds | fif | benchmark (inferred when left out)
        location: birds/{split}         # relative to the YAML's folder (or data.root)
        classnames: birds.json          # optional: JSON list, JSON {label: name} or one name a line
        classes: [wren, robin]          # optional: keep only these classes' samples (a concept subset)
      - name: scans
        source: manifest
        splits: {train: scans/train.csv, test: scans/test.csv}
        options: {image_key: path, caption_key: text, label_key: diagnosis}
      - name: web_pairs
        role: pretraining
        source: wds
        location: shards/{00000..00099}.tar
      - name: mini_colors               # a dataset of another benchmark: BENCHMARK:DATASET, where
        role: eval_only                 # BENCHMARK is a registered name or a benchmark YAML's path
        kind: classification
        source: benchmark
        location: mini:mini_colors
        options: {options: {pool_size: 400}}   # that benchmark's own options (data.options)

Every problem in the file is reported at once, naming the dataset and the key.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fif.core.names import unknown_name_message
from fif.data.registry import Benchmark, get_benchmark, register_path_loader
from fif.data.sources import folder as folder_source
from fif.data.sources import manifest as manifest_source
from fif.data.sources import wds as wds_source
from fif.data.sources.common import SPLIT_PLACEHOLDER, SourceError, class_subset, read_classnames_file, resolve
from fif.data.sources.fif_layout import classnames_path, read_classnames, read_split, resolve_split, split_path
from fif.data.specs import KINDS, ROLES, DatasetSpec, SplitData

SOURCES = ("folder", "manifest", "wds", "fif", "benchmark")
TOP_KEYS = ("name", "pool", "datasets", "root")
DATASET_KEYS = ("name", "kind", "role", "primer", "templates", "release_year", "source", "location", "splits",
                "classnames", "options", "description", "classes")
SOURCE_OPTIONS = {
    "folder": (),
    "manifest": ("image_key", "caption_key", "label_key", "image_root"),
    "wds": ("index_dir",),
    "fif": ("info_dir", "resized"),
    "benchmark": ("options",),
}


@dataclass
class Entry:
    """One dataset of the YAML file, validated, with its paths still unresolved."""

    name: str
    kind: str
    role: str
    primer: str
    templates: tuple[str, ...]
    release_year: int | None
    source: str
    location: str | None
    splits: dict[str, str]
    classnames: str | None
    options: dict[str, Any]
    description: str
    base: Path
    classes: tuple[str, ...] = ()
    label_map: dict[str, str] | None = field(default=None, repr=False)
    all_classnames: tuple[str, ...] = field(default=(), repr=False)  # before ``classes`` kept some of them

    def where(self, split: str) -> Path | str:
        """The split's file, folder or shard pattern (absolute)."""
        if split in self.splits:
            return self._abs(self.splits[split], split)
        if self.location is None:
            raise SourceError(f"dataset {self.name!r}: no location for split {split!r}; add splits.{split} "
                              f"(it has: {', '.join(self.splits) or 'none'})")
        if SPLIT_PLACEHOLDER in self.location or self.source == "fif":
            return self._abs(self.location, split)
        loc = self._abs(self.location, split)
        if self.source == "folder" and isinstance(loc, Path) and (loc / split).is_dir():
            return loc / split
        if self.role == "adaptation":
            raise SourceError(
                f"dataset {self.name!r}: an adaptation dataset needs separate train and test data, but location "
                f"{self.location!r} names one for every split; use a {SPLIT_PLACEHOLDER} placeholder, "
                f"<location>/{split}/ subfolders, or splits: {{train: ..., test: ...}}"
            )
        return loc

    def _abs(self, location: str, split: str) -> Path | str:
        if self.source == "wds":  # a pattern: resolved against base by the shard expander
            return location.replace(SPLIT_PLACEHOLDER, split)
        return resolve(location, self.base, split)


def load_benchmark_yaml(path: str | Path, root: str | Path | None = None, datasets: list[str] | None = None,
                        index_dir: str | Path | None = None, **unknown: Any) -> Benchmark:
    """Build a Benchmark from a user's YAML description.

    Args:
        path: the YAML file.
        root: folder relative locations are resolved against (``data.root``); default: the YAML's
            ``root:`` key, else the YAML's folder.
        datasets: keep only these datasets (None = all).
        index_dir: fallback folder for WebDataset index caches.

    Returns:
        The benchmark; class names are read (or inferred) now, splits on first load.

    Raises:
        SourceError: every problem of the file at once (unknown keys with the closest valid ones, bad
            values, missing class-name files), naming the dataset and key.
    """

    if unknown:
        raise ValueError(unknown_name_message("option of a YAML benchmark (data.options)", sorted(unknown)[0],
                                              ["root", "datasets", "index_dir"]))
    path = Path(path).expanduser()
    if not path.is_file():
        raise SourceError(f"{path}: benchmark file not found (data.benchmark is a name — mini, fif — or the "
                          f"path of a YAML file)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise SourceError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise SourceError(f"{path}: expected a mapping with a 'datasets' list")
    problems = [_unknown(f"key {k!r}", k, TOP_KEYS) for k in data if k not in TOP_KEYS]
    base = Path(root).expanduser() if root is not None else resolve(data.get("root") or ".", path.parent)
    raw = data.get("datasets")
    if not isinstance(raw, list) or not raw:
        problems.append("'datasets' must be a non-empty list of dataset entries")
        raw = []
    entries = [e for i, item in enumerate(raw) if (e := _entry(item, i, base, problems)) is not None]
    names = [e.name for e in entries]
    for name in {n for n in names if names.count(n) > 1}:
        problems.append(f"dataset name {name!r} is used twice; names must be unique")
    if datasets:
        for name in datasets:
            if name not in names:
                problems.append(unknown_name_message("dataset (data.options.datasets)", name, names))
        entries = [e for e in entries if e.name in datasets]
    specs = {}
    inner: dict[str, Benchmark] = {}  # source: benchmark — each named benchmark built once
    for entry in entries:
        try:
            specs[entry.name] = _spec(entry, inner)
        except (SourceError, ValueError) as e:
            problems.append(str(e) if str(e).startswith(f"dataset {entry.name!r}") else f"dataset {entry.name!r}: {e}")
    pool = _pool(data.get("pool"), entries, problems)
    if problems:
        raise SourceError(f"{path}: {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))
    by_name = {e.name: e for e in entries}

    def load(spec: DatasetSpec, split: str) -> SplitData:
        return load_classes(by_name[spec.name], spec, split, index_dir, inner)

    return Benchmark(name=str(data.get("name") or path.stem), datasets=specs, loader=load, pretraining_pool=pool)


def _unknown(what: str, name: str, valid: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    return f"unknown {what}" + (f"; did you mean {close[0]!r}?" if close else "") + f" Valid: {', '.join(valid)}"


def _entry(item: Any, i: int, base: Path, problems: list[str]) -> Entry | None:
    if not isinstance(item, dict):
        problems.append(f"datasets[{i}]: expected a mapping, got {type(item).__name__}")
        return None
    name = item.get("name")
    label = f"datasets[{i}] ({name})" if name else f"datasets[{i}]"
    n0 = len(problems)
    problems.extend(f"{label}: " + _unknown(f"key {k!r}", str(k), DATASET_KEYS) for k in item if k not in DATASET_KEYS)
    if not isinstance(name, str) or not name:
        problems.append(f"{label}: 'name' is required (a string, used in streams as NAME+++classname)")
    role = item.get("role", "adaptation")
    kind = item.get("kind", "retrieval" if role == "pretraining" else "classification")
    if role not in ROLES:
        problems.append(f"{label}: role {role!r} must be one of {', '.join(ROLES)}")
    if kind not in KINDS:
        problems.append(f"{label}: kind {kind!r} must be one of {', '.join(KINDS)}")
    location, splits = item.get("location"), item.get("splits") or {}
    if location is not None and not isinstance(location, str):
        problems.append(f"{label}: 'location' must be a path or pattern string")
    if not isinstance(splits, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in splits.items()):
        problems.append(f"{label}: 'splits' must map split names to paths, e.g. {{train: a.csv, test: b.csv}}")
        splits = {}
    if location is None and not splits:
        problems.append(f"{label}: give 'location' (with an optional {SPLIT_PLACEHOLDER} placeholder) or 'splits'")
    source = item.get("source") or _infer_source(location or next(iter(splits.values()), ""), base)
    if source not in SOURCES:
        problems.append(f"{label}: " + _unknown(f"source {source!r}", str(source), SOURCES))
    options = item.get("options") or {}
    if not isinstance(options, dict):
        problems.append(f"{label}: 'options' must be a mapping")
        options = {}
    valid_opts = SOURCE_OPTIONS.get(source, ())
    problems.extend(f"{label}: " + _unknown(f"option {k!r} for source {source!r}", str(k), valid_opts or ("(none)",))
                    for k in options if k not in valid_opts)
    year = item.get("release_year")
    if year is not None and (isinstance(year, bool) or not isinstance(year, int)):
        problems.append(f"{label}: release_year must be an integer year, got {year!r}")
    templates = item.get("templates") or []
    if not isinstance(templates, list) or not all(isinstance(t, str) for t in templates):
        problems.append(f"{label}: 'templates' must be a list of prompts with one {{}} each")
        templates = []
    classnames = item.get("classnames")
    if classnames is not None and not isinstance(classnames, str):
        problems.append(f"{label}: 'classnames' must be a path to a class-names file")
    classes = item.get("classes") or []
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        problems.append(f"{label}: 'classes' must be a list of class names to keep")
        classes = []
    elif classes and kind != "classification":
        problems.append(f"{label}: 'classes' keeps some classes of a classification dataset; {kind} has none")
    if len(problems) > n0:
        return None
    return Entry(name=name, kind=kind, role=role, primer=str(item.get("primer", "A photo of a {}.")),
                 templates=tuple(templates), release_year=year, source=source, location=location, splits=dict(splits),
                 classnames=classnames, options=dict(options), description=str(item.get("description", "")), base=base,
                 classes=tuple(classes))


def _infer_source(location: str, base: Path) -> str:
    probe = location.replace(SPLIT_PLACEHOLDER, "train")
    if Path(probe).suffix.lower() in manifest_source.FORMATS:
        return "manifest"
    if wds_source.looks_like_shards(probe):
        return "wds"
    prefix = resolve(probe, base)
    if any(p.is_file() for p in (classnames_path(prefix), split_path(prefix, "train"), split_path(prefix, "test"))):
        return "fif"
    return "folder"


def _pool(name: Any, entries: list[Entry], problems: list[str]) -> str | None:
    pools = [e.name for e in entries if e.role == "pretraining"]
    if name is None:
        return pools[0] if len(pools) == 1 else None
    if name not in pools:
        problems.append(unknown_name_message("pretraining pool (pool:)", str(name), pools)
                        + " (the pool must be a dataset with role: pretraining)")
        return None
    return name


# ---------------------------------------------------------------------------------------------
# Class names and loading


def _spec(entry: Entry, inner: dict[str, Benchmark]) -> DatasetSpec:
    classnames: tuple[str, ...] = ()
    if entry.kind == "classification" and entry.role != "pretraining":
        classnames = tuple(_inner_spec(entry, inner)[1].classnames if entry.source == "benchmark" and
                           entry.classnames is None else _classnames(entry))
    if entry.classes:
        entry.all_classnames = classnames
        if unknown := [c for c in entry.classes if c not in classnames]:
            raise SourceError(f"dataset {entry.name!r}: " + unknown_name_message(
                "class (classes:)", unknown[0], classnames, where=f"its {len(classnames)} classes"))
        classnames = tuple(c for c in classnames if c in entry.classes)  # the source's order
    return DatasetSpec(name=entry.name, kind=entry.kind, role=entry.role, classnames=classnames, primer=entry.primer,
                       templates=entry.templates, release_year=entry.release_year, source=entry.source,
                       location=str(entry.location or entry.splits), description=entry.description)


def _classnames(entry: Entry) -> list[str]:
    """Class names from the given file, else inferred from the data (first of train / test present)."""
    if entry.classnames is not None:
        names = read_classnames_file(resolve(entry.classnames, entry.base))
        if isinstance(names, dict):
            entry.label_map = names
            return list(dict.fromkeys(names.values()))
        return names
    if entry.source == "fif":
        return read_classnames(_fif_meta(entry))
    if entry.source == "wds":
        raise SourceError("WebDataset shards carry no class labels; use kind: retrieval or role: pretraining")
    first_error = None
    for split in _probe_splits(entry):
        try:
            where = entry.where(split)
        except SourceError as e:
            first_error = first_error or e
            continue
        if entry.source == "folder":
            return folder_source.class_folders(where)
        return manifest_source.manifest_labels(where, _keys(entry))
    if first_error is not None:
        raise first_error
    raise SourceError("cannot infer class names; give classnames: <file>")


def _probe_splits(entry: Entry) -> list[str]:
    order = ["train", "test", *entry.splits]
    return list(dict.fromkeys(s for s in order if s in entry.splits or entry.location is not None))


def _keys(entry: Entry) -> manifest_source.ManifestKeys:
    o = entry.options
    return manifest_source.ManifestKeys(image=o.get("image_key", "image"), caption=o.get("caption_key", "caption"),
                                        label=o.get("label_key", "label"))


def _fif_meta(entry: Entry) -> Path:
    prefix = resolve(entry.location or "", entry.base)
    info = entry.options.get("info_dir")
    return resolve(info, entry.base) / prefix.name if info else prefix


def _inner_spec(entry: Entry, inner: dict[str, Benchmark]) -> tuple[Benchmark, DatasetSpec]:
    """The benchmark and dataset that a ``source: benchmark`` entry names (``location: BENCHMARK:DATASET``).

    Raises:
        SourceError: a malformed location, or an unknown benchmark or dataset (with the valid names).
    """
    name, sep, dataset = (entry.location or "").rpartition(":")
    if not sep or not name or not dataset:
        raise SourceError(f"source benchmark: location {entry.location!r} must be BENCHMARK:DATASET, e.g. mini:mini_digits")
    if name.lower().endswith((".yaml", ".yml")):
        name = str(resolve(name, entry.base))
    options = entry.options.get("options") or {}
    key = f"{name}|{sorted(options.items())!r}"
    try:
        if key not in inner:
            inner[key] = get_benchmark(name, **options)
        return inner[key], inner[key].spec(dataset)
    except (KeyError, TypeError) as e:
        raise SourceError(f"source benchmark {entry.location!r}: {e.args[0] if e.args else e}") from e


def load_classes(entry: Entry, spec: DatasetSpec, split: str, index_dir: str | Path | None = None,
                 inner: dict[str, Benchmark] | None = None) -> SplitData:
    """:func:`load_entry`, then only the samples of the entry's ``classes:`` (if it keeps some)."""
    if not entry.classes:
        return load_entry(entry, spec, split, index_dir, inner)
    whole = dataclasses.replace(spec, classnames=entry.all_classnames)  # read as the source has it, then subset
    return class_subset(load_entry(entry, whole, split, index_dir, inner), spec)


def load_entry(entry: Entry, spec: DatasetSpec, split: str, index_dir: str | Path | None = None,
               inner: dict[str, Benchmark] | None = None) -> SplitData:
    """Load split ``split`` of one YAML dataset through its source.

    Args:
        inner: the benchmarks ``source: benchmark`` entries have built so far (a cache; None: build afresh).

    Raises:
        SourceError: naming the file (and key) at fault.
    """
    if entry.source == "benchmark":
        bench, inner_spec = _inner_spec(entry, {} if inner is None else inner)
        data = bench.load(inner_spec.name, split)
        # the data under this benchmark's name and role (a dataclass split is relabelled; others keep their own)
        return dataclasses.replace(data, spec=spec) if dataclasses.is_dataclass(data) else data
    if entry.source == "fif":
        prefix, meta = resolve(entry.location or "", entry.base), _fif_meta(entry)
        chosen = resolve_split(prefix, meta, split, bool(entry.options.get("resized", True)))
        return read_split(prefix, chosen.name if chosen else split, spec, meta_prefix=meta, split_name=split)
    where = entry.where(split)
    if entry.source == "folder":
        return folder_source.read_folder(spec, split, where, entry.label_map)
    if entry.source == "manifest":
        image_root = entry.options.get("image_root")
        return manifest_source.read_manifest(spec, split, where, _keys(entry),
                                             resolve(image_root, entry.base) if image_root else None, entry.label_map)
    return wds_source.read_shards(spec, split, str(where), entry.base,
                                  entry.options.get("index_dir") or index_dir)


def is_benchmark_path(name: str) -> bool:
    """Whether ``data.benchmark`` names a YAML file rather than a registered benchmark."""
    return name.lower().endswith((".yaml", ".yml")) or Path(name).expanduser().is_file()


register_path_loader(is_benchmark_path, load_benchmark_yaml)
