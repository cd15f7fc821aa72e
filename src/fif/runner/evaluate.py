"""Evaluate a model named by a config (``fif eval``): build the benchmark, the evaluator and the model from
the config's sections, score every dataset."""

from __future__ import annotations

import time

from fif.config.components import eval_workers
from fif.core.device import resolve_device, resolve_precision
from fif.core.finite import NonFiniteWeightsError, describe_nonfinite, nonfinite_counts
from fif.data.registry import benchmark_options, get_benchmark
from fif.eval.metrics import stream_point
from fif.eval.zeroshot import EvalResult, Evaluator
from fif.runner.setup import load_model


def evaluate_config(cfg, subset: bool = False, on_event=None, allow_nonfinite: bool = False,
                    split: str = "test") -> EvalResult:
    """Evaluate the model of ``cfg.model`` (a base model, or weights given as ``model.pretrained``) on
    ``cfg.eval.datasets`` (default: every adaptation and eval-only dataset of ``cfg.data.benchmark``).

    Args:
        cfg: a validated :class:`fif.config.Config`; uses model, data, eval, train.precision, run.device/seed.
        subset: score FiF's fixed stream subsets instead of the full test sets.
        on_event: receives ``base_model`` progress events when the mini base model must be built.
        allow_nonfinite: evaluate weights holding NaN/inf (a diverged model) instead of refusing them.
        split: the split scored (``test``; a study's validation may score another draw or split).

    Raises:
        ModelLoadError, KeyError, ValueError: bad model, dataset or benchmark names (with the valid choices).
        NonFiniteWeightsError: the weights hold NaN/inf and ``allow_nonfinite`` is False.
    """
    device = resolve_device(cfg.run.device)
    precision = cfg.eval.precision if cfg.eval.precision != "auto" else resolve_precision(cfg.train.precision, device)
    benchmark = get_benchmark(cfg.data.benchmark, **benchmark_options(cfg.data.options, cfg.data.root))
    evaluator = Evaluator(
        benchmark, cfg.eval.datasets, cfg.eval.batch_size, cfg.eval.subset_frac, cfg.eval.min_samples,
        cfg.eval.ensemble, seed=cfg.run.seed, num_workers=eval_workers(cfg.eval, cfg.data), split=split,
    )
    clip = load_model(cfg, device, on_event)
    if not allow_nonfinite and (bad := nonfinite_counts(clip.model.state_dict())):
        raise NonFiniteWeightsError(
            f"{cfg.model.pretrained}: the weights hold {describe_nonfinite(bad)} (a diverged model scores like chance); "
            "pass --allow-nonfinite to evaluate them anyway"
        )
    t0 = time.perf_counter()
    try:
        scores = evaluator.run(clip, device, subset=subset, precision=precision)
    finally:
        evaluator.close()
    seconds = time.perf_counter() - t0
    point = stream_point({s.dataset: s.score for s in scores}, {s.dataset: s.role for s in scores})
    return EvalResult(
        scores, point, seconds, cfg.model.arch, cfg.model.pretrained, benchmark.name, subset, precision, str(device)
    )
