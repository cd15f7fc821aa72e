"""The paper's studies by name, as study mappings (the format of a study file, :mod:`fif.studies.spec`).

Each one tests the findings of one part of the paper (facts §3–§7 of the reference notes; the claims are
in each study's ``compare``). Grids are written as multiples of the preset's values (``x0.5``), so the
same study runs on ``mini`` and on ``fif``. ``fif study NAME --print`` shows one as YAML, a template for
a study file of your own.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

from fif.core.names import unknown_name_message

LR3 = {"train.lr": ["x0.5", "x1", "x2"]}
LR_PEFT = {"train.lr": ["x1", "x4", "x16"]}  # adapters and selected parameters need larger steps
NO_MERGE = "merge.preset=none"


METHODS: dict[str, Any] = {
    "name": "methods",
    "description": "Update methods at equal budget in MAFs: full fine-tuning against parameter-selective, "
                   "PEFT and regularization methods (each tuned on its own grid).",
    "paper": "§7: fine-tuning accumulates most; PEFT retains well but learns little under the budget; "
             "regularizers are compute-starved.",
    "overrides": [NO_MERGE],
    "tune": LR3,
    "variants": [
        {"name": "finetune", "overrides": ["method.name=finetune"]},
        {"name": "lnfit", "overrides": ["method.name=lnfit"], "tune": LR_PEFT},
        {"name": "lora", "overrides": ["method.name=lora", "method.rank=4"], "tune": LR_PEFT},
        {"name": "ewc", "overrides": ["method.name=ewc"],
         "tune": {"train.lr": ["x1"], "method.strength": ["1e4", "1e5", "1e6"]}},
        {"name": "si", "overrides": ["method.name=si"],
         "tune": {"train.lr": ["x1"], "method.strength": ["10", "100", "1000"]}},
    ],
    "compare": [
        {"claim": "fine-tuning accumulates more than LoRA", "a": "finetune", "b": "lora", "metric": "a_ka",
         "expect": "higher"},
        {"claim": "fine-tuning accumulates more than LNFit", "a": "finetune", "b": "lnfit", "metric": "a_ka",
         "expect": "higher"},
        {"claim": "fine-tuning accumulates more than EWC", "a": "finetune", "b": "ewc", "metric": "a_ka",
         "expect": "higher"},
        {"claim": "fine-tuning accumulates more than SI", "a": "finetune", "b": "si", "metric": "a_ka",
         "expect": "higher"},
        {"claim": "LoRA (PEFT) retains more than fine-tuning", "a": "lora", "b": "finetune", "metric": "a_zs",
         "expect": "higher"},
        {"claim": "LNFit retains more than fine-tuning", "a": "lnfit", "b": "finetune", "metric": "a_zs",
         "expect": "higher"},
        {"claim": "EWC (a regularizer) retains more than fine-tuning", "a": "ewc", "b": "finetune",
         "metric": "a_zs", "expect": "higher"},
        {"claim": "SI (a regularizer) retains more than fine-tuning", "a": "si", "b": "finetune",
         "metric": "a_zs", "expect": "higher"},
    ],
    "quick": {"variants": ["finetune", "lora"], "seeds": [0, 1], "tune": {"train.lr": ["x0.5", "x1"]}},
}

MERGING: dict[str, Any] = {
    "name": "merging",
    "description": "Fine-tuning with an EMA merge of the task checkpoints (each task trains from and deploys "
                   "the running merge) against plain fine-tuning; each tuned over the learning rate, the merge "
                   "also over its weight α of the newest checkpoint.",
    "paper": "§7 and TIME: fine-tuning + EMA-style merging gives the best accumulation/retention trade-off.",
    "tune": LR3,
    "variants": [
        {"name": "finetune", "overrides": [NO_MERGE]},
        {"name": "ema_merge", "overrides": ["merge.preset=ema_merge"],
         "tune": {"train.lr": ["x1", "x2"], "merge.alpha": ["0.3", "0.5"]}},
    ],
    "compare": [
        {"claim": "FT + EMA-merge reaches a higher GM than plain fine-tuning", "a": "ema_merge", "b": "finetune",
         "metric": "gm", "expect": "higher"},
        {"claim": "EMA-merge retains more than plain fine-tuning", "a": "ema_merge", "b": "finetune",
         "metric": "a_zs", "expect": "higher"},
        {"claim": "EMA-merge keeps a higher GM along the stream than plain fine-tuning", "a": "ema_merge",
         "b": "finetune", "metric": "gm", "at": "trajectory_mean", "expect": "higher"},
    ],
    "quick": {"variants": ["finetune", "ema_merge"], "seeds": [0, 1], "tune": {"train.lr": ["x0.5", "x1"]}},
}

SCHEDULES: dict[str, Any] = {
    "name": "schedules",
    "description": "Learning-rate meta schedules across tasks against a fresh per-task cosine, on a stream of "
                   "10 tasks at the same total budget (no merging).",
    "paper": "§6: meta schedules (e.g. autoregressive cosine) improve both accumulation and retention.",
    "overrides": [NO_MERGE, "stream.tasks=10"],
    "tune": LR3,
    "variants": [
        {"name": "cosine", "overrides": ["train.schedule=cosine"]},
        {"name": "autoregressive_cosine", "overrides": ["train.schedule=autoregressive_cosine"]},
    ],
    "compare": [
        {"claim": "the autoregressive cosine retains at least as well as per-task cosine at T = 10",
         "a": "autoregressive_cosine", "b": "cosine", "metric": "a_zs", "expect": "not_lower"},
        {"claim": "the autoregressive cosine retains more than per-task cosine", "a": "autoregressive_cosine",
         "b": "cosine", "metric": "a_zs", "expect": "higher"},
        {"claim": "the autoregressive cosine accumulates more than per-task cosine", "a": "autoregressive_cosine",
         "b": "cosine", "metric": "a_ka", "expect": "higher"},
    ],
    "quick": {"seeds": [0, 1], "tune": {"train.lr": ["x0.5", "x1"]}, "overrides": ["stream.tasks=3"]},
}

MIXTURES: dict[str, Any] = {
    "name": "mixtures",
    "description": "What each batch replays: the current task alone, plus the pretraining pool, plus the "
                   "buffer of earlier tasks, or FiF's full mixture (no merging; the preset's learning rate).",
    "paper": "§4: replaying buffered update data is crucial; pretraining replay mostly protects retention.",
    "overrides": [NO_MERGE],
    "variants": [
        {"name": "update_only", "overrides": ["data.mixture.pretraining=0", "data.mixture.update=1",
                                              "data.mixture.buffer=0"]},
        {"name": "pool", "overrides": ["data.mixture.pretraining=0.5", "data.mixture.update=0.5",
                                       "data.mixture.buffer=0"]},
        {"name": "buffer", "overrides": ["data.mixture.pretraining=0", "data.mixture.update=0.5",
                                         "data.mixture.buffer=0.5"]},
        {"name": "pool_buffer", "overrides": ["data.mixture.pretraining=0.33", "data.mixture.update=0.34",
                                              "data.mixture.buffer=0.33"]},
    ],
    "compare": [
        {"claim": "buffer replay raises A_KA more than pool replay", "a": "buffer", "b": "pool", "metric": "a_ka",
         "expect": "higher"},
        {"claim": "buffer replay raises A_KA over training on the task alone", "a": "buffer", "b": "update_only",
         "metric": "a_ka", "expect": "higher"},
        {"claim": "pool replay protects retention", "a": "pool", "b": "update_only", "metric": "a_zs",
         "expect": "higher"},
        {"claim": "FiF's full mixture reaches a higher GM than training on the task alone", "a": "pool_buffer",
         "b": "update_only", "metric": "gm", "expect": "higher"},
    ],
    "quick": {"variants": ["update_only", "pool_buffer"], "seeds": [0, 1]},
}

ORDERINGS: dict[str, Any] = {
    "name": "orderings",
    "description": "Concept orderings of the same stream (same T; the dataset-incremental ordering has its own "
                   "T and is left out), no merging.",
    "paper": "§3: the ordering changes the trajectory a lot, the end point much less.",
    "overrides": [NO_MERGE],
    "variants": [
        {"name": "random", "overrides": ["stream.ordering=random"]},
        {"name": "frequency", "overrides": ["stream.ordering=frequency"]},
        {"name": "similarity", "overrides": ["stream.ordering=similarity"]},
        {"name": "time", "overrides": ["stream.ordering=time"]},
        {"name": "easy_to_hard", "overrides": ["stream.ordering=easy_to_hard"]},
    ],
    "compare": [
        {"claim": "orderings differ more mid-stream than at the end (A_KA)", "spread": "a_ka", "expect": "higher"},
        {"claim": "orderings differ more mid-stream than at the end (A_ZS)", "spread": "a_zs", "expect": "higher"},
    ],
    "quick": {"variants": ["random", "time"], "seeds": [0, 1]},
}

COMPUTE: dict[str, Any] = {
    "name": "compute",
    "description": "Half, the same and twice the preset's budget, for plain fine-tuning and for fine-tuning + "
                   "EMA merge (the preset's learning rate).",
    "paper": "§7: compute scaling pays off mostly with merging.",
    "variants": [
        {"name": f"{m}_budget{f}", "overrides": [f"merge.preset={p}", f"budget.ft_steps=x{f}"]}
        for m, p in (("finetune", "none"), ("ema_merge", "ema_merge")) for f in ("0.5", "1", "2")
    ],
    "compare": [
        {"claim": "compute scaling (×4 budget) pays off more in GM with EMA merging than with plain fine-tuning",
         "contrast": {"ema_merge_budget2": 1, "ema_merge_budget0.5": -1, "finetune_budget2": -1,
                      "finetune_budget0.5": 1}, "metric": "gm", "expect": "higher"},
        {"claim": "a ×4 budget raises the GM of fine-tuning + EMA merge", "a": "ema_merge_budget2",
         "b": "ema_merge_budget0.5", "metric": "gm", "expect": "higher"},
        {"claim": "a ×4 budget raises the GM of plain fine-tuning", "a": "finetune_budget2",
         "b": "finetune_budget0.5", "metric": "gm", "expect": "higher"},
    ],
    "quick": {"variants": ["finetune_budget0.5", "finetune_budget1"], "seeds": [0, 1]},
}

# TIME's two axes of temporal merging (what each task trains from × what is deployed), named by init_deploy.
INIT_DEPLOY_AXES = (("last", "last"), ("last", "ema"), ("zeroshot", "ema"), ("ema", "last"), ("ema", "ema"))

INIT_DEPLOY: dict[str, Any] = {
    "name": "init_deploy",
    "description": "Temporal merging's two axes: what each task trains from (the last task's end, θ0 or the "
                   "running EMA merge) × what is deployed (the last task's end or the EMA merge), at the "
                   "preset's learning rate and merge weight.",
    "paper": "§7 (after TIME): EMA as both the init and the deployed model gives the best trade-off.",
    "variants": [
        {"name": f"{i}_{d}", "overrides": [NO_MERGE, f"merge.init={i}", f"merge.deploy={d}"]}
        for i, d in INIT_DEPLOY_AXES
    ],
    "compare": [
        {"claim": f"EMA init + EMA deploy reaches a higher GM than {i} init + {d} deploy", "a": "ema_ema",
         "b": f"{i}_{d}", "metric": "gm", "expect": "higher"}
        for i, d in INIT_DEPLOY_AXES if (i, d) != ("ema", "ema")
    ],
    "quick": {"variants": ["last_last", "ema_ema"], "seeds": [0, 1]},
}

# Model scaling: the paper's OpenCLIP ladder on fif; on mini every fif-mini architecture there is.
FIF_MODELS = [("vit_b32", "ViT-B-32", "laion2b_s34b_b79k"), ("vit_b16", "ViT-B-16", "laion2b_s34b_b88k"),
              ("vit_l14", "ViT-L-14", "laion2b_s32b_b82k")]


def models_study(mini_archs: list[str], benchmark: str) -> dict[str, Any]:
    """The model-scaling study: one variant per architecture, every one at the compute (MAFs) of fine-tuning
    the first for the preset's budget (``equal_compute``).

    Args:
        mini_archs: the fif-mini architectures this fif has, smallest first (used when ``benchmark`` is mini).
        benchmark: the preset's ``data.benchmark``.
    """
    if benchmark == "mini":
        archs = [(a.removeprefix("fif-mini-"), a, "mini-base") for a in mini_archs]
    else:
        archs = FIF_MODELS
    names = [n for n, _, _ in archs]
    compare = [
        {"claim": f"{big} accumulates more than {small} at equal compute", "a": big, "b": small, "metric": "a_ka",
         "at": "change", "expect": "higher"}
        for small, big in zip(names, names[1:])
    ] + [
        {"claim": f"{big} forgets less than {small} at equal compute", "a": big, "b": small, "metric": "a_zs",
         "at": "change", "expect": "higher"}
        for small, big in zip(names, names[1:])
    ]
    return {
        "name": "models",
        "description": "Model size at equal compute in MAFs: every architecture gets the MAFs of fine-tuning the "
                       "first one for the preset's budget (plain fine-tuning, the preset's learning rate).",
        "paper": "§7: larger models accumulate more and forget less.",
        "overrides": [NO_MERGE],
        "equal_compute": True,
        "variants": [{"name": n, "overrides": [f"model.arch={a}", f"model.pretrained={p}"]} for n, a, p in archs],
        "compare": compare,
        "quick": {"variants": names[:2], "seeds": [0, 1]},
    }


STUDIES: dict[str, dict[str, Any] | Callable[..., dict[str, Any]]] = {
    "methods": METHODS, "merging": MERGING, "schedules": SCHEDULES, "mixtures": MIXTURES,
    "orderings": ORDERINGS, "compute": COMPUTE, "init_deploy": INIT_DEPLOY, "models": models_study,
}


def study_names() -> list[str]:
    return list(STUDIES)


def named_study(name: str, mini_archs: list[str] | None = None, benchmark: str = "mini") -> dict[str, Any]:
    """The mapping of the named study (a copy).

    Args:
        name: one of :func:`study_names`.
        mini_archs: for ``models`` on mini, the fif-mini architectures available.
        benchmark: for ``models``, the preset's benchmark.

    Raises:
        KeyError: an unknown name (with the valid ones and the nearest).
    """
    if name not in STUDIES:
        raise KeyError(unknown_name_message("study", name, study_names())
                       + "; or give a study file (YAML, see docs/studies.md)")
    entry = STUDIES[name]
    return models_study(mini_archs or [], benchmark) if callable(entry) else copy.deepcopy(entry)
