"""Captions for the mini world, written from each image's factors with several templates per dataset.

Like FiF's procedural captions for Shapes3D and dSprites, every caption is grounded in the factors
that drew the image. Each image gets a short list of captions: the first is the dataset's canonical
full-attribute template (evaluation and retrieval use it), the others are other phrasings. Training
draws one at random, so the list's composition is the text distribution.

Captions naming only one attribute ("a red shape") are what zero-shot prompts look like, but many
images in a batch match them, which makes in-batch false negatives; so they are a minority of each
list and most captions name every attribute.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np

_ARTICLE = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])")

# --- the pretraining world ------------------------------------------------------------------------
# Why the pool's captions look like this: contrastive learning takes the easy features first and then
# has little reason to learn a hard one ("feature suppression"). Shape is the hard factor here. When
# captions named colour, size, position *and* background, those 600 combinations already told the
# images of a batch of 128 apart, and the base model stayed near chance on shape after 900 steps. So
# the background is drawn but never named (a nuisance, like lighting in photos): full captions then
# have 120 non-shape combinations, a batch repeats most of them, and only the shape separates those
# images. Captions naming the shape alone or with one other attribute add direct pressure on shape.
POOL_FULL: tuple[str, ...] = (
    "a {size} {color} {shape} in the {position}",
    "a {color} {shape}, {size}, in the {position}",
    "a picture of a {size} {color} {shape} in the {position}",
    "in the {position}: a {size} {color} {shape}",
    "a {size} {shape} in the {position}, colored {color}",
)
# Shape plus one other attribute.
POOL_PAIRS: tuple[str, ...] = (
    "a {color} {shape}",
    "a {size} {shape}",
    "a {shape} in the {position}",
)
# The shape alone, in the zero-shot prompts' words (see the primers in world.py).
POOL_SHAPE: tuple[str, ...] = (
    "a drawing of a {shape}",
    "a {shape}",
    "a picture of a {shape}",
)
# One other attribute alone, worded like the zero-shot primers.
POOL_SINGLES: tuple[str, ...] = (
    "a {color} shape",
    "a {size} shape",
    "a shape in the {position}",
)

# Printed digits, a minority of the pool: the coarse version of the handwritten-digits domain (so the
# base model starts above chance on mini_digits) and what mini_numbers' seven-segment digits generalise from.
POOL_DIGITS: tuple[str, ...] = (
    'the number "{digit}" in {color}',
    'the number "{digit}"',
    'a printed {color} digit "{digit}"',
    'a {color} "{digit}"',
)

# Printed lower-case letters, a smaller minority of the pool: the coarse version of mini_letters' capitals
# (the tokenizer lower-cases, so 'the letter "a"' and 'the letter "A"' read the same; some capitals look
# like their lower case, c/C, s/S, x/X, most do not), as printed digits are of handwritten ones.
POOL_LETTERS: tuple[str, ...] = (
    'the letter "{letter}" in {color}',
    'the letter "{letter}"',
    'a printed {color} letter "{letter}"',
    'a {color} "{letter}"',
)

# --- evaluation-only sets: base concepts under held-out shifts (canonical caption first) ----------------
FADED: tuple[str, ...] = (
    "a faded {size} {color} {shape} in the {position}",
    "a pale {color} {shape}",
    "a {size} {color} {shape}, faded",
)
BLURRED: tuple[str, ...] = (
    "a blurry {size} {color} {shape} in the {position}",
    "a blurry photo of a {size} {shape}",
    "a {size} {color} {shape}, out of focus",
)
CLUTTERED: tuple[str, ...] = (
    "a {size} {color} {shape} in the {position} among specks",
    "a {color} {shape} on a cluttered background",
    "a {shape} in the {position}, with specks around it",
)
PAIR_SCENES: tuple[str, ...] = (
    "a {size_a} {color_a} {shape_a} in the {position_a} and a {size_b} {color_b} {shape_b} in the {position_b}",
    "a {size_b} {color_b} {shape_b} in the {position_b} and a {size_a} {color_a} {shape_a} in the {position_a}",
)
SEVEN_SEGMENT: tuple[str, ...] = (
    'the number "{digit}" on a {color} display',
    'a digital "{digit}"',
    'the number "{digit}" in {color} segments',
)

# --- adaptation sets ----------------------------------------------------------------------------------
NOVEL_SHAPES: tuple[str, ...] = (
    "a {size} {color} {shape} in the {position} on a {background} background",
    "a drawing of a {shape}",
    "a {color} {shape} in the {position}",
    "a {size} {shape} on a {background} background",
)
FILLS: tuple[str, ...] = (
    "a {fill} {color} {shape} on a {background} background",
    "a {color} {shape} with a {fill} fill",
    "a {fill} shape",
    "a {shape} that is {fill}",
)
COUNTING: tuple[str, ...] = (
    "{count} {color} {shapes} on a {background} background",
    "a picture with {count} shapes",
    "there are {count} {color} {shapes}",
    "{count} {shapes}",
)
DIGITS: tuple[str, ...] = (
    'a handwritten {color} digit "{digit}" on a {background} background',
    'a handwritten digit "{digit}"',
    "the number {digit} written in {color}",
    'a {color} "{digit}" on a {background} background',
)
LETTERS: tuple[str, ...] = (
    'the letter "{letter}" in {color} on a {background} background',
    'the letter "{letter}"',
    "a {color} capital {letter}",
    'a {weight} letter "{letter}" in {color}',
)
DSPRITES: tuple[str, ...] = (
    "a white {shape} located in the {quadrant}, rotated by {degrees} degrees",
    "a sprite of a {shape} located in the {quadrant}",
    "a {scale} white {shape} located in the {quadrant}",
    "{shape} located in the {quadrant} on a black background",
)
SHAPES3D: tuple[str, ...] = (
    "a {color} {solid} on a {floor} floor with a {wall} wall",
    "a rendering of a {solid} in a room",
    "a {color} {solid} in a room with a {wall} wall",
    "a {solid} standing on a {floor} floor",
)
RELATIONS: tuple[str, ...] = (
    "a red {shape_a} {relation} a blue {shape_b}",
    "a red shape {relation} a blue shape",
    "the red {shape_a} is {relation} the blue {shape_b}",
    "a blue {shape_b} and a red {shape_a} {relation} it",
)
SHADES: tuple[str, ...] = (
    "a {shade} {shape} on a {background} background",
    "a {shade} shape",
    "a {size} {shape} colored {shade}",
    "a {shape} in {shade}",
)
# No left / right: those words belong to the evaluation-only positions (see world.ON_PURPOSE_OVERLAPS).
SCENES: tuple[str, ...] = (
    "a {color_a} {shape_a} beside a {color_b} {shape_b}",
    "a {color_b} {shape_b} beside a {color_a} {shape_a}",
    "a {color_a} {shape_a} and a {color_b} {shape_b} on a {background} background",
)

PLURALS: dict[str, str] = {"cross": "crosses"}


def plural(noun: str) -> str:
    """English plural of a shape noun (``cross`` → ``crosses``, ``star`` → ``stars``)."""
    return PLURALS.get(noun, noun + "s")


def caption_lists(
    rng: np.random.Generator,
    fields: Mapping[str, Sequence[str] | np.ndarray],
    templates: Sequence[str],
    per_image: int,
    extra: Sequence[tuple[Sequence[str], int]] = (),
) -> list[list[str]]:
    """Fill templates with each image's factors.

    Args:
        rng: random source for the choice of templates.
        fields: per-image strings for each ``{field}`` the templates use (each of length N).
        templates: the dataset's templates; ``templates[0]`` is the canonical one and always comes first.
        per_image: how many captions from ``templates`` each image gets (the first is canonical,
            the rest distinct random others; capped at ``len(templates)``).
        extra: further ``(templates, count)`` groups (e.g. partial captions): each image gets ``count``
            distinct templates of each group, after the others.

    Returns:
        N lists of captions.

    Raises:
        KeyError: a template uses a field that ``fields`` lacks.
    """
    n = len(next(iter(fields.values())))
    cols = {k: np.asarray(v, dtype=object) for k, v in fields.items()}
    others = min(per_image, len(templates)) - 1
    picks = _distinct(rng, n, len(templates) - 1, others) + 1
    groups = [(t, _distinct(rng, n, len(t), min(k, len(t)))) for t, k in extra]
    out: list[list[str]] = []
    for i in range(n):
        values = {k: c[i] for k, c in cols.items()}
        caps = [templates[0].format(**values)]
        caps.extend(templates[j].format(**values) for j in picks[i])
        for group, picked in groups:
            caps.extend(group[j].format(**values) for j in picked[i])
        out.append([_ARTICLE.sub(r"\1n ", c) for c in caps])
    return out


def _distinct(rng: np.random.Generator, n: int, choices: int, k: int) -> np.ndarray:
    # k distinct indices in [0, choices) per row: the first k of a random permutation per row.
    if k <= 0 or choices <= 0:
        return np.zeros((n, 0), dtype=np.int64)
    return np.argsort(rng.random((n, choices)), axis=1)[:, :k]
