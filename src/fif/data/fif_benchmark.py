"""The FoMo-in-Flux benchmark: 41 adaptation and 22 evaluation-only datasets in FiF's preprocessed layout.

Each dataset lives under ``data.root`` in the folder FiF's download script gives it (which is also its
name in FiF's stream files, e.g. ``"CUB200+++Laysan Albatross"``)::

    <root>/CUB200/...                 images (paths as listed in the JSON files)
    <root>/CUB200_classnames.json     class names (position = target id)
    <root>/CUB200_train.json          image path → {default_caption, synthetic_merged_caption, target, ...}
    <root>/CUB200_test.json
    <root>/CUB200_train_224.json      optional: the same for 224 px resized copies (used when present)

FiF's reference code keeps the JSON files in its ``data_lib/00_info`` folder instead; point
``data.options.info_dir`` there. The pretraining pool is not part of the benchmark: give its shards
with ``data.mixture.pool``. See docs/data.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from fif.core.names import unknown_name_message
from fif.data.registry import Benchmark, MissingSplitError, register_benchmark
from fif.data.sources.fif_layout import classnames_path, read_classnames, read_split, split_path
from fif.data.specs import DatasetSpec, Kind, Role

log = logging.getLogger(__name__)

GET_DATA = ("FiF's preprocessed datasets (about 65 GB) come from the FoMo-in-Flux repository's "
            "download_and_process_all_datasets.sh (github.com/ExplainableML/fomo_in_flux); see docs/data.md")
MISSING = ("error", "skip")
RESIZED_SUFFIX = "_224"


@dataclass(frozen=True)
class FifDataset:
    """One FiF dataset: its folder name (= stream name), display title, kind, role, primer, year."""

    name: str
    title: str
    kind: Kind
    role: Role
    primer: str
    release_year: int
    description: str

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", "test") if self.role == "adaptation" else ("test",)


def _a(name: str, title: str, primer: str, year: int, about: str, kind: Kind = "classification") -> FifDataset:
    return FifDataset(name, title, kind, "adaptation", primer, year, f"{title}: {about}")


def _e(name: str, title: str, primer: str, year: int, about: str, kind: Kind = "classification") -> FifDataset:
    return FifDataset(name, title, kind, "eval_only", primer, year, f"{title}: {about}")


SAT = "A satellite image of {}."
CATALOGUE: tuple[FifDataset, ...] = (
    # 41 adaptation datasets (40 classification + FSCOCO retrieval)
    _a("AI2DIAGRAMS", "AI2Diagrams", "A diagram of {}.", 2016, "grade-school science diagrams by topic"),
    _a("ARTBENCH10", "ArtBench-10", "An artwork by {}.", 2022, "artworks by artist"),
    _a("BIRDSNAP", "Birdsnap", "A photo of a {}, a type of bird.", 2014, "North American bird species"),
    _a("CIFAR100", "CIFAR-100", "A blurry photo of a {}.", 2009, "tiny 32 px photos of 100 object classes"),
    _a("CLEVR", "CLEVR", "A 3D rendering of {}.", 2017, "rendered scenes of simple 3D objects"),
    _a("CLRS", "CLRS", SAT, 2020, "remote-sensing scene classes"),
    _a("COUNTRY211", "Country211", "A photo I took in {}.", 2021, "geolocation: the country a photo was taken in"),
    _a("CUB200", "CUB-200-2011", "A photo of a {}, a type of bird.", 2011, "200 fine-grained bird species"),
    _a("DF20MINI", "DF20-mini", "A photo of a {}, a type of fungus.", 2021, "Danish fungi species"),
    _a("DOLLARSTREET", "Dollar Street", "A photo of a {} found in a household.", 2022,
       "household objects from homes of every income level"),
    _a("DOMAINNET_CLIPART", "DomainNet-Clipart", "A clipart image of a {}.", 2019, "clipart of 345 object classes"),
    _a("DOMAINNET_INFOGRAPH", "DomainNet-Infograph", "An infographic of a {}.", 2019,
       "infographics of 345 object classes"),
    _a("DOMAINNET_PAINTING", "DomainNet-Painting", "A painting of a {}.", 2019, "paintings of 345 object classes"),
    _a("DOMAINNET_SKETCH", "DomainNet-Sketch", "A sketch of a {}.", 2019, "sketches of 345 object classes"),
    _a("DSPRITES", "dSprites", "A synthetic image of a {}.", 2017, "2D sprites by shape and position"),
    _a("DTD", "DTD", "A photo of a {} texture.", 2014, "describable textures"),
    _a("FGVCAircraft", "FGVC-Aircraft", "A photo of a {}, a type of aircraft.", 2013, "aircraft model variants"),
    _a("FLOWERS102", "Flowers102", "A photo of a {}, a type of flower.", 2008, "102 flower species"),
    _a("FRU92", "FRU92", "A photo of a {}, a type of fruit.", 2017, "92 fruit varieties"),
    _a("iNATURALIST2021", "iNaturalist2021", "A photo of a {}, a species of living thing.", 2021,
       "species from citizen-science photos"),
    _a("ISICMELANOMA", "ISIC Melanoma", "A dermoscopy image of {}.", 2020, "skin lesions (melanoma vs. benign)"),
    _a("MITSTATES", "MIT-States", "A photo of {}.", 2015, "objects in states (adjective-noun pairs)"),
    _a("MTSD", "MTSD", 'A photo of a "{}" traffic sign.', 2019, "Mapillary traffic sign classes"),
    _a("MVTECAD_Adapt", "MVTec-AD (base)", "A close-up photo of a {}, an industrial product.", 2019,
       "industrial objects and textures"),
    _a("MVTECAD_Eval", "MVTec-AD (faults)", "A close-up photo of a {}, an industrial product with a defect.", 2019,
       "industrial products by fault type"),
    _a("OBJECTNET", "ObjectNet", "A photo of a {}.", 2019, "objects at unusual poses, viewpoints and backgrounds"),
    _a("OBSC_ANIMALS", "Obscure Animals", "A photo of a {}, a rare animal.", 2024, "rarely photographed animals"),
    _a("OBSC_THINGS", "Obscure Things", "A photo of a {}, an uncommon object.", 2024, "rarely photographed objects"),
    _a("OPENIMAGES", "OpenImages", "A photo of a {}.", 2016, "web photos with native captions"),
    _a("PATTERNNET", "PatternNet", SAT, 2017, "high-resolution remote-sensing scene classes"),
    _a("PLACES365", "Places365", "A photo of a {}, a type of place.", 2016, "scene categories"),
    _a("PLANTVILLAGE", "PlantVillage", "A close-up photo of a plant leaf: {}.", 2015,
       "crop leaves, healthy or by disease"),
    _a("QUILT", "Quilt-1M", "A histopathology image of {}.", 2023, "histopathology images with native captions"),
    _a("RESISC45", "RESISC45", SAT, 2017, "remote-sensing scene classes"),
    _a("SHAPES3D", "Shapes3D", "A rendered image of a {}.", 2018, "procedural 3D shapes in coloured rooms"),
    _a("SNAKECLEF", "SnakeCLEF2023", "A photo of a {}, a type of snake.", 2023, "snake species"),
    _a("SUN397", "SUN397", "A photo of a {}.", 2010, "397 scene categories"),
    _a("SynthCLIP106", "SynthCLIP106", "A synthetic image of a {}.", 2024, "text-to-image generated concepts"),
    _a("VEG200", "Veg200", "A photo of a {}, a type of vegetable.", 2017, "200 vegetable varieties"),
    _a("ZAPPOS50k", "UT Zappos50K", "A product photo of {}, a type of footwear.", 2014, "shoes by type and brand"),
    _a("FSCOCO", "FS-COCO", "A freehand sketch of {}.", 2022, "scene sketches paired with captions", "retrieval"),
    # 22 evaluation-only datasets (20 classification + MSCOCO and Flickr30k retrieval)
    _e("CALTECH101", "Caltech101", "A photo of a {}.", 2004, "101 object categories"),
    _e("CALTECH256", "Caltech256", "A photo of a {}.", 2007, "256 object categories"),
    _e("CARS196", "Stanford Cars", "A photo of a {}, a type of car.", 2013, "car make, model and year"),
    _e("CIFAR10", "CIFAR-10", "A blurry photo of a {}.", 2009, "tiny 32 px photos of 10 object classes"),
    _e("DOMAINNET_QUICKDRAW", "DomainNet-Quickdraw", "A quick doodle of a {}.", 2019,
       "Quick, Draw! doodles of 345 classes"),
    _e("EuroSAT", "EuroSAT", SAT, 2017, "Sentinel-2 land-use classes"),
    _e("FashionMNIST", "Fashion-MNIST", "A black-and-white photo of a {}, a type of clothing.", 2017,
       "28 px grey clothing items"),
    _e("Food101", "Food-101", "A photo of {}, a type of food.", 2014, "101 dishes"),
    _e("GTSRB", "GTSRB", 'A zoomed-in photo of a "{}" traffic sign.', 2011, "German traffic signs"),
    _e("IMAGENET", "ImageNet (val)", "A photo of a {}.", 2009, "the 1000 ImageNet-1k classes"),
    _e("IMAGENET_A", "ImageNet-A", "A photo of a {}.", 2019, "natural adversarial examples"),
    _e("IMAGENET_D", "ImageNet-D", "An image of a {}.", 2024, "diffusion-generated hard images"),
    _e("IMAGENET_R", "ImageNet-R", "A rendition of a {}.", 2020, "art, cartoons, toys and other renditions"),
    _e("IMAGENET_S", "ImageNet-Sketch", "A black-and-white sketch of a {}.", 2019, "sketches of ImageNet classes"),
    _e("IMAGENET_V2", "ImageNetV2", "A photo of a {}.", 2019, "a fresh ImageNet test set"),
    _e("MNIST", "MNIST", 'A black-and-white photo of the number: "{}".', 1998, "handwritten digits"),
    _e("MONKEYS10", "10 Monkey Species", "A photo of a {}, a type of monkey.", 2018, "monkey species"),
    _e("OXFORDPETS", "Oxford-IIIT Pets", "A photo of a {}, a type of pet.", 2012, "cat and dog breeds"),
    _e("STL10", "STL-10", "A photo of a {}.", 2011, "10 object classes"),
    _e("SVHN", "SVHN", 'A street sign of the number: "{}".', 2011, "house numbers from Street View"),
    _e("MSCOCO", "MSCOCO", "A photo of {}.", 2014, "image-caption retrieval (5 captions per image)", "retrieval"),
    _e("FLICKR30K", "Flickr30k", "A photo of {}.", 2014, "image-caption retrieval (5 captions per image)",
       "retrieval"),
)


def catalogue() -> dict[str, FifDataset]:
    """Every FiF dataset by name (adaptation first, in FiF's alphabetical order)."""
    return {d.name: d for d in CATALOGUE}


# ---------------------------------------------------------------------------------------------
# Locating a dataset on disk


@dataclass(frozen=True)
class Located:
    """Where one dataset's files are: image folder, JSON prefix, and the JSON split name per split."""

    dataset: FifDataset
    images: Path
    meta: Path
    split_files: dict[str, str]  # the splits its role needs (checked when the benchmark is built)
    resized: bool = True


def locate(d: FifDataset, root: Path, info_dir: Path | None, resized: bool) -> tuple[Located | None, list[str]]:
    """Find one dataset's files; returns (location, []) or (None, what is missing)."""
    images = root / d.name
    meta = (info_dir or root) / d.name
    if not images.is_dir():
        return None, [f"folder {images} (not downloaded?)"]
    missing = []
    if d.kind == "classification" and not classnames_path(meta).is_file():
        missing.append(str(classnames_path(meta)))
    files = {}
    for split in d.splits:
        name = split_file(meta, split, resized)
        if name is None:
            missing.append(str(split_path(meta, split)))
        else:
            files[split] = name
    return (Located(d, images, meta, files, resized) if not missing else None), missing


def split_file(meta: Path, split: str, resized: bool) -> str | None:
    """The JSON split name to read for ``split`` (``<split>_224`` when preferred and present), or None."""
    if resized and split_path(meta, split + RESIZED_SUFFIX).is_file():
        return split + RESIZED_SUFFIX
    return split if split_path(meta, split).is_file() else None


def _chosen(datasets: Sequence[str] | str | None) -> list[FifDataset]:
    table = catalogue()
    if datasets is None or datasets == "all" or (not isinstance(datasets, str) and not datasets):
        return list(table.values())
    names = [datasets] if isinstance(datasets, str) else list(datasets)
    lower = {n.lower(): n for n in table}
    out, unknown = [], []
    for name in names:
        key = lower.get(str(name).lower())
        if key is None:
            unknown.append(str(name))
        elif table[key] not in out:
            out.append(table[key])
    if unknown:
        raise KeyError(unknown_name_message("FiF dataset (data.options.datasets)", unknown[0], table))
    return out


# ---------------------------------------------------------------------------------------------
# The benchmark


@register_benchmark("fif")
def build_fif(root: str | Path | None = None, datasets: Sequence[str] | str | None = None, missing: str = "error",
              info_dir: str | Path | None = None, resized: bool = True, **unknown) -> Benchmark:
    """The FoMo-in-Flux benchmark read from FiF's preprocessed layout under ``root``.

    Args:
        root: the folder holding FiF's dataset folders (``data.root``).
        datasets: restrict to these dataset names (case-insensitive); None / empty = all 63.
        missing: ``error`` (default) fails when a chosen dataset is absent or incomplete; ``skip``
            leaves it out (with a warning) and keeps the ones present.
        info_dir: folder with the ``<NAME>_*.json`` files when they are not next to the image folders
            (e.g. the FiF repository's ``data_lib/00_info``); None = ``root``.
        resized: read the ``<NAME>_<split>_224.json`` variant (224 px copies) where it exists.

    Returns:
        The benchmark; class names are read now, splits on first load.

    Raises:
        ValueError: ``root`` unset, missing or empty; an unknown option; nothing left to use.
        FileNotFoundError: with ``missing=error``, listing every absent dataset and its missing files.
        KeyError: an unknown dataset name, with the closest valid ones.
    """
    if unknown:
        raise ValueError(unknown_name_message("fif benchmark option (data.options)", sorted(unknown)[0],
                                              ["root", "datasets", "missing", "info_dir", "resized"]))
    if missing not in MISSING:
        raise ValueError(f"fif benchmark option missing={missing!r} must be one of {', '.join(MISSING)}")
    root_path = _check_root(root)
    info = Path(info_dir).expanduser() if info_dir is not None else None
    if info is not None and not info.is_dir():
        raise ValueError(f"data.options.info_dir={str(info)!r} is not a folder (it should hold FiF's "
                         f"<NAME>_*.json files)")
    found: dict[str, Located] = {}
    absent: dict[str, list[str]] = {}
    for d in _chosen(datasets):
        located, lacking = locate(d, root_path, info, bool(resized))
        if located is None:
            absent[d.name] = lacking
        else:
            found[d.name] = located
    if absent and missing == "error":
        lines = [f"  {name}: missing {', '.join(what)}" for name, what in absent.items()]
        shown = "\n".join(lines[:20]) + (f"\n  ... and {len(lines) - 20} more" if len(lines) > 20 else "")
        raise FileNotFoundError(
            f"{len(absent)} FiF dataset(s) are missing or incomplete under data.root={str(root_path)!r}:\n{shown}\n"
            f"Download them ({GET_DATA}), restrict data.options.datasets, or set data.options.missing=skip."
        )
    if absent:
        names = list(absent)
        log.warning("fif benchmark: skipping %d dataset(s) not found under %s: %s%s", len(names), root_path,
                    ", ".join(names[:12]), ", ..." if len(names) > 12 else "")
    if not found:
        raise ValueError(f"none of the chosen FiF datasets is present under data.root={str(root_path)!r}. {GET_DATA}.")
    specs = {name: _spec(loc) for name, loc in found.items()}

    def load(spec: DatasetSpec, split: str):
        loc = found.get(spec.name)
        if loc is None:
            raise KeyError(unknown_name_message("dataset", spec.name, found, where="benchmark 'fif'"))
        name = loc.split_files.get(split) or split_file(loc.meta, split, loc.resized)
        if name is None:
            raise MissingSplitError(f"FiF dataset {spec.name!r} has no {split!r} split ({split_path(loc.meta, split)} not "
                             f"found); {spec.role} datasets need {', '.join(loc.dataset.splits)}")
        return read_split(loc.images, name, spec, meta_prefix=loc.meta, split_name=split)

    return Benchmark(name="fif", datasets=specs, loader=load, pretraining_pool=None)


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


def _spec(loc: Located) -> DatasetSpec:
    d = loc.dataset
    classnames = tuple(read_classnames(loc.meta)) if d.kind == "classification" else ()
    try:
        return DatasetSpec(
            name=d.name, kind=d.kind, role=d.role, classnames=classnames, primer=d.primer,
            release_year=d.release_year, source="fif", location=str(loc.images), description=d.description,
        )
    except ValueError as e:  # empty or duplicated class names: the file is at fault
        raise ValueError(f"{classnames_path(loc.meta)}: {e}; fix the file or re-download the dataset") from e
