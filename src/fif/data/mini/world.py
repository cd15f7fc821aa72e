"""The mini world's datasets: what each one draws, its classes, primer, captions and release year.

The structure mirrors FiF: one *pretraining pool* that builds the base CLIP and feeds pretraining replay
(:mod:`fif.data.mini.base_world`); *evaluation-only* sets that read concepts the base model learned from
the pool, under shifts the pool never shows (faded, blurred, cluttered, held-out colour-shape pairs, two
objects, seven-segment digits), so the base model knows them through generalisation and fine-tuning can
erode them; and *adaptation* sets (:mod:`fif.data.mini.adaptation`), each a subdomain with new
concepts, a few of them coarse versions of what the pool shows. One retrieval set is in each group.
"""

from __future__ import annotations

import re

from fif.data.mini import adaptation as A
from fif.data.mini import base_world as B
from fif.data.mini import render as R
from fif.data.mini.base_world import CaptionMix, Studio
from fif.data.mini.factors import (  # noqa: F401  (re-exported: the world's vocabulary)
    BASE_SHAPES,
    COUNTS,
    DEFAULT_LETTERS,
    DIGITS,
    FILL_CLASSES,
    NOVEL_SHAPES,
    POSITIONS,
    QUADRANTS,
    RELATIONS,
    SHADE_HUES,
    SHADES,
    SIZES,
    SPRITES,
    Draw,
    MiniDataset,
)
from fif.data.mini.adaptation import digit_split  # noqa: F401  (re-exported)
from fif.data.mini.solids import SOLIDS
from fif.data.specs import DatasetSpec

__all__ = ["POOL_NAME", "ON_PURPOSE_OVERLAPS", "catalogue", "concept_words", "CaptionMix", "Studio", "MiniDataset", "Draw"]

POOL_NAME = "mini_pretrain"

# The adaptation sets whose class names share concept words with evaluation-only class names, on purpose,
# the words and why. Any other shared word is a collision: training the adaptation set would move the
# meaning of an evaluation concept through its words alone (world v1's relations "left of" / "right of"
# took words from the positions this way). tests/data/mini/test_mini_world.py holds the catalogue to it.
ON_PURPOSE_OVERLAPS: dict[str, tuple[frozenset[str], str]] = {
    "mini_digits": (frozenset(DIGITS), "handwritten digits are a new domain of the digits mini_numbers reads "
                    "(the pool prints them): coarse prior knowledge"),
    "mini_dsprites": (frozenset({"square", "top", "bottom", "left", "right"}), "dSprites' quadrants are the pool's "
                      "corner positions and its square a base shape: coarse prior knowledge"),
    "mini_shades": (frozenset(SHADE_HUES), "light and dark shades refine four pool colours: coarse prior knowledge"),
}
_FILLER_WORDS = frozenset({"a", "an", "the", "in", "of", "located"})


def concept_words(classname: str) -> set[str]:
    """The lower-case words of a class name that carry meaning (articles and prepositions dropped)."""
    return {w for w in re.findall(r"[\w-]+", classname.lower()) if w not in _FILLER_WORDS}


def catalogue(
    letters_alphabet: str = DEFAULT_LETTERS, mix: CaptionMix = CaptionMix(), studio: Studio = Studio(), pool_digits: float = 0.12,
    pool_letters: float = 0.06,
) -> dict[str, MiniDataset]:
    """Every mini-world dataset by name: the pool, then eval-only, then adaptation sets.

    Args:
        letters_alphabet: the capital letters of ``mini_letters`` (its classes).
        mix: captions per pool object image of each kind.
        studio: shares of the pool's object images drawn as studio shots (see :class:`Studio`).
        pool_digits: share of the pool that shows printed digits.
        pool_letters: share of the pool that shows printed lower-case letters.

    Returns:
        name → :class:`MiniDataset`, in a stable order.

    Raises:
        ValueError: the alphabet is empty or repeats a letter.
    """
    if not letters_alphabet or len(set(letters_alphabet)) != len(letters_alphabet) or not letters_alphabet.isalpha():
        raise ValueError(f"mini benchmark option letters={letters_alphabet!r}: give distinct letters, e.g. {DEFAULT_LETTERS!r}")
    sets = [
        # (name, kind, role, classes, primer, templates, year, sampler, description)
        (POOL_NAME, "retrieval", "pretraining", (), "a {}", (), 2009, B.pool(mix, studio, pool_digits, pool_letters),
         "the base world: 6 shapes x 8 colours x 3 sizes x 5 positions (12 colour-shape pairs held out) on 5 "
         "(unnamed) backgrounds, and printed digits and lower-case letters"),
        ("mini_colors", "classification", "eval_only", R.COLOR_NAMES, "a {} shape", ("a {} object", "something {}"), 2012,
         B.faded_colors, "colour of a faded base shape (the pool's are opaque)"),
        ("mini_shapes", "classification", "eval_only", BASE_SHAPES, "a drawing of a {}", ("a {}", "a picture of a {}"), 2012,
         B.held_out_shapes, "base shapes in colours the pool never gives them"),
        ("mini_sizes", "classification", "eval_only", tuple(SIZES), "a {} shape", ("a {} object", "something {}"), 2013,
         B.blurred_sizes, "size of a base shape in a blurred image"),
        ("mini_positions", "classification", "eval_only", tuple(POSITIONS), "a shape in the {}", ("something in the {}",), 2013,
         B.cluttered_positions, "where a base shape is, on a cluttered background"),
        ("mini_numbers", "classification", "eval_only", DIGITS, 'the number "{}"', ('a "{}"',), 2014,
         B.seven_segment_numbers, "seven-segment digits (the pool prints digits in a font)"),
        ("mini_captions", "retrieval", "eval_only", (), "a {}", (), 2015, B.pair_scenes,
         "image-caption retrieval of two base objects at once (the pool shows one)"),
        ("mini_digits", "classification", "adaptation", DIGITS, 'a handwritten digit "{}"', ("the number {}",), 1998,
         A.digits, "handwritten digits (scikit-learn glyphs; train and test glyphs disjoint)"),
        ("mini_letters", "classification", "adaptation", tuple(letters_alphabet), 'the letter "{}"', ("a capital {}",), 2004,
         A.letters(letters_alphabet), "capital letters from Pillow's bundled font"),
        ("mini_shades", "classification", "adaptation", SHADES, "a {} shape", ("a shape in {}",), 2011,
         A.shades, "light and dark shades of four pool colours"),
        ("mini_novel_shapes", "classification", "adaptation", NOVEL_SHAPES, "a drawing of a {}", ("a {}",), 2016,
         A.novel_shapes, "eight shapes the base world lacks"),
        ("mini_fills", "classification", "adaptation", FILL_CLASSES, "a {} shape", ("a shape with a {} fill",), 2017,
         A.fills, "fill patterns inside base shapes"),
        ("mini_counting", "classification", "adaptation", COUNTS, "a picture with {} shapes", ("{} shapes",), 2017,
         A.counting, "how many shapes (one to six)"),
        ("mini_dsprites", "classification", "adaptation",
         tuple(f"{s} located in the {q}" for s in SPRITES for q in QUADRANTS), "a sprite of a {}", ("{}",), 2017,
         A.dsprites, "dSprites-like white sprites on black, shape x quadrant"),
        ("mini_shapes3d", "classification", "adaptation", SOLIDS, "a rendering of a {} in a room", ("a {}",), 2018,
         A.shapes3d, "Shapes3D-like rooms with a shaded solid"),
        ("mini_relations", "classification", "adaptation", RELATIONS, "a red shape {} a blue shape", ("red {} blue",), 2019,
         A.relations, "where a red shape is relative to a blue one: above, below, beside or inside it"),
        ("mini_scenes", "retrieval", "adaptation", (), "a {}", (), 2020, A.scenes,
         "image-caption retrieval of two novel shapes side by side"),
    ]
    out = {}
    for name, kind, role, classes, primer, templates, year, sampler, desc in sets:
        spec = DatasetSpec(name=name, kind=kind, role=role, classnames=tuple(classes), primer=primer, templates=tuple(templates),
                           release_year=year, source="mini", description=desc)
        out[name] = MiniDataset(spec, sampler)
    return out
