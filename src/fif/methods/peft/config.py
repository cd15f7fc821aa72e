"""Options of the PEFT methods (``method.<field>=value``); each dataclass checks its own ranges."""

from __future__ import annotations

from dataclasses import dataclass, field

TARGET_KINDS = ("attn", "mlp")
TOWERS = ("image", "text")


def _help(text: str, default=None, factory=None):
    if factory is not None:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


def _check_choices(name: str, values: list[str], valid: tuple[str, ...]) -> None:
    bad = [v for v in values if v not in valid]
    if bad or not values:
        raise ValueError(
            f"method.{name}={','.join(values)!r}: choose one or more of {', '.join(valid)} (comma-separated)"
        )


def _check_common(rank: int, dropout: float, targets: list[str], towers: list[str]) -> None:
    if rank < 1:
        raise ValueError(f"method.rank={rank}: the adapter rank must be >= 1 (FiF uses 4 and 64)")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"method.dropout={dropout}: must be in [0, 1)")
    _check_choices("targets", targets, TARGET_KINDS)
    _check_choices("towers", towers, TOWERS)


_TARGETS_HELP = (
    "Which Linear layers get adapters: attn (q, k, v and output projections; attention pooling) and/or mlp."
)
_TOWERS_HELP = "Which towers get adapters: image and/or text."
_MERGE_HELP = (
    "At each task end, merge the adapters into the base weights and start the next task from fresh "
    "(identity) adapters; false keeps training the same adapters across tasks."
)


@dataclass
class LoraOptions:
    """LoRA / DoRA: W' = W + (alpha/rank)·B·A on the targeted Linear layers (B = 0 at init)."""

    rank: int = _help("Adapter rank r (FiF: 4 and 64).", 4)
    alpha: float | None = _help("LoRA alpha; the update is scaled by alpha/rank. null = rank (scale 1).", None)
    dropout: float = _help("Dropout on the adapter's input (training only).", 0.0)
    targets: list[str] = _help(_TARGETS_HELP, factory=lambda: list(TARGET_KINDS))
    towers: list[str] = _help(_TOWERS_HELP, factory=lambda: list(TOWERS))
    merge_every_task: bool = _help(_MERGE_HELP, False)

    def __post_init__(self) -> None:
        _check_common(self.rank, self.dropout, self.targets, self.towers)
        if self.alpha is not None and self.alpha <= 0:
            raise ValueError(f"method.alpha={self.alpha}: must be > 0 (or null for alpha = rank)")

    @property
    def scale(self) -> float:
        return (self.alpha if self.alpha is not None else self.rank) / self.rank


@dataclass
class VeraOptions:
    """VeRA: W' = W + diag(b)·B·diag(d)·A with A, B frozen random matrices shared by all layers."""

    rank: int = _help("Rank r of the shared random projections (FiF: 4 and 64).", 4)
    dropout: float = _help("Dropout on the adapter's input (training only).", 0.0)
    d_initial: float = _help("Initial value of the scaling vector d (b starts at 0, so W' = W).", 0.1)
    projection_seed: int = _help("Seed of the shared random A and B (regenerated, not stored).", 0)
    targets: list[str] = _help(_TARGETS_HELP, factory=lambda: list(TARGET_KINDS))
    towers: list[str] = _help(_TOWERS_HELP, factory=lambda: list(TOWERS))
    merge_every_task: bool = _help(_MERGE_HELP, False)

    def __post_init__(self) -> None:
        _check_common(self.rank, self.dropout, self.targets, self.towers)


@dataclass
class GaloreOptions:
    """GaLore: AdamW with the moments of 2-D weights kept in a rank-r projection of their gradient."""

    rank: int = _help("Rank r of the gradient projection.", 64)
    update_proj_gap: int = _help("Recompute the projection (SVD of the gradient) every this many steps.", 200)
    scale: float = _help("Scale alpha of the projected-back update.", 0.25)
    targets: list[str] = _help(
        "Which 2-D weights are projected: attn and/or mlp; every other parameter trains with plain AdamW.",
        factory=lambda: list(TARGET_KINDS),
    )
    towers: list[str] = _help(
        "Towers whose attn/mlp weights are projected: image and/or text.", factory=lambda: list(TOWERS)
    )

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"method.rank={self.rank}: the projection rank must be >= 1")
        if self.update_proj_gap < 1:
            raise ValueError(f"method.update_proj_gap={self.update_proj_gap}: must be >= 1 step")
        if self.scale <= 0:
            raise ValueError(f"method.scale={self.scale}: must be > 0 (GaLore's alpha, paper 0.25)")
        _check_choices("targets", self.targets, TARGET_KINDS)
        _check_choices("towers", self.towers, TOWERS)
