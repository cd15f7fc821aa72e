"""Residual-block depth of state-dict keys, and LiNeS depth scaling.

LiNeS (Wang et al. 2024, "LiNeS: Post-training layer scaling prevents forgetting and enhances model
merging", arXiv 2410.17146) scales the task vector of the l-th of L residual blocks of a tower by
α + β·(l/(L − 1))^p: shallow blocks, which hold general features, keep little of the update; the deepest
block keeps α + β. The paper's schedule is linear (p = 1); the reference also runs quadratic (p = 2) and
sqrt (p = ½). Parameters outside blocks (embeddings, final norms, projections) get α, except a ModifiedResNet's
``attnpool``, the last layer of its tower, which gets the depth of the tower's last block.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from fif.merge.sources import MergeError

# Block containers of open_clip towers, most specific first. ``tower`` names the container, so the
# image and text towers of one model count their blocks separately; ``i`` (and ``j``) index the block.
_BLOCK_PATTERNS = (
    re.compile(r"^(?P<tower>.*?\bstages)\.(?P<i>\d+)\.blocks\.(?P<j>\d+)\."),  # timm ConvNeXt trunks
    re.compile(r"^(?P<tower>.*?\btransformer\.resblocks)\.(?P<i>\d+)\."),  # open_clip ViT and text towers
    re.compile(r"^(?P<tower>.*?\bencoder\.layers?)\.(?P<i>\d+)\."),  # Hugging Face text towers
    re.compile(r"^(?P<tower>.*?\blayer)(?P<i>\d+)\.(?P<j>\d+)\."),  # ModifiedResNet: layerN.M
    re.compile(r"^(?P<tower>.*?\bblocks)\.(?P<i>\d+)\."),  # timm ViT trunks
)


# A ModifiedResNet's attention pool sits on top of its last bottleneck: it is as deep as the last block.
_ATTNPOOL = re.compile(r"^(?P<prefix>(?:.*\.)?)attnpool\.")

# Depth schedules of LiNeS: the exponent p of l/(L − 1).
LINES_SCHEDULES = {"linear": 1.0, "quadratic": 2.0, "sqrt": 0.5}


def _match_block(key: str) -> tuple[str, tuple[int, int]] | None:
    for pattern in _BLOCK_PATTERNS:
        m = pattern.match(key)
        if m:
            j = m.groupdict().get("j")
            return m["tower"], (int(m["i"]), int(j) if j is not None else 0)
    return None


def block_depths(keys: Iterable[str]) -> dict[str, tuple[int, int] | None]:
    """Depth of each key's residual block within its tower.

    Recognises open_clip ViT and text towers (``[visual.]transformer.resblocks.N``), ModifiedResNet
    (``visual.layerS.B``: the B-th bottleneck of stage S, counted across stages; ``visual.attnpool`` gets
    the last bottleneck's depth), timm trunks
    (``blocks.N``, ``stages.S.blocks.B``) and Hugging Face text encoders (``encoder.layer.N``).

    Args:
        keys: state-dict keys of one model.

    Returns:
        ``{key: (l, L)}`` with l the 0-based index of the key's block among the L blocks of its tower,
        or ``{key: None}`` for keys outside any block.
    """
    keys = list(keys)
    matched = {key: _match_block(key) for key in keys}
    blocks_per_tower: dict[str, set[tuple[int, int]]] = {}
    for hit in matched.values():
        if hit is not None:
            blocks_per_tower.setdefault(hit[0], set()).add(hit[1])
    order = {tower: {idx: n for n, idx in enumerate(sorted(ids))} for tower, ids in blocks_per_tower.items()}
    depths: dict[str, tuple[int, int] | None] = {}
    for key, hit in matched.items():
        pool = _ATTNPOOL.match(key) if hit is None else None
        tower = f"{pool['prefix']}layer" if pool else None  # the ResNet stages' container (``visual.layer``)
        if tower in order:
            depths[key] = (len(order[tower]) - 1, len(order[tower]))
        elif hit is None:
            depths[key] = None
        else:
            tower, idx = hit
            depths[key] = (order[tower][idx], len(order[tower]))
    return depths


@dataclass
class LinesOptions:
    """LiNeS scaling of a task vector: block l of L gets α + β·(l/(L − 1))^p, other parameters α."""

    alpha: float = field(
        default=0.5, metadata={"help": "α: scale of the shallowest block and of non-block parameters."}
    )
    beta: float = field(default=0.5, metadata={"help": "β: extra scale of the deepest block over the shallowest."})
    schedule: str = field(
        default="linear", metadata={"help": "how the scale grows with depth: linear (p = 1), quadratic (p = 2), sqrt (p = ½)."}
    )

    def __post_init__(self) -> None:
        if not (math.isfinite(self.alpha) and math.isfinite(self.beta)):
            raise MergeError(f"lines alpha and beta must be finite numbers, got {self.alpha}, {self.beta}")
        if self.schedule not in LINES_SCHEDULES:
            raise MergeError(f"lines schedule {self.schedule!r} is unknown. Valid: {', '.join(LINES_SCHEDULES)}")


def lines_scale(depth: tuple[int, int] | None, alpha: float, beta: float, schedule: str = "linear") -> float:
    """α + β·(l/(L − 1))^p for block (l, L), p from ``schedule``; α outside blocks. A tower of one block
    gives it α + β.

    Raises:
        MergeError: unknown schedule.
    """
    if schedule not in LINES_SCHEDULES:
        raise MergeError(f"lines schedule {schedule!r} is unknown. Valid: {', '.join(LINES_SCHEDULES)}")
    if depth is None:
        return alpha
    layer, num_layers = depth
    return alpha + beta * (layer / (num_layers - 1) if num_layers > 1 else 1.0) ** LINES_SCHEDULES[schedule]


def lines_scales(keys: Iterable[str], alpha: float, beta: float, schedule: str = "linear") -> dict[str, float]:
    """LiNeS scale of every key (see :func:`block_depths` and :func:`lines_scale`)."""
    return {key: lines_scale(depth, alpha, beta, schedule) for key, depth in block_depths(keys).items()}
