from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fif.eval.zeroshot import (
    Evaluator,
    class_embeddings,
    encode_images,
    retrieval_recall,
    stratified_subset,
    subset_size,
    topk_accuracy,
)
from fif.model.clip import build_clip


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    c = build_clip("fif-mini-rn32")
    c.model.eval()
    return c


def test_topk_on_hand_built_embeddings():
    cls = torch.eye(3)
    img = F.normalize(torch.tensor([[1.0, 0.1, 0.0], [0.0, 0.2, 1.0], [0.9, 1.0, 0.0], [0.0, 0.5, 1.0]]), dim=-1)
    targets = torch.tensor([0, 2, 0, 1])
    acc = topk_accuracy(img, cls, targets, ks=(1, 2))
    assert acc["top1"] == pytest.approx(50.0)  # rows 0 and 1 correct
    assert acc["top2"] == pytest.approx(100.0)  # rows 2 and 3 have their class second

def test_retrieval_recall_multi_caption():
    img = torch.eye(3)
    # captions 0,1 belong to image 0, caption 2 to image 1, caption 3 to image 2. Caption 3 is closest to
    # image 0 (a text->image miss at k=1), yet it is still image 2's closest caption (an image->text hit).
    txt = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1.0, 0], [1.0, 0, 0.1]])
    txt = F.normalize(txt, dim=-1)
    owner = torch.tensor([0, 0, 1, 2])
    r = retrieval_recall(img, txt, owner, ks=(1, 3))
    assert r["t2i_r1"] == pytest.approx(75.0)
    assert r["i2t_r1"] == pytest.approx(100.0)
    r_miss = retrieval_recall(img, txt, torch.tensor([0, 0, 2, 1]), ks=(1,))  # swap owners of captions 2 and 3
    assert r_miss["i2t_r1"] == pytest.approx(100 / 3)  # only image 0 finds one of its own captions first
    assert r["t2i_r3"] == 100.0 and r["i2t_r3"] == 100.0


def test_subset_rule():
    assert subset_size(10_000, 10) == 1000
    assert subset_size(1000, 10) == 300
    assert subset_size(1000, 400) == 800
    assert subset_size(200, 10) == 200


def test_stratified_subset_proportions_and_stability():
    targets = np.repeat(np.arange(4), [100, 100, 50, 250])
    idx = stratified_subset(targets, 100, seed=3)
    assert len(idx) == 100 and len(set(idx.tolist())) == 100
    counts = np.bincount(targets[idx], minlength=4)
    np.testing.assert_allclose(counts, [20, 20, 10, 50], atol=1)
    np.testing.assert_array_equal(idx, stratified_subset(targets, 100, seed=3))


def test_class_embeddings_equal_open_clip(clip):
    from open_clip import build_zero_shot_classifier

    names, templates = ["red circle", "blue square", "star"], ["a photo of a {}.", "a {} shape"]
    ours = class_embeddings(clip, names, templates, batch_size=4, device=torch.device("cpu"))
    with torch.no_grad():
        theirs = build_zero_shot_classifier(clip.model, clip.tokenizer, names, templates, num_classes_per_batch=2).T
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_evaluator_on_toy(toy, clip):
    ev = Evaluator(toy, batch_size=16, min_samples=4, subset_frac=0.5)
    clip_small = clip
    scores = ev.run(clip_small, torch.device("cpu"), subset=True)
    names = [s.dataset for s in scores]
    assert names == ["toy_a", "toy_b", "toy_r", "toy_e"]  # pools are not evaluated
    for s in scores:
        assert 0.0 <= s.score <= 100.0
        if s.kind == "retrieval":
            assert {"i2t_r5", "t2i_r5"} <= set(s.metrics)
    again = ev.run(clip_small, torch.device("cpu"), subset=True)
    assert [s.score for s in again] == [s.score for s in scores]
    with pytest.raises(ValueError, match="pretraining pool"):
        Evaluator(toy, datasets=["toy_pool"])


def test_zero_shot_logits_bit_identical_to_open_clip(clip):
    """Same model, prompts, images and class batching as open_clip's builder: identical logits, not just close."""
    from open_clip import build_zero_shot_classifier

    from fif.eval.zeroshot import zero_shot_logits

    names = [f"shape {i}" for i in range(7)]
    templates = ["a photo of a {}.", "a {} shape", "art of the {}"]
    ours = class_embeddings(clip, names, templates, batch_size=64, device=torch.device("cpu"), classes_per_batch=3)
    images = torch.rand(5, 3, clip.image_size, clip.image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = build_zero_shot_classifier(clip.model, clip.tokenizer, names, templates, num_classes_per_batch=3)
        their_img = clip.model.encode_image(clip.normalize(images), normalize=True)
        their_logits = their_img @ theirs  # open_clip's zero-shot eval (before its ×100 scale)
        our_img = F.normalize(clip.model.encode_image(clip.normalize(images)).float(), dim=-1)
    assert torch.equal(ours, theirs.T)
    assert torch.equal(zero_shot_logits(our_img, ours), their_logits)


def test_class_embeddings_shared_across_datasets(clip, monkeypatch):
    """Two datasets with the same class names and prompt: one text pass per evaluation, same scores."""
    import fif.eval.zeroshot as ev_mod
    from fif.data.registry import Benchmark
    from fif.data.specs import DatasetSpec, InMemorySplit

    specs = {
        n: DatasetSpec(n, "classification", role, ("ant", "bee"), "a {}")
        for n, role in (("dom_a", "adaptation"), ("dom_b", "adaptation"), ("dom_e", "eval_only"))
    }
    specs["other"] = DatasetSpec("other", "classification", "eval_only", ("ant", "bee"), "a photo of {}")

    def loader(spec, split):
        pixels = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
        return InMemorySplit(spec, split, pixels, [["x"]] * 6, np.arange(6) % 2)

    calls = []
    real = ev_mod.class_embeddings
    monkeypatch.setattr(ev_mod, "class_embeddings", lambda *a, **k: calls.append(a[1:3]) or real(*a, **k))
    ev = Evaluator(Benchmark("shared", specs, loader), batch_size=8, min_samples=2)
    scores = ev.run(clip, torch.device("cpu"), subset=False)
    assert len(calls) == 2 and ev.last_cache.misses == 2 and ev.last_cache.hits == 2
    assert scores[0].score == scores[1].score == scores[2].score  # identical images, identical classifier
    ev.run(clip, torch.device("cpu"), subset=False)
    assert len(calls) == 4  # a new evaluation (new weights) recomputes them


def test_bf16_evaluation_scores_every_dataset(toy, clip):
    """bf16 autocast on CPU: same samples and metrics as fp32 (scores of a random model may differ by ties)."""
    ev = Evaluator(toy, batch_size=16, min_samples=4, datasets=["toy_a", "toy_r"])
    fp32 = ev.run(clip, torch.device("cpu"), subset=False, precision="fp32")
    bf16 = ev.run(clip, torch.device("cpu"), subset=False, precision="bf16")
    assert [s.samples for s in bf16] == [s.samples for s in fp32]
    for a, b in zip(fp32, bf16):
        assert 0.0 <= b.score <= 100.0 and b.seconds > 0
        assert {"top1", "top5"} <= set(a.metrics) if a.kind == "classification" else {"i2t_r10", "t2i_r10"} <= set(a.metrics)


def jpeg_benchmark(folder) -> "Benchmark":  # noqa: F821 (imported inside: the test module loads no data code)
    """A classification set and a retrieval set of real JPEG files (decoded on demand, as FiF's are)."""
    from PIL import Image

    from fif.data.registry import Benchmark
    from fif.data.sources.common import ImageFileSplit
    from fif.data.specs import DatasetSpec

    specs = {
        "jpg_c": DatasetSpec("jpg_c", "classification", "adaptation", ("red", "green", "blue"), "a {} thing"),
        "jpg_r": DatasetSpec("jpg_r", "retrieval", "eval_only"),
    }
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    paths = []
    for i in range(30):
        path = folder / f"{i:03d}.jpg"
        pixels = rng.integers(0, 256, size=(40 + i % 7, 48, 3), dtype=np.uint8)  # odd sizes: resize + crop differ
        pixels[..., i % 3] = 255
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(str(path))
    (folder / "004.jpg").write_bytes(b"\xff\xd8 truncated")  # an unreadable image: replaced and reported

    def loader(spec, split):
        targets = np.arange(30) % 3 if spec.kind == "classification" else np.full(30, -1)
        return ImageFileSplit(spec, split, paths, [[f"image {i}", f"picture {i}"] for i in range(30)], targets, "test")

    return Benchmark("jpg", specs, loader)


def test_scores_are_the_same_with_any_number_of_workers(clip, tmp_path):
    scores = {}
    for workers in (0, 2):
        bench = jpeg_benchmark(tmp_path / str(workers))
        ev = Evaluator(bench, batch_size=8, min_samples=4, num_workers=workers)
        try:
            scores[workers] = [ev.run(clip, torch.device("cpu"), subset=s) for s in (False, True)]  # one worker pool
            if workers:
                assert ev._loader is not None and ev._loader._loader._iterator is not None  # workers kept for the next run
        finally:
            ev.close()
        # what the workers' copies of the splits met reaches this process's splits, where a run collects it
        assert sorted(bench.bad_samples()) == [("jpg_c", str(tmp_path / str(workers) / "004.jpg")),
                                                ("jpg_r", str(tmp_path / str(workers) / "004.jpg"))]
    for ours, theirs in zip(scores[0], scores[2], strict=True):
        assert [(s.dataset, s.samples, s.score, s.metrics) for s in ours] == [
            (s.dataset, s.samples, s.score, s.metrics) for s in theirs]
    assert scores[0][0][0].samples == 30 and scores[0][0][0].kind == "classification"
    bench = jpeg_benchmark(tmp_path / "direct")
    data, idx = bench.load("jpg_c", "test"), np.arange(30)
    ev = Evaluator(bench, batch_size=8, num_workers=2)
    try:
        decoded = ev.image_batches([data], [idx], clip.image_size, torch.device("cpu"))
        from_workers = encode_images(clip, data, idx, 8, torch.device("cpu"), images=decoded)
    finally:
        ev.close()
    assert torch.equal(from_workers, encode_images(clip, data, idx, 8, torch.device("cpu")))  # bit for bit


def test_evaluation_workers_decode_only_this_ranks_chunks(clip, tmp_path):
    """Sharded evaluation with workers: rank 1 of 2 gets chunks 1 and 3 of 4 (batch 8 of 30 images), the
    pixels one process decodes for them."""
    bench = jpeg_benchmark(tmp_path / "jpg")
    data, idx = bench.load("jpg_c", "test"), np.arange(30)
    rank_one = SimpleNamespace(rank=1, world_size=2)  # image_batches only reads the place in the world
    ev = Evaluator(bench, batch_size=8, num_workers=1)
    try:
        decoded = list(ev.image_batches([data], [idx], clip.image_size, torch.device("cpu"), rank_one))
    finally:
        ev.close()
    assert [len(b) for b in decoded] == [8, 6]
    for got, chunk in zip(decoded, (1, 3)):
        assert torch.equal(got, data.images(idx[chunk * 8 : (chunk + 1) * 8], clip.image_size, train=False))
