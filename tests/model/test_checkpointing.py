"""fif.model.checkpointing: compiled towers (train.compile) give eager's losses, and a second task and the
evaluations between tasks compile nothing new."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from fif.core.optim import OptimConfig
from fif.data.batch import synthetic_batch
from fif.methods import build_method
from fif.methods.base import optimizer_for
from fif.model.checkpointing import compile_towers_
from fif.model.clip import build_clip
from fif.train.loop import train_task

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS, LR = 3, 1e-4


def two_tasks(backend: str | None) -> tuple[list[float], list[int]]:
    """Two tasks of fine-tuning fif's tiny CLIP (a fresh optimizer each, an evaluation-mode encoding after
    each); returns the per-step losses and the number of graphs compiled after each task."""
    torch.manual_seed(0)
    clip = build_clip("fif-mini-rn32")
    if backend is not None:
        assert compile_towers_(clip.model, backend) == ["visual", "transformer"]
    method = build_method("finetune", {}, clip)
    losses, graphs = [], []
    for task in range(2):
        torch.manual_seed(10 + task)
        batches = [synthetic_batch(clip, 8, "cpu") for _ in range(STEPS)]
        optimizer = optimizer_for(method, method.trainable_parameters(), LR, OptimConfig())
        log = train_task(clip.model, method, optimizer, iter(batches), lambda s: LR, STEPS, torch.device("cpu"),
                         log_every=1)
        losses += [loss for _, loss in log.losses]
        clip.model.eval()
        with torch.no_grad():  # what an evaluation runs between tasks
            clip.model.encode_image(batches[0].images[:5])
            clip.model.encode_text(batches[0].tokens[:5])
        clip.model.train()
        graphs.append(counters["stats"]["unique_graphs"])
    return losses, graphs


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_towers_give_eagers_losses_and_a_second_task_does_not_recompile(backend):
    torch._dynamo.reset()
    counters.clear()
    eager, _ = two_tasks(None)
    compiled, graphs = two_tasks(backend)
    assert compiled == pytest.approx(eager, rel=1e-4, abs=1e-5)
    assert graphs[0] > 0 and graphs[1] == graphs[0]  # task 2 and its evaluation reuse task 1's graphs


def test_a_model_without_towers_is_a_clear_error():
    with pytest.raises(ValueError, match="no visual or transformer tower.*train.compile=false"):
        compile_towers_(torch.nn.Linear(2, 2))
