"""Tune the mini world: pretrain the tiny CLIP on the pool, check zero-shot, run a short stream.

A standalone check of the benchmark's design, with its own plain AdamW loop (it does not use
fif.train.loop/fif.runner.stream, so it can vary the recipe freely):

1. pretrain ``fif-mini-rn32`` on ``mini_pretrain`` and report zero-shot accuracy per eval-only set
   (targets: colour >= 95%, shape >= 80%, size and position >= 95%) and per adaptation set (near chance);
2. from that base, run a short stream (one task per adaptation set) twice, fine-tuning on the task
   alone and with 1/3 pool + 1/3 task + 1/3 buffer replay, and report A_KA / A_ZS after every task.

Run (one heavy job at a time on a shared machine):
    .venv/bin/python benchmarks/tune_mini_world.py --steps 900 --save /tmp/mini_base.pt
    .venv/bin/python benchmarks/tune_mini_world.py --load /tmp/mini_base.pt --stream-steps 120
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import yaml

from fif.data.registry import get_benchmark
from fif.model.clip import build_clip, clamp_logit_scale_
from fif.model.loss import clip_contrastive_loss


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=900, help="pretraining steps")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--options", nargs="*", default=[], help="benchmark options key=value")
    p.add_argument("--save", help="save the pretrained state dict here")
    p.add_argument("--load", help="skip pretraining; load this state dict")
    p.add_argument("--caption-filter", help="pretrain only on pool captions matching this regex (diagnostic)")
    p.add_argument("--eval-every", type=int, default=0, help="zero-shot check every N pretraining steps")
    p.add_argument("--stream-steps", type=int, default=0, help="steps per stream task (0 = no stream)")
    p.add_argument("--stream-lr", type=float, default=5e-4)
    p.add_argument("--stream-batch", type=int, default=128)
    p.add_argument("--modes", default="finetune,replay", help="stream variants to run")
    p.add_argument("--ordering", default="random", choices=["random", "dataset"], help="stream concept order")
    p.add_argument("--tasks", type=int, default=6, help="tasks of a random-order stream")
    return p.parse_args()


def param_groups(model: torch.nn.Module, wd: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "logit_scale" in name or "bn" in name or "ln" in name else decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, steps: int, warmup: int, lr: float, floor: float = 0.01) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


class Sampler:
    """Draws (images, captions) from a list of (split, indices) with one numpy generator."""

    def __init__(self, seed: int, caption_filter: str | None = None):
        import re

        self.rng = np.random.default_rng(seed)
        self.keep = re.compile(caption_filter) if caption_filter else None

    def draw(self, parts: list[tuple[list, int]]) -> tuple[torch.Tensor, list[str]]:
        images, texts = [], []
        for sources, count in parts:
            if count <= 0 or not sources:
                continue
            sizes = np.array([len(idx) for _, idx in sources])
            which = self.rng.choice(len(sources), size=count, p=sizes / sizes.sum())
            for s in np.unique(which):
                split, idx = sources[s]
                rows = idx[self.rng.integers(0, len(idx), int((which == s).sum()))]
                images.append(split.images(rows, 32))
                for r in rows:
                    caps = split.captions(int(r))
                    if self.keep is not None:  # a diagnostic: train on some caption kinds only
                        caps = [c for c in caps if self.keep.search(c)] or caps
                    texts.append(caps[self.rng.integers(0, len(caps))])
        return torch.cat(images), texts


def train(clip, sampler, parts_fn, steps, lr, warmup, wd, log_every=100, label=""):
    model = clip.model
    model.train()
    opt = torch.optim.AdamW(param_groups(model, wd), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    t0 = time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, warmup, lr)
        images, texts = sampler.draw(parts_fn())
        out = model(clip.normalize(images), clip.tokenize(texts))
        loss = clip_contrastive_loss(out["image_features"], out["text_features"], out["logit_scale"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        clamp_logit_scale_(model)
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"  {label} step {step:4d} loss {loss.item():.3f} scale {model.logit_scale.exp().item():.1f} "
                  f"({time.time() - t0:.0f}s)", flush=True)
    return time.time() - t0


@torch.no_grad()
def zero_shot(clip, bench, names, split="test", max_n=600) -> dict[str, float]:
    model = clip.model
    model.eval()
    scores = {}
    for name in names:
        spec = bench.spec(name)
        data = bench.load(name, split)
        idx = np.arange(min(len(data), max_n))
        img = torch.nn.functional.normalize(model.encode_image(clip.normalize(data.images(idx, 32))), dim=-1)
        if spec.kind == "classification":
            txt = model.encode_text(clip.tokenize([spec.primer.format(c) for c in spec.classnames]))
            pred = (img @ torch.nn.functional.normalize(txt, dim=-1).T).argmax(1).numpy()
            scores[name] = float((pred == data.targets[idx]).mean())
        else:
            txt = torch.nn.functional.normalize(model.encode_text(clip.tokenize([data.captions(int(i))[0] for i in idx])), dim=-1)
            sim = img @ txt.T
            gt = torch.arange(len(idx))
            r_i2t = (sim.topk(5, dim=1).indices == gt[:, None]).any(1).float().mean()
            r_t2i = (sim.T.topk(5, dim=1).indices == gt[:, None]).any(1).float().mean()
            scores[name] = float((r_i2t + r_t2i) / 2)
    model.train()
    return scores


def chance(bench, name) -> float:
    spec = bench.spec(name)
    return 1.0 / spec.num_classes if spec.kind == "classification" else 5.0 / 500


def report(bench, scores: dict[str, float], header: str) -> tuple[float, float]:
    ka = [scores[s.name] for s in bench.adaptation if s.name in scores]
    zs = [scores[s.name] for s in bench.eval_only if s.name in scores]
    line = "  ".join(f"{k.replace('mini_', '')}={v:.2f}" for k, v in scores.items())
    a_ka, a_zs = float(np.mean(ka)) if ka else float("nan"), float(np.mean(zs)) if zs else float("nan")
    print(f"{header}: A_KA={a_ka:.3f} A_ZS={a_zs:.3f} | {line}", flush=True)
    return a_ka, a_zs


def run_stream(args, bench, base_state, mode: str) -> list[tuple[float, float]]:
    from fif.data.stream import benchmark_concepts, chunk, chunk_by_dataset, order_random, task_indices

    clip = build_clip("fif-mini-rn32")
    clip.model.load_state_dict(base_state)
    all_names = [s.name for s in bench.eval_only] + [s.name for s in bench.adaptation]
    pool = bench.load(bench.pretraining_pool, "train")
    pool_src = [(pool, np.arange(len(pool)))]
    concepts = benchmark_concepts(bench)
    if args.ordering == "dataset":
        tasks = chunk_by_dataset(concepts)
    else:
        tasks = chunk(order_random(concepts, args.seed), args.tasks)
    sampler = Sampler(args.seed + 1)
    buffer: list = []
    path = [report(bench, zero_shot(clip, bench, all_names, max_n=400), f"[{mode}] task 0")]
    b = args.stream_batch
    third = b // 3
    for task in tasks:
        current = [(bench.load(d, "train"), idx) for d, idx in task_indices(task, bench).items()]
        if mode == "finetune":
            parts = lambda: [(current, b)]  # noqa: E731
        elif buffer:
            parts = lambda: [(pool_src, third), (current, b - 2 * third), (buffer, third)]  # noqa: E731
        else:  # task 0: the empty buffer's share goes to the pool and the task, as FiF does
            parts = lambda: [(pool_src, b // 2), (current, b - b // 2)]  # noqa: E731
        train(clip, sampler, parts, args.stream_steps, args.stream_lr, max(1, args.stream_steps // 10), args.wd, 0)
        buffer.extend(current)
        names = sorted({c.split("+++")[0].replace("mini_", "") for c in task.concepts})
        path.append(report(bench, zero_shot(clip, bench, all_names, max_n=400), f"[{mode}] task {task.index + 1} {','.join(names)}"))
    return path


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    options = {k: yaml.safe_load(v) for k, v in (o.split("=") for o in args.options)}
    bench = get_benchmark("mini", **options)
    clip = build_clip("fif-mini-rn32")
    eval_names = [s.name for s in bench.eval_only]
    adapt_names = [s.name for s in bench.adaptation]
    if args.load:
        clip.model.load_state_dict(torch.load(args.load, weights_only=True))
    else:
        t0 = time.time()
        pool = bench.load(bench.pretraining_pool, "train")
        print(f"pool: {len(pool)} images in {time.time() - t0:.1f}s", flush=True)
        sampler = Sampler(args.seed, args.caption_filter)
        src = [(pool, np.arange(len(pool)))]
        model = clip.model
        opt = torch.optim.AdamW(param_groups(model, args.wd), lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
        t0 = time.time()
        for step in range(args.steps):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, args.steps, args.warmup, args.lr)
            images, texts = sampler.draw([(src, args.batch)])
            out = model(clip.normalize(images), clip.tokenize(texts))
            loss = clip_contrastive_loss(out["image_features"], out["text_features"], out["logit_scale"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            clamp_logit_scale_(model)
            if step % 100 == 0 or step == args.steps - 1:
                print(f"  step {step:4d} loss {loss.item():.3f} scale {model.logit_scale.exp().item():.1f} "
                      f"({time.time() - t0:.0f}s)", flush=True)
            if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
                te = time.time()
                report(bench, zero_shot(clip, bench, eval_names), f"step {step + 1}")
                t0 += time.time() - te  # do not count evaluation as training time
        total = time.time() - t0
        print(f"pretraining: {args.steps} steps x {args.batch} in {total:.0f}s ({total / args.steps:.3f} s/step)")
        if args.save:
            torch.save(clip.model.state_dict(), args.save)
    report(bench, zero_shot(clip, bench, eval_names), "base eval-only")
    scores = zero_shot(clip, bench, adapt_names)
    report(bench, scores, "base adaptation")
    print("  chance: " + "  ".join(f"{n.replace('mini_', '')}={chance(bench, n):.2f}" for n in adapt_names))
    if args.stream_steps:
        base_state = {k: v.clone() for k, v in clip.model.state_dict().items()}
        for mode in args.modes.split(","):
            t0 = time.time()
            path = run_stream(args, bench, base_state, mode)
            print(f"[{mode}] stream {time.time() - t0:.0f}s: A_ZS {path[0][1]:.3f} -> {path[-1][1]:.3f} "
                  f"(retention loss {path[0][1] - path[-1][1]:+.3f}); A_KA {path[0][0]:.3f} -> {path[-1][0]:.3f}")


if __name__ == "__main__":
    main()
