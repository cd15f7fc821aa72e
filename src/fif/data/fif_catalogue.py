"""FoMo-in-Flux's 63 datasets as the reference pipeline defines them: folder (= the name in its stream
files), role, kind, zero-shot primer, split file names, and the release period its time-incremental
streams order them by.

Facts from the reference's per-dataset modules (see docs/data.md for the table). Retrieval sets use the
caption itself as the prompt (``{}``), except FSCOCO, whose sketches carry a class: the reference's
streams take it by class (``FSCOCO+++<classname>``) and its primer is ``A sketch of a {}``.
"""

from __future__ import annotations

from dataclasses import dataclass

from fif.data.specs import Kind, Role

LOGICAL_SPLITS = ("train", "test")  # what the rest of fif asks for; each dataset maps them to its files


@dataclass(frozen=True)
class FifDataset:
    """One FiF dataset.

    Attributes:
        name: the download folder, which is also its name in stream files.
        title: display name.
        kind / role: ``classification`` or ``retrieval``; ``adaptation`` or ``eval_only``.
        primer: the single zero-shot prompt the paper evaluates with.
        release_year: the period the reference's time-incremental streams put it in.
        description: one line for ``fif data show``.
        train_file / test_file: the split names of its info files (``<NAME>_<split>.json``): ``train`` /
            ``test`` except iNATURALIST2021 (``train_mini`` / ``val``) and MTSD (``train`` / ``val``).
        release_rank: position in the reference's time order (ties within a year); None for eval-only sets.
    """

    name: str
    title: str
    kind: Kind
    role: Role
    primer: str
    release_year: int
    description: str
    train_file: str = "train"
    test_file: str = "test"
    release_rank: int | None = None

    @property
    def splits(self) -> tuple[str, ...]:
        """The logical splits its role needs: adaptation sets train and test, eval-only sets test."""
        return LOGICAL_SPLITS if self.role == "adaptation" else ("test",)

    def split_files(self) -> dict[str, str]:
        """Logical split -> the split name of its info file."""
        return {"train": self.train_file, "test": self.test_file}


# The reference's time-incremental dataset order (time_incremental_dschunked_*): oldest period first, and
# within a period in this order. release_rank is the position here.
TIME_ORDER: tuple[str, ...] = (
    "FLOWERS102", "CIFAR100", "SUN397", "CUB200", "FGVCAircraft", "BIRDSNAP", "DTD", "ZAPPOS50k", "MITSTATES",
    "PLANTVILLAGE", "AI2DIAGRAMS", "OPENIMAGES", "CLEVR", "DSPRITES", "FRU92", "PLACES365", "VEG200", "PATTERNNET",
    "SHAPES3D", "DOMAINNET_CLIPART", "DOMAINNET_INFOGRAPH", "DOMAINNET_PAINTING", "DOMAINNET_SKETCH", "MVTECAD_Adapt",
    "MVTECAD_Eval", "OBJECTNET", "CLRS", "ISICMELANOMA", "MTSD", "COUNTRY211", "DF20MINI", "iNATURALIST2021", "RESISC45",
    "ARTBENCH10", "DOLLARSTREET", "SNAKECLEF", "FSCOCO", "OBSC_ANIMALS", "OBSC_THINGS", "QUILT", "SynthCLIP106",
)


def _a(name: str, title: str, primer: str, year: int, about: str, kind: Kind = "classification",
       train: str = "train", test: str = "test") -> FifDataset:
    return FifDataset(name, title, kind, "adaptation", primer, year, f"{title}: {about}", train, test,
                      TIME_ORDER.index(name))


def _e(name: str, title: str, primer: str, year: int, about: str, kind: Kind = "classification") -> FifDataset:
    return FifDataset(name, title, kind, "eval_only", primer, year, f"{title}: {about}")


PHOTO = "A photo of a {}."
SAT = "A satellite image of a {}."
CATALOGUE: tuple[FifDataset, ...] = (
    # 41 adaptation datasets (40 classification + FSCOCO retrieval). Years: the reference's 15 periods.
    _a("AI2DIAGRAMS", "AI2Diagrams", PHOTO, 2016, "grade-school science diagrams by topic"),
    _a("ARTBENCH10", "ArtBench-10", "A painting of the artist {}.", 2022, "artworks by artist"),
    _a("BIRDSNAP", "Birdsnap", "A photo of the bird {}.", 2014, "North American bird species"),
    _a("CIFAR100", "CIFAR-100", PHOTO, 2009, "tiny 32 px photos of 100 object classes"),
    _a("CLEVR", "CLEVR", "A photo of synthetic shapes, with {}.", 2017, "rendered scenes of simple 3D objects"),
    _a("CLRS", "CLRS", SAT, 2020, "remote-sensing scene classes"),
    _a("COUNTRY211", "Country211", "A photo representing the country of {}.", 2021,
       "geolocation: the country a photo was taken in"),
    _a("CUB200", "CUB-200-2011", "A photo of a {}, a type of bird.", 2011, "200 fine-grained bird species"),
    _a("DF20MINI", "DF20-mini", "A photo of the fungi {}.", 2021, "Danish fungi species"),
    _a("DOLLARSTREET", "Dollar Street", PHOTO, 2022, "household objects from homes of every income level"),
    _a("DOMAINNET_CLIPART", "DomainNet-Clipart", "A clipart of a {}.", 2019, "clipart of 345 object classes"),
    _a("DOMAINNET_INFOGRAPH", "DomainNet-Infograph", "An infograph of a {}.", 2019, "infographics of 345 object classes"),
    _a("DOMAINNET_PAINTING", "DomainNet-Painting", "A painting of a {}.", 2019, "paintings of 345 object classes"),
    _a("DOMAINNET_SKETCH", "DomainNet-Sketch", "A sketch of a {}.", 2019, "sketches of 345 object classes"),
    _a("DSPRITES", "dSprites", "A black-and-white photo of a {}.", 2017, "2D sprites by shape and position"),
    _a("DTD", "DTD", "A photo of a {} texture.", 2014, "describable textures"),
    _a("FGVCAircraft", "FGVC-Aircraft", "A photo of a {}, a type of aircraft.", 2013, "aircraft model variants"),
    _a("FLOWERS102", "Flowers102", "A photo of a {}, a type of flower.", 2008, "102 flower species"),
    _a("FRU92", "FRU92", "A photo of a {}, a type of fruit.", 2017, "92 fruit varieties"),
    _a("iNATURALIST2021", "iNaturalist2021", PHOTO, 2021, "species from citizen-science photos",
       train="train_mini", test="val"),
    _a("ISICMELANOMA", "ISIC Melanoma", "A close-up photo of human skin with a mole exhibiting {}.", 2020,
       "skin lesions (melanoma vs. benign)"),
    _a("MITSTATES", "MIT-States", PHOTO, 2015, "objects in states (adjective-noun pairs)"),
    _a("MTSD", "MTSD", 'A centered photo of a "{}" traffic sign.', 2020, "Mapillary traffic sign classes", test="val"),
    _a("MVTECAD_Adapt", "MVTec-AD (base)", "A close-up photo of a {}.", 2019, "industrial objects and textures"),
    _a("MVTECAD_Eval", "MVTec-AD (faults)", "A close-up photo of a {}.", 2019, "industrial products by fault type"),
    _a("OBJECTNET", "ObjectNet", PHOTO, 2019, "objects at unusual poses, viewpoints and backgrounds"),
    _a("OBSC_ANIMALS", "Obscure Animals", "A photo of the obscure animal {}.", 2023, "rarely photographed animals"),
    _a("OBSC_THINGS", "Obscure Things", "A photo of the obscure thing {}.", 2023, "rarely photographed objects"),
    _a("OPENIMAGES", "OpenImages", PHOTO, 2016, "web photos with native captions"),
    _a("PATTERNNET", "PatternNet", SAT, 2018, "high-resolution remote-sensing scene classes"),
    _a("PLACES365", "Places365", PHOTO, 2017, "scene categories"),
    _a("PLANTVILLAGE", "PlantVillage", "A close-up photo of a {}.", 2015, "crop leaves, healthy or by disease"),
    _a("QUILT", "Quilt-1M", "A histopathology photo depicting {} pathologies.", 2023,
       "histopathology images with native captions"),
    _a("RESISC45", "RESISC45", "A satellite image of {}.", 2021, "remote-sensing scene classes"),
    _a("SHAPES3D", "Shapes3D", "A photo of a synthetic {}.", 2018, "procedural 3D shapes in coloured rooms"),
    _a("SNAKECLEF", "SnakeCLEF2023", "A photo of a {} snake.", 2022, "snake species"),
    _a("SUN397", "SUN397", PHOTO, 2010, "397 scene categories"),
    _a("SynthCLIP106", "SynthCLIP106", PHOTO, 2023, "text-to-image generated concepts"),
    _a("VEG200", "Veg200", "A photo of a {}, a type of vegetable.", 2017, "200 vegetable varieties"),
    _a("ZAPPOS50k", "UT Zappos50K", "A photo of {} shoes.", 2014, "shoes by type and brand"),
    _a("FSCOCO", "FS-COCO", "A sketch of a {}", 2022, "scene sketches paired with captions (streamed by class)",
       "retrieval"),
    # 22 evaluation-only datasets (20 classification + MSCOCO and Flickr30k retrieval)
    _e("CALTECH101", "Caltech101", PHOTO, 2004, "101 object categories"),
    _e("CALTECH256", "Caltech256", PHOTO, 2007, "256 object categories"),
    _e("CARS196", "Stanford Cars", "A photo of a {}, a type of car.", 2013, "car make, model and year"),
    _e("CIFAR10", "CIFAR-10", PHOTO, 2009, "tiny 32 px photos of 10 object classes"),
    _e("DOMAINNET_QUICKDRAW", "DomainNet-Quickdraw", "A quickdraw of a {}.", 2019, "Quick, Draw! doodles of 345 classes"),
    _e("EuroSAT", "EuroSAT", "A centered satellite photo of a {}.", 2017, "Sentinel-2 land-use classes"),
    _e("FashionMNIST", "Fashion-MNIST", "A black-and-white photo of a {}, a type of clothing.", 2017,
       "28 px grey clothing items"),
    _e("Food101", "Food-101", "A photo of a {}, a type of food.", 2014, "101 dishes"),
    _e("GTSRB", "GTSRB", 'A centered photo of a "{}" traffic sign.', 2011, "German traffic signs"),
    _e("IMAGENET", "ImageNet (val)", PHOTO, 2009, "the 1000 ImageNet-1k classes"),
    _e("IMAGENET_A", "ImageNet-A", PHOTO, 2019, "natural adversarial examples"),
    _e("IMAGENET_D", "ImageNet-D", PHOTO, 2024, "diffusion-generated hard images"),
    _e("IMAGENET_R", "ImageNet-R", PHOTO, 2020, "art, cartoons, toys and other renditions"),
    _e("IMAGENET_S", "ImageNet-Sketch", PHOTO, 2019, "sketches of ImageNet classes"),
    _e("IMAGENET_V2", "ImageNetV2", PHOTO, 2019, "a fresh ImageNet test set"),
    _e("MNIST", "MNIST", 'A black-and-white photo of the number: "{}".', 1998, "handwritten digits"),
    _e("MONKEYS10", "10 Monkey Species", "A photo of a {}, a type of monkey.", 2018, "monkey species"),
    _e("OXFORDPETS", "Oxford-IIIT Pets", "A photo of a {}, a type of pet.", 2012, "cat and dog breeds"),
    _e("STL10", "STL-10", PHOTO, 2011, "10 object classes"),
    _e("SVHN", "SVHN", 'A photo of the number: "{}".', 2011, "house numbers from Street View"),
    _e("MSCOCO", "MSCOCO", "{}", 2014, "image-caption retrieval (5 captions per image)", "retrieval"),
    _e("FLICKR30K", "Flickr30k", "{}", 2014, "image-caption retrieval (5 captions per image)", "retrieval"),
)


def catalogue() -> dict[str, FifDataset]:
    """Every FiF dataset by name (adaptation first, in FiF's alphabetical order)."""
    return {d.name: d for d in CATALOGUE}
