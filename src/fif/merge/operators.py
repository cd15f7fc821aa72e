"""Merge operators: per-tensor math, each with its options dataclass and one registration line.

An operator merges the tensors of ONE key. It receives them as an iterable that loads one input at a
time, and makes a single pass, folding each input into a few accumulators of the key's size. So the
memory of a merge is one tensor's worth of accumulators per key, however many models are merged
(a 200-checkpoint merge costs what a 2-checkpoint merge costs). Operators come in two kinds:

* weight-space (``task_vectors=False``): iterates θ_1..θ_n and returns the merged tensor. These tensors
  may be the caller's own: never modify them in place.
* task-vector (``task_vectors=True``): iterates τ_i = θ_i − θ_0 for a base θ_0 and returns the merged
  task vector τ; the caller returns θ_0 + τ (scaled per block by LiNeS if asked). Each τ_i is a fresh
  tensor the operator owns and may modify in place.

All tensors are float32 (float64 if an input is float64).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from fif.merge.sources import MergeError


def _help(text: str, default: Any) -> Any:
    return field(default=default, metadata={"help": text})


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise MergeError(message)


def _count(fraction: float, n: int) -> int:
    """Number of entries a fraction of ``n`` stands for: ⌊fraction·n + ½⌋ (nearest, halves up)."""
    return int(math.floor(fraction * n + 0.5))


# ----------------------------------------------------------------------------------------------
# Registry


class Inputs(Protocol):
    """The tensors of one key, one per model, loaded as they are iterated (a list also qualifies)."""

    def __len__(self) -> int: ...

    def __iter__(self): ...


OperatorFn = Callable[[str, Inputs, Any], Tensor]


@dataclass(frozen=True)
class Operator:
    """A registered merge operator.

    Attributes:
        name: the name configs and ``fif merge`` use.
        fn: ``fn(key, inputs, options) -> Tensor`` for one key (``inputs`` are task vectors if
            ``task_vectors``).
        options: the operator's options dataclass.
        task_vectors: whether the operator needs a base and works on task vectors.
        min_models, max_models: how many models it merges (max None = any).
    """

    name: str
    fn: OperatorFn
    options: type
    task_vectors: bool
    min_models: int = 1
    max_models: int | None = None

    @property
    def summary(self) -> str:
        return (self.fn.__doc__ or "").strip().splitlines()[0]


OPERATORS: dict[str, Operator] = {}


def register_operator(
    name: str, options: type, *, task_vectors: bool, min_models: int = 1, max_models: int | None = None
) -> Callable[[OperatorFn], OperatorFn]:
    """Decorator: register a per-tensor operator under ``name``. A duplicate name fails at import."""

    def wrap(fn: OperatorFn) -> OperatorFn:
        if name in OPERATORS:
            raise ValueError(
                f"merge operator {name!r} is registered twice "
                f"({OPERATORS[name].fn.__qualname__} and {fn.__qualname__}); pick another name"
            )
        if not dataclasses.is_dataclass(options):
            raise TypeError(f"options of merge operator {name!r} must be a dataclass, got {options!r}")
        OPERATORS[name] = Operator(name, fn, options, task_vectors, min_models, max_models)
        return fn

    return wrap


# ----------------------------------------------------------------------------------------------
# Shared pieces


def weighted_sum(tensors: Iterable[Tensor], weights: Iterable[float]) -> Tensor:
    """Σ_i w_i·x_i in one pass, into one new tensor (inputs are not modified)."""
    out = None
    for t, w in zip(tensors, weights):
        if out is None:
            out = t * w
        else:
            out.add_(t, alpha=w)
    if out is None:
        raise MergeError("nothing to merge: no input tensors")
    return out


class SignedMass:
    """Running sums for TIES' sign election and disjoint mean, in one pass over the task vectors.

    Keeps P = Σ_i max(τ_i, 0), N = Σ_i min(τ_i, 0) and the counts of positive and negative entries.
    The elected sign is γ = sgn(Σ_i τ_i) = sgn(P + N); the entries agreeing with γ = +1 are exactly the
    positive ones, so the disjoint mean is P / #pos where γ > 0, N / #neg where γ < 0, and 0 where γ = 0.
    """

    def __init__(self) -> None:
        self.pos: Tensor | None = None
        self.neg: Tensor | None = None
        self.num_pos: Tensor | None = None
        self.num_neg: Tensor | None = None

    def add(self, tau: Tensor) -> None:
        if self.pos is None:
            self.pos, self.neg = tau.clamp(min=0), tau.clamp(max=0)
            self.num_pos, self.num_neg = (tau > 0).to(tau.dtype), (tau < 0).to(tau.dtype)
        else:
            self.pos.add_(tau.clamp(min=0))
            self.neg.add_(tau.clamp(max=0))
            self.num_pos.add_(tau > 0)
            self.num_neg.add_(tau < 0)

    def sign(self) -> Tensor:
        """γ = sgn(Σ_i τ_i) per coordinate (0 where the sum is 0)."""
        return torch.sign(self.pos + self.neg)

    def disjoint_mean(self) -> Tensor:
        """Per coordinate, the mean of the nonzero τ_i whose sign is γ (0 where none is).

        Consumes the sums (they are divided in place, to keep the peak memory at a few tensors).
        """
        total = self.pos + self.neg
        up = self.pos.div_(self.num_pos.clamp_(min=1))
        down = self.neg.div_(self.num_neg.clamp_(min=1))
        return torch.where(total > 0, up, down).masked_fill_(total == 0, 0)


def _check_lam(lam: float, name: str) -> None:
    _require(math.isfinite(lam), f"{name} lam must be a finite number, got {lam}")


# ----------------------------------------------------------------------------------------------
# Weighted interpolation


@dataclass
class InterpolationOptions:
    weights: list[float] | None = _help(
        "One non-negative weight per model (normalised to sum 1); null = uniform.", None
    )

    def __post_init__(self) -> None:
        if self.weights is not None:
            self.weights = [float(w) for w in self.weights]
            _require(all(w >= 0 for w in self.weights), f"interpolation weights must be >= 0, got {self.weights}")
            _require(sum(self.weights) > 0, f"interpolation weights must not all be 0, got {self.weights}")

    def check_models(self, num_models: int) -> None:
        if self.weights is not None and len(self.weights) != num_models:
            raise MergeError(
                f"interpolation got {len(self.weights)} weights for {num_models} models; give one per model"
            )


def normalized(weights: list[float] | None, n: int) -> list[float]:
    """Weights scaled to sum 1 (uniform if None)."""
    if weights is None:
        return [1.0 / n] * n
    total = math.fsum(weights)
    return [w / total for w in weights]


@register_operator("interpolation", InterpolationOptions, task_vectors=False)
def interpolation(key: str, thetas: Inputs, opts: InterpolationOptions) -> Tensor:
    """Weighted average θ = Σ_i w_i·θ_i / Σ_i w_i (model soups, Wortsman et al. 2022, arXiv 2203.05482).

    With two models and weights (1−α, α) this is linear interpolation; FiF's EMA-merge and FT-merge use it.
    """
    return weighted_sum(thetas, normalized(opts.weights, len(thetas)))


# ----------------------------------------------------------------------------------------------
# SLERP


@dataclass
class SlerpOptions:
    t: float = _help("Position between the two models: 0 gives the first, 1 the second.", 0.5)
    parallel_eps: float = _help("Fall back to linear interpolation when 1 − |cos Ω| < parallel_eps.", 1e-5)

    def __post_init__(self) -> None:
        _require(0.0 <= self.t <= 1.0, f"slerp t must be in [0, 1], got {self.t}")
        _require(0.0 <= self.parallel_eps < 1.0, f"slerp parallel_eps must be in [0, 1), got {self.parallel_eps}")


def slerp_tensor(a: Tensor, b: Tensor, t: float, parallel_eps: float = 1e-5) -> Tensor:
    """Spherical interpolation of two tensors viewed as flat vectors (Shoemake 1985).

    cos Ω = ⟨a, b⟩ / (‖a‖·‖b‖);  slerp(a, b; t) = sin((1−t)Ω)/sin Ω · a + sin(tΩ)/sin Ω · b.
    Falls back to lerp a + t·(b − a) when a or b is zero or they are nearly (anti)parallel
    (1 − |cos Ω| < parallel_eps), where sin Ω → 0. t = 0 and t = 1 return copies of a and b exactly.
    """
    if t == 0.0:
        return a.clone()
    if t == 1.0:
        return b.clone()
    af, bf = a.reshape(-1), b.reshape(-1)
    norm_product = float(af.norm()) * float(bf.norm())  # host sync: offline merges only
    cos = float(af @ bf) / norm_product if norm_product > 0 else 1.0
    cos = max(-1.0, min(1.0, cos))
    if 1.0 - abs(cos) < parallel_eps:
        return torch.lerp(a, b, t)
    omega = math.acos(cos)
    sin_omega = math.sin(omega)
    return a * (math.sin((1.0 - t) * omega) / sin_omega) + b * (math.sin(t * omega) / sin_omega)


@register_operator("slerp", SlerpOptions, task_vectors=False, min_models=2, max_models=2)
def slerp(key: str, thetas: Inputs, opts: SlerpOptions) -> Tensor:
    """Spherical linear interpolation of two models, tensor by tensor (Shoemake 1985; as in mergekit).

    θ = sin((1−t)Ω)/sin Ω · θ_1 + sin(tΩ)/sin Ω · θ_2 with Ω the angle between the two tensors.
    """
    a, b = thetas
    return slerp_tensor(a, b, opts.t, opts.parallel_eps)


# ----------------------------------------------------------------------------------------------
# Task arithmetic


@dataclass
class TaskArithmeticOptions:
    lam: float = _help("λ: scale of the summed task vectors.", 1.0)

    def __post_init__(self) -> None:
        _check_lam(self.lam, "task_arithmetic")


@register_operator("task_arithmetic", TaskArithmeticOptions, task_vectors=True)
def task_arithmetic(key: str, taus: Inputs, opts: TaskArithmeticOptions) -> Tensor:
    """Task arithmetic θ = θ_0 + λ·Σ_i τ_i, τ_i = θ_i − θ_0 (Ilharco et al. 2023, arXiv 2212.04089)."""
    return weighted_sum(taus, [opts.lam] * len(taus))


# ----------------------------------------------------------------------------------------------
# TIES


@dataclass
class TiesOptions:
    k: float = _help("Fraction of each task vector's entries kept (largest |τ|), per tensor, in (0, 1].", 0.2)
    lam: float = _help("λ: scale of the merged task vector.", 1.0)

    def __post_init__(self) -> None:
        _require(0.0 < self.k <= 1.0, f"ties k must be in (0, 1], got {self.k}")
        _check_lam(self.lam, "ties")


def trim_top_k_(tau: Tensor, k: float) -> Tensor:
    """In place: keep the max(1, ⌊k·n + ½⌋) largest-magnitude of the n entries of ``tau``, zero the rest.

    Equal magnitudes at the cut are kept in an unspecified (but deterministic on CPU) order.
    """
    n = tau.numel()
    keep = max(1, _count(k, n))
    if keep >= n:
        return tau
    flat = tau.view(-1)
    drop = torch.ones(n, dtype=torch.bool, device=tau.device)
    drop[flat.abs().topk(keep, sorted=False).indices] = False
    return flat.masked_fill_(drop, 0).view(tau.shape)


@register_operator("ties", TiesOptions, task_vectors=True)
def ties(key: str, taus: Inputs, opts: TiesOptions) -> Tensor:
    """TIES-Merging (Yadav et al. 2023, arXiv 2306.01708): trim, elect sign, disjoint mean.

    1. trim: τ̂_i keeps the top-k fraction of |τ_i| (per tensor here; the paper trims the whole model);
    2. elect: γ = sgn(Σ_i τ̂_i);
    3. disjoint mean: τ_m = Σ_{i∈A} τ̂_i / |A| with A = {i : sgn(τ̂_i) = γ, τ̂_i ≠ 0}, per coordinate;
    θ = θ_0 + λ·τ_m.
    """
    mass = SignedMass()
    for tau in taus:
        mass.add(trim_top_k_(tau, opts.k))
    return opts.lam * mass.disjoint_mean()


# ----------------------------------------------------------------------------------------------
# DARE


@dataclass
class DareOptions:
    p: float = _help("Drop probability of each task-vector entry, in [0, 1).", 0.9)
    seed: int = _help("Seed of the drop masks (each key and model gets its own stream).", 0)
    combine: Literal["task_arithmetic", "ties"] = _help(
        "How the sparsified task vectors are combined: λ·Σ (task_arithmetic) or sign election + "
        "disjoint mean (ties).",
        "task_arithmetic",
    )
    lam: float = _help("λ: scale of the combined task vector.", 1.0)

    def __post_init__(self) -> None:
        _require(0.0 <= self.p < 1.0, f"dare p must be in [0, 1), got {self.p}")
        _require(
            self.combine in ("task_arithmetic", "ties"),
            f"dare combine must be 'task_arithmetic' or 'ties', got {self.combine!r}",
        )
        _check_lam(self.lam, "dare")


def mask_generator(seed: int, key: str, index: int, device: torch.device) -> torch.Generator:
    """A generator for (seed, key, model index), independent of the order keys are merged in."""
    digest = hashlib.blake2b(f"{seed}\0{key}\0{index}".encode(), digest_size=8).digest()
    gen = torch.Generator(device=device)
    gen.manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
    return gen


def dare_drop_(tau: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """In place: τ̃ = m ⊙ τ / (1 − p) with m_j ~ Bernoulli(1 − p); unbiased, E[τ̃] = τ."""
    if p == 0.0:
        return tau
    drop = torch.rand(tau.shape, generator=generator, device=tau.device, dtype=tau.dtype) < p
    return tau.masked_fill_(drop, 0).div_(1.0 - p)


@register_operator("dare", DareOptions, task_vectors=True)
def dare(key: str, taus: Inputs, opts: DareOptions) -> Tensor:
    """DARE, drop and rescale (Yu et al. 2024, arXiv 2311.03099), then task arithmetic or TIES.

    τ̃_i = m_i ⊙ τ_i / (1 − p), m_i ~ Bernoulli(1 − p) (seeded per key and model);
    combine = task_arithmetic: θ = θ_0 + λ·Σ_i τ̃_i;
    combine = ties: θ = θ_0 + λ·disjoint_mean(τ̃, sgn(Σ_i τ̃_i)) (TIES without the trim).
    """
    dropped = (dare_drop_(t, opts.p, mask_generator(opts.seed, key, i, t.device)) for i, t in enumerate(taus))
    if opts.combine == "ties":
        mass = SignedMass()
        for t in dropped:
            mass.add(t)
        return opts.lam * mass.disjoint_mean()
    return weighted_sum(dropped, [opts.lam] * len(taus))


# ----------------------------------------------------------------------------------------------
# Breadcrumbs


@dataclass
class BreadcrumbsOptions:
    beta: float = _help("Fraction of smallest-|τ| entries masked out.", 0.85)
    gamma: float = _help("Fraction of largest-|τ| entries (outliers) masked out.", 0.01)
    lam: float = _help("λ: scale of the summed masked task vectors.", 1.0)
    per_row: bool = _help(
        "Rank magnitudes within each row (dim 0) of a ≥2-D tensor instead of the whole tensor.", False
    )

    def __post_init__(self) -> None:
        _require(
            0.0 <= self.beta <= 1.0 and 0.0 <= self.gamma <= 1.0,
            f"breadcrumbs beta and gamma must be in [0, 1], got {self.beta}, {self.gamma}",
        )
        _require(
            self.beta + self.gamma < 1.0,
            f"breadcrumbs beta + gamma must be < 1 (else nothing is kept), got {self.beta + self.gamma}",
        )
        _check_lam(self.lam, "breadcrumbs")


def breadcrumbs_mask(tau: Tensor, beta: float, gamma: float, per_row: bool = False) -> Tensor:
    """Boolean mask of the entries of ``tau`` kept by Breadcrumbs.

    Of n entries (per row (dim 0) if ``per_row`` and ``tau`` has ≥2 dims, else of the whole tensor) it
    drops the ⌊β·n + ½⌋ smallest and the ⌊γ·n + ½⌋ largest |τ|. Equal magnitudes at a cut are ranked
    in an unspecified (deterministic on CPU) order.
    """
    rows = tau.abs().reshape(tau.shape[0], -1) if per_row and tau.dim() >= 2 else tau.abs().reshape(1, -1)
    n = rows.shape[1]
    low, high = _count(beta, n), _count(gamma, n)
    mask = torch.zeros(rows.shape, dtype=torch.bool, device=tau.device)
    if low + high < n:
        # the n − low largest survive the bottom cut; of those, the top ``high`` are outliers
        mask.scatter_(1, rows.topk(n - low, dim=1, sorted=False).indices, True)
        if high:
            mask.scatter_(1, rows.topk(high, dim=1, sorted=False).indices, False)
    return mask.view(tau.shape)


@register_operator("breadcrumbs", BreadcrumbsOptions, task_vectors=True)
def breadcrumbs(key: str, taus: Inputs, opts: BreadcrumbsOptions) -> Tensor:
    """Model Breadcrumbs (Davari & Belilovsky 2023, arXiv 2312.06795).

    m_i masks the β fraction of smallest and the γ fraction of largest |τ_i| per tensor (or row);
    θ = θ_0 + λ·Σ_i m_i ⊙ τ_i.
    """
    masked = (t.masked_fill_(~breadcrumbs_mask(t, opts.beta, opts.gamma, opts.per_row), 0) for t in taus)
    return weighted_sum(masked, [opts.lam] * len(taus))


# ----------------------------------------------------------------------------------------------
# MagMax


@dataclass
class MagMaxOptions:
    lam: float = _help("λ: scale of the selected task vector.", 1.0)

    def __post_init__(self) -> None:
        _check_lam(self.lam, "magmax")


@register_operator("magmax", MagMaxOptions, task_vectors=True)
def magmax(key: str, taus: Inputs, opts: MagMaxOptions) -> Tensor:
    """MagMax (Marczak et al. 2024, arXiv 2407.06322): per coordinate the τ_i of largest magnitude.

    τ_j = τ_{i*, j} with i* = argmax_i |τ_{i, j}| (the earliest model wins ties); θ = θ_0 + λ·τ.
    """
    best: Tensor | None = None
    best_abs: Tensor | None = None
    for tau in taus:
        if best is None:
            best, best_abs = tau, tau.abs()
            continue
        tau_abs = tau.abs()
        larger = tau_abs > best_abs
        best = torch.where(larger, tau, best)
        best_abs = torch.where(larger, tau_abs, best_abs)
    if best is None:
        raise MergeError("nothing to merge: no input tensors")
    return opts.lam * best


# ----------------------------------------------------------------------------------------------
# Model Stock


@dataclass
class ModelStockOptions:
    """Model Stock has no options: the ratio comes from the geometry of the task vectors."""


def model_stock_ratio(cos: float, k: int) -> float:
    """t = k·cos θ / (1 + (k − 1)·cos θ), with cos θ clamped to [0, 1] so that t ∈ [0, 1]."""
    cos = min(1.0, max(0.0, cos))
    return k * cos / (1.0 + (k - 1) * cos)


def sum_and_mean_pairwise_cosine(taus: Iterable[Tensor]) -> tuple[Tensor, int, float]:
    """(Σ_i τ_i, k, mean over pairs i < j of cos(τ_i, τ_j)) in one pass; a zero τ has cosine 0 with all.

    Uses Σ_{i<j} cos(τ_i, τ_j) = (‖Σ_i τ_i/‖τ_i‖‖² − m) / 2 over the m nonzero τ_i, so no pair is
    ever held in memory together.
    """
    total: Tensor | None = None
    unit_sum: Tensor | None = None
    k = nonzero = 0
    for tau in taus:
        k += 1
        norm = float(tau.norm())  # host sync: offline merges only
        total = tau.clone() if total is None else total.add_(tau)
        if norm > 0:
            nonzero += 1
            unit_sum = tau / norm if unit_sum is None else unit_sum.add_(tau, alpha=1.0 / norm)
    if total is None or k < 2:
        raise MergeError(f"model stock needs at least 2 task vectors, got {k}")
    pair_cos_sum = (float(unit_sum.square().sum()) - nonzero) / 2 if unit_sum is not None else 0.0
    return total, k, pair_cos_sum / (k * (k - 1) / 2)


@register_operator("model_stock", ModelStockOptions, task_vectors=True, min_models=2)
def model_stock(key: str, taus: Inputs, opts: ModelStockOptions) -> Tensor:
    """Model Stock (Jang et al. 2024, arXiv 2403.19522): pull the average of k models toward the base.

    θ = t·θ_avg + (1 − t)·θ_0, i.e. τ = t·mean_i τ_i, with t = k·cos θ / (1 + (k − 1)·cos θ) and θ the
    angle between the task vectors (mean pairwise cosine for k > 2), per tensor.
    """
    total, k, cos = sum_and_mean_pairwise_cosine(taus)
    return total.mul_(model_stock_ratio(cos, k) / k)
