"""The FoMo-in-Flux benchmark: 41 adaptation and 22 evaluation-only datasets in FiF's preprocessed layout.

Each dataset lives under ``data.root`` in the folder FiF's download script gives it (which is also its
name in FiF's stream files, e.g. ``"CUB200+++Laysan Albatross"``)::

    <root>/CUB200/...                       images (paths as listed in the JSON files)
    <root>/CUB200/CUB200_train_224/...      optional: 224 px resized copies
    <root>/CUB200_classnames.json           class names (position = target id)
    <root>/CUB200_train.json                image path → {default_caption, synthetic_merged_caption, target, ...}
    <root>/CUB200_test.json
    <root>/CUB200_train_224.json            optional: the same for the resized copies

Split files are named as the reference names them (iNATURALIST2021 ``train_mini`` / ``val``, MTSD
``train`` / ``val``; ``data.options.splits`` overrides them per dataset); the rest of fif always asks for
``train`` and ``test``. A ``_224`` file is read only when its image folder exists too, decided per
dataset and split. FiF's reference code keeps the JSON files in its ``data_lib/00_info`` folder; point
``data.options.info_dir`` there. The pretraining pool is not part of the benchmark: give its shards with
``data.mixture.pool``. See docs/data.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from fif.core.names import unknown_name_message
from fif.data.fif_catalogue import CATALOGUE, LOGICAL_SPLITS, TIME_ORDER, FifDataset, catalogue  # noqa: F401 (re-exported)
from fif.data.registry import Benchmark, MissingSplitError, register_benchmark
from fif.data.sources.fif_layout import (  # noqa: F401 (SplitFile re-exported)
    SplitFile,
    classnames_path,
    read_classnames,
    read_split,
    resolve_split,
    split_path,
)
from fif.data.specs import DatasetSpec

log = logging.getLogger(__name__)

GET_DATA = ("FiF's preprocessed datasets (about 65 GB) come from the FoMo-in-Flux repository's "
            "download_and_process_all_datasets.sh (github.com/ExplainableML/fomo_in_flux); see docs/data.md")
MISSING = ("error", "skip")
OPTIONS = ("root", "datasets", "missing", "info_dir", "resized", "splits", "primers", "templates")


# ---------------------------------------------------------------------------------------------
# Locating a dataset on disk


@dataclass(frozen=True)
class Located:
    """Where one dataset's files are.

    Attributes:
        dataset: its catalogue entry.
        images: the image folder ``<root>/<NAME>``.
        meta: the JSON prefix ``<info_dir or root>/<NAME>``.
        files: the split files its role needs, by logical split (``train`` / ``test``).
        file_splits: logical split -> info-file split name (the reference's, or the override).
        resized: whether ``_224`` variants may be used.
    """

    dataset: FifDataset
    images: Path
    meta: Path
    files: dict[str, SplitFile]
    file_splits: dict[str, str] = field(default_factory=dict)
    resized: bool = True


def locate(d: FifDataset, root: Path, info_dir: Path | None, resized: bool,
           file_splits: Mapping[str, str] | None = None) -> tuple[Located | None, list[str]]:
    """Find one dataset's files; returns (location, []) or (None, what is missing)."""
    images = root / d.name
    meta = (info_dir or root) / d.name
    names = {**d.split_files(), **(file_splits or {})}
    if not images.is_dir():
        return None, [f"folder {images} (not downloaded?)"]
    missing = []
    if d.kind == "classification" and not classnames_path(meta).is_file():
        missing.append(str(classnames_path(meta)))
    files = {}
    for split in d.splits:
        found = resolve_split(images, meta, names[split], resized)
        if found is None:
            missing.append(str(split_path(meta, names[split])))
        else:
            files[split] = found
    return (Located(d, images, meta, files, names, resized) if not missing else None), missing


def _canonical(names: Sequence[str] | str, what: str) -> list[FifDataset]:
    table = catalogue()
    lower = {n.lower(): n for n in table}
    out, unknown = [], []
    for name in [names] if isinstance(names, str) else list(names):
        key = lower.get(str(name).lower())
        if key is None:
            unknown.append(str(name))
        elif table[key] not in out:
            out.append(table[key])
    if unknown:
        raise KeyError(unknown_name_message(f"FiF dataset ({what})", unknown[0], table))
    return out


def _chosen(datasets: Sequence[str] | str | None) -> list[FifDataset]:
    if datasets is None or datasets == "all" or (not isinstance(datasets, str) and not datasets):
        return list(CATALOGUE)
    return _canonical(datasets, "data.options.datasets")


def _per_dataset(option: str, value: Mapping[str, Any] | None) -> dict[str, Any]:
    """A ``{DATASET: value}`` option keyed by canonical dataset names.

    Raises:
        ValueError: not a mapping. KeyError: an unknown dataset name (with the closest ones).
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"data.options.{option} must map dataset names to values, e.g. "
                         f"data.options.{option}={{MTSD: ...}}; got {value!r}")
    return {_canonical(str(k), f"data.options.{option}")[0].name: v for k, v in value.items()}


def _split_overrides(value: Mapping[str, Any] | None) -> dict[str, dict[str, str]]:
    out = {}
    for name, mapping in _per_dataset("splits", value).items():
        if not isinstance(mapping, Mapping) or not set(mapping) <= set(LOGICAL_SPLITS) or not all(
                isinstance(v, str) and v for v in mapping.values()):
            raise ValueError(f"data.options.splits.{name} must map train and/or test to the split names of its "
                             f"info files, e.g. {{train: train_mini, test: val}}; got {mapping!r}")
        out[name] = dict(mapping)
    return out


# ---------------------------------------------------------------------------------------------
# The benchmark


@register_benchmark("fif")
def build_fif(root: str | Path | None = None, datasets: Sequence[str] | str | None = None, missing: str = "error",
              info_dir: str | Path | None = None, resized: bool = True, splits: Mapping[str, Any] | None = None,
              primers: Mapping[str, str] | None = None, templates: Mapping[str, Sequence[str]] | None = None,
              **unknown) -> Benchmark:
    """The FoMo-in-Flux benchmark read from FiF's preprocessed layout under ``root``.

    Args:
        root: the folder holding FiF's dataset folders (``data.root``).
        datasets: restrict to these dataset names (case-insensitive); None / empty = all 63.
        missing: ``error`` (default) fails when a chosen dataset is absent or incomplete; ``skip``
            leaves it out (with a warning) and keeps the ones present.
        info_dir: folder with the ``<NAME>_*.json`` files when they are not next to the image folders
            (e.g. the FiF repository's ``data_lib/00_info``); None = ``root``.
        resized: read ``<NAME>_<split>_224.json`` where it and its image folder exist.
        splits: per dataset, the split names of its info files, e.g. ``{MTSD: {test: test}}`` for a copy
            whose test file is ``MTSD_test.json`` (default: the reference's).
        primers: per dataset, the zero-shot prompt instead of the paper's (one ``{}``).
        templates: per dataset, extra prompts for ``eval.ensemble=true``.

    Returns:
        The benchmark; class names are read now, splits on first load. ``left_out`` names every catalogue
        dataset not in it and why.

    Raises:
        ValueError: ``root`` unset, missing or empty; an unknown or malformed option; nothing left to use.
        FileNotFoundError: with ``missing=error``, listing every absent dataset and its missing files.
        KeyError: an unknown dataset name, with the closest valid ones.
    """
    if unknown:
        raise ValueError(unknown_name_message("fif benchmark option (data.options)", sorted(unknown)[0], OPTIONS))
    if missing not in MISSING:
        raise ValueError(f"fif benchmark option missing={missing!r} must be one of {', '.join(MISSING)}")
    root_path = _check_root(root)
    info = Path(info_dir).expanduser() if info_dir is not None else None
    if info is not None and not info.is_dir():
        raise ValueError(f"data.options.info_dir={str(info)!r} is not a folder (it should hold FiF's "
                         f"<NAME>_*.json files)")
    split_names, prompts = _split_overrides(splits), _per_dataset("primers", primers)
    extra = _per_dataset("templates", templates)
    chosen = _chosen(datasets)
    found, absent = _locate_all(chosen, root_path, info, bool(resized), split_names)
    _report_absent(absent, missing, root_path)
    if not found:
        raise ValueError(f"none of the chosen FiF datasets is present under data.root={str(root_path)!r}. {GET_DATA}.")
    specs = {name: _spec(loc, prompts.get(name), extra.get(name, ())) for name, loc in found.items()}
    left_out = {name: "missing " + ", ".join(what) for name, what in absent.items()}
    left_out.update({d.name: "not in data.options.datasets" for d in CATALOGUE if d not in chosen})

    def load(spec: DatasetSpec, split: str):
        loc = found.get(spec.name)
        if loc is None:
            raise KeyError(unknown_name_message("dataset", spec.name, found, where="benchmark 'fif'"))
        file_split = loc.file_splits.get(split, split)
        chosen_file = loc.files.get(split) or resolve_split(loc.images, loc.meta, file_split, loc.resized)
        if chosen_file is None:
            raise MissingSplitError(
                f"FiF dataset {spec.name!r} has no {split!r} split ({split_path(loc.meta, file_split)} not found); "
                f"{spec.role} datasets need {', '.join(loc.dataset.splits)}")
        return read_split(loc.images, chosen_file.name, spec, meta_prefix=loc.meta, split_name=split)

    return Benchmark(name="fif", datasets=specs, loader=load, pretraining_pool=None, left_out=left_out)


def _locate_all(chosen: list[FifDataset], root: Path, info: Path | None, resized: bool,
                split_names: dict[str, dict[str, str]]) -> tuple[dict[str, Located], dict[str, list[str]]]:
    found: dict[str, Located] = {}
    absent: dict[str, list[str]] = {}
    for d in chosen:
        located, lacking = locate(d, root, info, resized, split_names.get(d.name))
        if located is None:
            absent[d.name] = lacking
            continue
        found[d.name] = located
        for note in (f.note for f in located.files.values() if f.note):
            log.info("%s: %s", d.name, note)  # a _224 JSON without its folder: the full-size images are read
    return found, absent


def _report_absent(absent: dict[str, list[str]], missing: str, root: Path) -> None:
    if absent and missing == "error":
        lines = [f"  {name}: missing {', '.join(what)}" for name, what in absent.items()]
        shown = "\n".join(lines[:20]) + (f"\n  ... and {len(lines) - 20} more" if len(lines) > 20 else "")
        raise FileNotFoundError(
            f"{len(absent)} FiF dataset(s) are missing or incomplete under data.root={str(root)!r}:\n{shown}\n"
            f"Download them ({GET_DATA}), restrict data.options.datasets, or set data.options.missing=skip."
        )
    if absent:
        names = list(absent)
        log.warning("fif benchmark: skipping %d dataset(s) not found under %s: %s%s", len(names), root,
                    ", ".join(names[:12]), ", ..." if len(names) > 12 else "")


def catalogue_rows(root: str | Path | None = None, datasets: Sequence[str] | str | None = None,
                   info_dir: str | Path | None = None, resized: bool = True, splits: Mapping[str, Any] | None = None,
                   primers: Mapping[str, str] | None = None, templates: Mapping[str, Sequence[str]] | None = None,
                   missing: str = "error") -> list[dict[str, Any]]:
    """Every FiF dataset (or those of ``datasets``) as ``fif data show fif --all`` lists it, whether or
    not it is on disk: name (= folder), title, role, kind, primer, templates, the info-file split names
    it needs, release year and rank, description; with ``root``, whether it is present and what is missing.

    The options are the benchmark's (``missing`` is accepted and ignored: nothing is loaded).

    Raises:
        KeyError: an unknown dataset name in ``datasets`` or an option.
        ValueError: a malformed option.
    """
    del missing
    split_names, prompts = _split_overrides(splits), _per_dataset("primers", primers)
    extra = _per_dataset("templates", templates)
    root_path = Path(root).expanduser() if root not in (None, "") else None
    info = Path(info_dir).expanduser() if info_dir is not None else None
    rows = []
    for d in _chosen(datasets):
        names = {**d.split_files(), **split_names.get(d.name, {})}
        row: dict[str, Any] = {
            "name": d.name, "folder": d.name, "title": d.title, "role": d.role, "kind": d.kind,
            "primer": prompts.get(d.name, d.primer), "templates": list(extra.get(d.name, ())),
            "splits": {split: names[split] for split in d.splits}, "release_year": d.release_year,
            "release_rank": d.release_rank, "description": d.description,
        }
        if root_path is not None:
            located, lacking = locate(d, root_path, info, bool(resized), split_names.get(d.name))
            row["on_disk"] = located is not None
            row["missing"] = lacking
        rows.append(row)
    return rows


def _check_root(root: str | Path | None) -> Path:
    if root is None or str(root).strip() == "":
        raise ValueError(f"the fif benchmark needs data.root: the folder holding FiF's datasets "
                         f"(e.g. data.root=/data/fif). {GET_DATA}.")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise ValueError(f"data.root={str(path)!r} is not a folder. {GET_DATA}.")
    if not any(path.iterdir()):
        raise ValueError(f"data.root={str(path)!r} is empty. {GET_DATA}.")
    return path


def _spec(loc: Located, primer: str | None, templates: Sequence[str]) -> DatasetSpec:
    d = loc.dataset
    # A retrieval set may carry classes too (FSCOCO): its streams take it by class.
    has_names = d.kind == "classification" or classnames_path(loc.meta).is_file()
    classnames = tuple(read_classnames(loc.meta)) if has_names else ()
    if isinstance(templates, str) or not all(isinstance(t, str) for t in templates):
        raise ValueError(f"data.options.templates.{d.name} must be a list of prompts with one '{{}}' each")
    try:
        return DatasetSpec(
            name=d.name, kind=d.kind, role=d.role, classnames=classnames, primer=primer or d.primer,
            templates=tuple(templates), release_year=d.release_year, source="fif", location=str(loc.images),
            description=d.description, release_rank=d.release_rank,
        )
    except ValueError as e:  # empty or duplicated class names: the file is at fault; a bad prompt: the option
        where = "data.options.primers/templates" if "prompt" in str(e) else str(classnames_path(loc.meta))
        raise ValueError(f"{where}: {e}; fix it (or re-download the dataset)") from e
