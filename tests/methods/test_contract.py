"""One contract suite over every registered update method (see docs/adding-a-method.md).

Each method must: pass registration's checks (every hook, capabilities declared whole); expose trainable
parameters that belong to the model; give a finite loss whose backward reaches exactly those parameters;
run its loss on the meta device (where the budget counts a step's FLOPs), without that measurement
changing its state; use the run's CLIP loss settings; change only its parameters in a step; charge the budget at least what its task hooks compute;
deploy the base architecture's weights; and, driven through two tasks in the runner's order, resume from
a real checkpoint of the middle of the second task to the same bits as the uninterrupted method. A last
test checks that the runner calls the hooks in that order.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from fif.budget import measure_step_cost, meta_clip, trace_step
from fif.core.flops import count_flops, meta_copy
from fif.core.optim import OptimConfig
from fif.data.batch import Batch, synthetic_batch
from fif.methods import (
    BaseMethod,
    ClipLoss,
    HookCost,
    LossOutput,
    NoOptions,
    TaskInfo,
    UpdateMethod,
    build_method,
    deploy_model_for,
    freeze_all_but,
    optimizer_for,
    register_method,
    registered_methods,
)
from fif.methods.registry import contract_problems
from fif.model.clip import Clip, build_clip
from fif.model.loss import clip_features
from fif.runner.checkpoint import Position, load_checkpoint, save_checkpoint
from task_data import MemoryTaskData

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = sorted(name for name in registered_methods() if not name.startswith("test_"))
ARCH = "fif-mini-rn32"
CONCEPTS = ["x+++a", "x+++b"]
STEPS = (1, 2)  # steps of task 0 and task 1; the checkpoint is taken after the first step of task 1


@pytest.fixture(scope="module")
def base_clip():
    torch.manual_seed(0)
    clip = build_clip(ARCH)
    # Calibrate the BatchNorm running statistics, as pretrained weights come: methods that freeze them
    # (locked towers, BitFit, PEFT) run BatchNorm in eval mode, where a fresh init's statistics (mean 0,
    # variance 1) make every image's features the same.
    with torch.no_grad():
        for mod in clip.model.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.momentum = None  # cumulative average over the calibration batches
        for seed in range(4):
            clip.model.encode_image(_batch(clip, 8, seed=seed).images)
        for mod in clip.model.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.momentum = 0.1
    return clip


def _batch(clip, n=8, seed=0, labels=False):
    g = torch.Generator().manual_seed(seed)
    images = clip.normalize(torch.rand(n, 3, clip.image_size, clip.image_size, generator=g))
    tokens = clip.tokenize([f"a shape number {i + 100 * seed}" for i in range(n)])
    source = torch.tensor([0, 1, 2, 1] * (n // 4), dtype=torch.int8)
    return Batch(images, tokens, source, torch.arange(n) % len(CONCEPTS) if labels else None)


def _task(clip, index: int, steps: int) -> TaskInfo:
    """A task with data: 4 labelled samples of two concepts, and a pool of 20 captions (fewer than ZSCL's
    default reference set, as in a small run)."""
    rows = _batch(clip, 4, seed=50 + index, labels=True)
    data = MemoryTaskData(rows, texts=lambda n: [f"a pool caption {i}" for i in range(min(n, 20))])
    return TaskInfo(index, len(STEPS), CONCEPTS, steps, num_samples=len(rows), seed=3, data=data)


def _copy(clip: Clip) -> Clip:
    """A copy of ``clip`` with its own model (the tokenizer, read-only, is shared: copying it is slow)."""
    return dataclasses.replace(clip, model=copy.deepcopy(clip.model))


def _build(name: str, clip):
    method = build_method(name, {}, clip)
    freeze_all_but(clip.model, method.trainable_parameters())
    return method


@pytest.fixture(params=METHODS)
def method_and_clip(request, base_clip):
    clip = _copy(base_clip)
    return _build(request.param, clip), clip


# ----------------------------------------------------------------------------------------------
# Registration


def test_registry_has_the_basics():
    assert {"finetune", "locked_text", "locked_image", "bitfit", "lnfit"} <= set(METHODS)


@pytest.mark.parametrize("name", METHODS)
def test_every_registered_method_implements_the_contract(name):
    cls = registered_methods()[name]
    assert contract_problems(cls) == []
    assert cls.name == name and cls.__name__ in cls.__qualname__  # a plain class, not built in a function
    assert "<locals>" not in cls.__qualname__


def test_registration_rejects_a_broken_contract():
    class NoConfig(BaseMethod):
        Config = dict  # not a dataclass

    class HalfOptimizer(BaseMethod):  # its own optimizer, but no state size for the budget
        def build_optimizer(self, named_params, lr, optim_cfg):
            return torch.optim.SGD([p for _, p in named_params], lr)

    class NotAMethod:
        Config = NoOptions

        def loss(self, batch, model):
            return LossOutput(torch.zeros(()))

    with pytest.raises(TypeError, match="Config must be a dataclass"):
        register_method("test_no_config")(NoConfig)
    with pytest.raises(TypeError, match="defines build_optimizer but not optimizer_state_bytes.*BuildsOptimizer"):
        register_method("test_half_optimizer")(HalfOptimizer)
    with pytest.raises(TypeError, match="lacks the hooks trainable_parameters, begin_task.*BaseMethod"):
        register_method("test_not_a_method")(NotAMethod)
    with pytest.raises(ValueError, match="registered twice"):
        register_method("finetune")(BaseMethod)
    assert not {"test_no_config", "test_half_optimizer", "test_not_a_method"} & set(registered_methods())


# ----------------------------------------------------------------------------------------------
# One method, one step


def test_trainable_parameters_belong_to_the_model(method_and_clip):
    method, clip = method_and_clip
    assert isinstance(method, UpdateMethod)
    trainable = method.trainable_parameters()
    assert trainable, "a method must train something"
    model_params = {id(p) for p in clip.model.parameters()}
    assert all(id(p) in model_params for _, p in trainable), "trainable params must be registered in the model"
    assert len({id(p) for _, p in trainable}) == len(trainable)


def test_loss_is_finite_and_reaches_exactly_the_trainable_params(method_and_clip):
    method, clip = method_and_clip
    method.begin_task(_task(clip, 0, steps=1))
    out = method.loss(_batch(clip), clip.model)
    assert out.total.ndim == 0 and torch.isfinite(out.total)
    assert all(not v.requires_grad for v in out.parts.values()), "loss parts are detached (logging only)"
    out.total.backward()
    trainable = {id(p) for _, p in method.trainable_parameters()}
    for name, p in clip.model.named_parameters():
        if id(p) in trainable:
            assert p.grad is not None, f"{name} is trainable but got no gradient"
        else:
            assert p.grad is None, f"{name} is frozen but got a gradient"
    assert any(p.grad.abs().sum() > 0 for _, p in method.trainable_parameters())


def _after_the_tasks(name: str, base: Clip, drives) -> UpdateMethod:
    """A fresh method of ``name`` put into the state :func:`drive` left it in (state, then weights), so that
    a test may use it without touching the shared drive."""
    run, _ = drives(name)
    clip = _copy(base)
    method = build_method(name, {}, clip)
    method.load_state_dict(run.method.state_dict())
    clip.model.load_state_dict(run.final_state)
    freeze_all_but(clip.model, method.trainable_parameters())
    return method


@pytest.mark.parametrize("name", METHODS)
def test_loss_runs_on_the_meta_device(name, base_clip, drives):
    """The budget counts a step's FLOPs on a weightless meta copy of the model (``measure_step_cost``), with
    the method built on the real model (a run) or on a meta model (``fif budget``): the loss must run
    there, fresh and with the state tasks leave (filled buffers, importances, a drawn reference set)."""
    counted = []
    for method in (_build(name, _copy(base_clip)), _after_the_tasks(name, base_clip, drives)):
        model, _ = meta_copy(method.clip.model)  # keeps requires_grad: only the trainable copies get gradients
        trace = trace_step(model.train(), method, synthetic_batch(method.clip, 4, "meta"))
        assert trace.flops > trace.forward_flops > 0, "forward and backward are counted on meta"
        counted.append(trace.flops)
    meta = meta_clip(ARCH)
    on_meta = build_method(name, {}, meta)
    freeze_all_but(meta.model, on_meta.trainable_parameters())
    assert measure_step_cost(meta, on_meta, 4).flops == counted[0]


@pytest.mark.parametrize("name", METHODS)
def test_measuring_a_step_leaves_the_method_alone(name, base_clip, drives):
    """A meta-device step (the budget's measurement) changes no method state, fresh or after the tasks."""
    for method in (_build(name, _copy(base_clip)), _after_the_tasks(name, base_clip, drives)):
        before = copy.deepcopy(method.state_dict())
        model, _ = meta_copy(method.clip.model)
        trace_step(model.train(), method, synthetic_batch(method.clip, 4, "meta"))
        assert _equal_trees(method.state_dict(), before), "measuring a step on meta changed the method's state"


def test_clip_loss_settings_reach_the_loss(method_and_clip):
    """``train.label_smoothing`` reaches every method's CLIP term through ``clip_loss`` (not its options)."""
    method, clip = method_and_clip
    batch = _batch(clip)
    with torch.no_grad():
        plain = [method.loss(batch, clip.model).total for _ in range(2)]
        method.clip_loss = ClipLoss(label_smoothing=0.2)
        smooth = method.loss(batch, clip.model).total
    assert torch.equal(plain[0], plain[1])
    assert not torch.allclose(smooth, plain[0]), "the loss ignores clip_loss"


# ----------------------------------------------------------------------------------------------
# Two tasks in the runner's order, a checkpoint in the middle of the second, and a resume


@dataclass
class Drive:
    """A method driven through the tasks (see :func:`drive`) and what it recorded."""

    method: UpdateMethod
    clip: Clip
    trainable: set[str] = field(default_factory=set)  # names of the trainable parameters
    losses: list[torch.Tensor] = field(default_factory=list)  # the total loss of every step, in order
    changed: set[str] = field(default_factory=set)  # model entries a step changed
    charged: list[HookCost] = field(default_factory=list)  # extra_cost(task) per task
    hook_flops: list[int] = field(default_factory=list)  # FLOPs begin_task + end_task computed per task
    final_state: dict = field(default_factory=dict)  # the model's state_dict after the last task
    deployed: dict | None = None  # deploy_weights() after the last task


def run_steps(drive: Drive, task: TaskInfo, optimizer, steps: range) -> None:
    """The training loop's order: loss → backward → step → zero_grad → after_step, each step seeded."""
    method, model = drive.method, drive.clip.model
    for step in steps:
        batch = _batch(drive.clip, seed=10 * task.index + step)
        torch.manual_seed(1000 + 10 * task.index + step)  # dropout, if a method has any: the same draws
        before = {k: v.clone() for k, v in model.state_dict().items()}
        loss = method.loss(batch, model).total
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        method.after_step(batch, step)
        drive.losses.append(loss.detach())
        drive.changed |= {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}


def start_task(drive: Drive, task: TaskInfo):
    """extra_cost → begin_task → training_weights → the task's optimizer, as the runner starts a task."""
    method = drive.method
    drive.charged.append(method.extra_cost(task))
    drive.hook_flops.append(count_flops(lambda: method.begin_task(task)))
    if (weights := method.training_weights()) is not None:
        drive.clip.model.load_state_dict(weights)
    return optimizer_for(method, method.trainable_parameters(), 1e-3, OptimConfig(weight_decay=0.1))


def end_task(drive: Drive, task: TaskInfo, count: bool = True) -> None:
    if count:
        drive.hook_flops[-1] += count_flops(lambda: drive.method.end_task(task))
    else:
        drive.method.end_task(task)
    drive.final_state = {k: v.clone() for k, v in drive.clip.model.state_dict().items()}
    drive.deployed = drive.method.deploy_weights()


def drive(name: str, base: Clip, folder: Path) -> tuple[Drive, Drive]:
    """Method ``name`` through task 0 and task 1 uninterrupted, checkpointed in the runner's format after
    task 1's first step; and a fresh method resumed from that checkpoint as the runner resumes (method
    state, then weights, then the optimizer) to the end of task 1. Returns (uninterrupted, resumed)."""
    clip = _copy(base)
    run = Drive(build_method(name, {}, clip), clip)
    run.trainable = {n for n, _ in run.method.trainable_parameters()}
    freeze_all_but(run.clip.model, run.method.trainable_parameters())
    tasks = [_task(run.clip, i, steps) for i, steps in enumerate(STEPS)]
    optimizer = start_task(run, tasks[0])
    run_steps(run, tasks[0], optimizer, range(STEPS[0]))
    end_task(run, tasks[0])
    optimizer = start_task(run, tasks[1])
    run_steps(run, tasks[1], optimizer, range(1))
    state = {"method": run.method.state_dict(), "optimizer": optimizer.state_dict()}
    path = save_checkpoint(folder / name, Position(1, True, 1), run.clip.model.state_dict(), state)
    run_steps(run, tasks[1], optimizer, range(1, STEPS[1]))
    end_task(run, tasks[1])

    ckpt = load_checkpoint(path)
    clip = _copy(base)
    resumed = Drive(build_method(name, {}, clip), clip)
    resumed.method.load_state_dict(ckpt.state["method"])  # first: a method may rebuild modules here
    clip.model.load_state_dict(ckpt.weights)
    freeze_all_but(clip.model, resumed.method.trainable_parameters())
    optimizer = optimizer_for(resumed.method, resumed.method.trainable_parameters(), 1e-3, OptimConfig(weight_decay=0.1))
    optimizer.load_state_dict(ckpt.state["optimizer"])
    run_steps(resumed, tasks[1], optimizer, range(1, STEPS[1]))
    end_task(resumed, tasks[1], count=False)
    return run, resumed


@pytest.fixture(scope="module")
def drives(base_clip, tmp_path_factory):
    """``drives(name)``: :func:`drive` of method ``name``, run once per module."""
    cache: dict[str, tuple[Drive, Drive]] = {}
    folder = tmp_path_factory.mktemp("checkpoints")

    def get(name: str) -> tuple[Drive, Drive]:
        if name not in cache:
            cache[name] = drive(name, base_clip, folder)
        return cache[name]

    return get


def _equal_trees(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal_trees(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal_trees(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("name", METHODS)
def test_steps_change_only_trainable_params(name, drives):
    run, _ = drives(name)
    assert all(torch.isfinite(loss) for loss in run.losses)
    params = {n for n, _ in run.clip.model.named_parameters()}
    assert run.changed & run.trainable, "optimizer steps must change the trainable parameters"
    frozen_changed = run.changed & (params - run.trainable)
    assert not frozen_changed, f"frozen params changed: {sorted(frozen_changed)[:5]}"


@pytest.mark.parametrize("name", METHODS)
def test_resume_from_a_checkpoint_mid_task_is_exact(name, drives):
    """state_dict → checkpoint files → load_state_dict: the resumed method takes the same steps to the same
    bits (losses, weights, deployed weights) as the method that was never interrupted."""
    run, resumed = drives(name)
    assert len(resumed.losses) == STEPS[1] - 1
    for ours, theirs in zip(run.losses[-len(resumed.losses) :], resumed.losses):
        assert torch.equal(ours, theirs), f"resumed loss {float(theirs)} != uninterrupted {float(ours)}"
    assert _equal_trees(run.final_state, resumed.final_state), "resumed weights differ"
    assert _equal_trees(run.deployed, resumed.deployed), "resumed deploy weights differ"
    assert _equal_trees(run.method.state_dict(), resumed.method.state_dict()), "resumed method state differs"


@pytest.mark.parametrize("name", METHODS)
def test_extra_cost_covers_what_the_task_hooks_compute(name, drives):
    """The budget charges a task's hooks before its steps are set: never less than they compute."""
    run, _ = drives(name)
    for task, (charged, computed) in enumerate(zip(run.charged, run.hook_flops)):
        assert isinstance(charged, HookCost) and charged.flops >= 0 and charged.peak_memory_bytes >= 0
        assert charged.flops >= computed, f"task {task}: hooks computed {computed} FLOPs, extra_cost charged {charged.flops}"


@pytest.mark.parametrize("name", METHODS)
def test_deployed_weights_are_the_base_architecture_and_the_trained_function(name, drives, base_clip):
    """What ``final.safetensors`` and ``fif eval`` get: the base model's keys and shapes, loaded into the
    model ``deploy_model_for`` builds, leaving the method's model alone; with default options, the
    function the method trained (adapters merged exactly)."""
    run, _ = drives(name)
    model = run.clip.model
    shipped = run.deployed if run.deployed is not None else run.final_state
    base = base_clip.model.state_dict()
    assert {k: tuple(v.shape) for k, v in shipped.items()} == {k: tuple(v.shape) for k, v in base.items()}
    deployed = deploy_model_for(run.method, model, shipped)
    assert _equal_trees(dict(deployed.state_dict()), dict(shipped))
    merged = deploy_model_for(run.method, model, base)  # other weights (a temporal merge: θ0 here) load as given
    assert _equal_trees(dict(merged.state_dict()), base)
    assert _equal_trees(model.state_dict(), run.final_state), "deploying changed the method's model"
    batch = _batch(run.clip, seed=99)
    with torch.no_grad():
        trained = clip_features(model.eval(), batch)
        shipped_out = clip_features(deployed.eval(), batch)
    model.train()
    for a, b in zip(trained, shipped_out):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# The runner calls the hooks in the contract's order


CALLS: list[tuple] = []


@register_method("test_hook_recorder")
class HookRecorder(BaseMethod):
    """Fine-tuning that records every contract call (test only)."""

    def extra_cost(self, task):
        CALLS.append(("extra_cost", task.index))
        return super().extra_cost(task)

    def begin_task(self, task):
        CALLS.append(("begin_task", task.index, task.steps, task.data is not None))

    def training_weights(self):
        CALLS.append(("training_weights",))

    def loss(self, batch, model):
        CALLS.append(("loss", batch.images.device.type))
        return super().loss(batch, model)

    def after_step(self, batch, step):
        CALLS.append(("after_step", step))

    def end_task(self, task):
        CALLS.append(("end_task", task.index))

    def deploy_weights(self):
        CALLS.append(("deploy_weights",))


RECORDER_RUN = [
    "model.pretrained=null", "budget.ft_steps=8", "stream.tasks=2", "train.batch_size=8", "train.log_every=2",
    "eval.min_samples=10", "method.name=test_hook_recorder", "merge.preset=none", "run.threads=1",
    ("data.options={pool_size: 200, train_per_class: 6, test_per_class: 3, eval_size: 30, retrieval_train: 30, "
     "retrieval_test: 10}"),
    "stream.datasets=[mini_digits,mini_letters]", "eval.datasets=[mini_digits]",
]


def test_the_runner_calls_the_hooks_in_the_contract_order(tmp_path):
    from fif.config import load_config
    from fif.runner.stream import run

    CALLS.clear()
    threads = torch.get_num_threads()
    try:
        run(load_config("mini", RECORDER_RUN), out_dir=tmp_path / "run")
    finally:
        torch.set_num_threads(threads)
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    steps = [e["steps"] for e in events if e["event"] == "task_start"]
    assert len(steps) == 2 and all(s > 0 for s in steps)

    measured = [c for c in CALLS if c == ("loss", "meta")]
    assert measured and CALLS[: len(measured)] == measured, "the budget measures the step before any task"
    expected = []
    for task, n in enumerate(steps):
        expected += [("extra_cost", task), ("begin_task", task, n, True), ("training_weights",)]
        for step in range(n):
            expected += [("loss", "cpu"), ("after_step", step)]
        expected += [("end_task", task)]
    hooks = [c for c in CALLS[len(measured):] if c[0] != "deploy_weights"]
    assert hooks == expected
    ends = [i for i, c in enumerate(CALLS) if c[0] == "end_task"]
    assert ("deploy_weights",) in CALLS[ends[0]:CALLS.index(("extra_cost", 1))], "evaluation deploys after end_task"
    assert CALLS[-1] == ("deploy_weights",), "the run ships the deployed weights last"
