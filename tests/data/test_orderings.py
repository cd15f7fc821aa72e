"""Frequency, similarity and easy-to-hard orderings: hand-checked rules on tiny inputs, and each
ordering's defining property on the mini benchmark with a random-init tiny CLIP."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fif.data import orderings
from fif.data.registry import get_benchmark
from fif.data.stream import OrderingOptions, benchmark_concepts, order_concepts, order_random
from fif.eval import concepts as scoring
from fif.eval.concepts import ModelScorer

MINI_SIZES = dict(pool_size=300, train_per_class=4, test_per_class=3, eval_size=30, retrieval_train=24, retrieval_test=16)
DATASETS = ["mini_digits", "mini_letters", "mini_relations", "mini_counting", "mini_scenes"]

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: thread hand-offs cost more than the math


@pytest.fixture(scope="module")
def mini():
    return get_benchmark("mini", **MINI_SIZES)


@pytest.fixture(scope="module")
def concepts(mini):
    return benchmark_concepts(mini, DATASETS)


@pytest.fixture(scope="module")
def clip():
    from fif.model.clip import build_clip

    torch.manual_seed(0)
    return build_clip("fif-mini-rn32")  # random init: the orderings' properties hold for any model


# ----------------------------------------------------------------------------------------------
# Frequency


def test_tokenisation_rule():
    assert orderings.words("Two-Tone  SHADED_x, Café 42") == ("two", "tone", "shaded", "x", "café", "42")


def test_document_frequency_counts_each_caption_once_and_phrases_contiguously():
    docs = ["a red square on the left", "left of the red red", "red", "the left of"]
    counts = orderings.document_frequencies([("red",), ("left", "of"), ("square", "left"), ("blue",)], docs)
    assert counts == {("red",): 3, ("left", "of"): 2, ("square", "left"): 0, ("blue",): 0}


def test_frequency_of_classes_and_of_a_retrieval_concept(toy, tmp_path):
    corpus = tmp_path / "captions.txt"
    corpus.write_text("ant ant bee\nant\n\ntoy pair\ntoy pair\ntoy pair\nr\n")
    docs = orderings.corpus_documents(toy, str(corpus))
    freq = orderings.concept_frequencies(benchmark_concepts(toy), toy, docs)
    assert freq["toy_a+++ant"] == 2 and freq["toy_a+++bee"] == 1 and freq["toy_a+++cat"] == 0
    # toy_r's pairs have captions "toy_r pair i" and "toy_r other i": per pair the words toy, r, pair, i,
    # toy, r, other, i count 3, 1, 3, 0, 3, 1, 0, 0 -> the median over all words is 1.
    assert freq["toy_r+++*"] == 1.0


def test_frequency_ordering_is_rarest_first(mini, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["the letter b above 3"] * 5 + ["one two above"] * 2 + ["3 two"]))
    opts = OrderingOptions(corpus=str(corpus))
    stream = order_concepts(mini, "frequency", seed=1, datasets=DATASETS, options=opts)
    freq = orderings.concept_frequencies(stream, mini, orderings.corpus_documents(mini, str(corpus)))
    counts = [freq[c] for c in stream]
    assert counts == sorted(counts)
    # one: 2 captions, two: 3, B ("b"): 5, 3: 6, above: 7; every other class name is absent (0).
    assert stream[-5:] == [
        "mini_counting+++one", "mini_counting+++two", "mini_letters+++B", "mini_digits+++3", "mini_relations+++above",
    ]
    assert counts[-5:] == [2, 3, 5, 6, 7] and set(counts[:-5]) == {0}
    rev = order_concepts(mini, "frequency", seed=1, reverse=True, datasets=DATASETS, options=opts)
    assert rev == stream[::-1]
    # Ties (all the zero counts) follow the seed.
    assert order_concepts(mini, "frequency", seed=1, datasets=DATASETS, options=opts) == stream
    assert order_concepts(mini, "frequency", seed=2, datasets=DATASETS, options=opts) != stream


def test_default_corpus_is_the_pretraining_pool(mini, concepts):
    stream = order_concepts(mini, "frequency", datasets=DATASETS)
    pool = mini.load(mini.pretraining_pool, "train")
    docs = [cap for i in range(len(pool)) for cap in pool.captions(i)]
    freq = orderings.concept_frequencies(stream, mini, docs)
    assert [freq[c] for c in stream] == sorted(freq[c] for c in stream)
    assert sorted(stream) == sorted(concepts)


def test_frequency_errors(toy, mini):
    with pytest.raises(ValueError, match="neither a file nor a dataset"):
        list(orderings.corpus_documents(toy, "/nonexistent/corpus.txt"))
    toy.pretraining_pool = None
    with pytest.raises(ValueError, match="stream.corpus"):
        orderings.corpus_documents(toy, None)


# ----------------------------------------------------------------------------------------------
# Similarity


def test_greedy_walks_on_a_line():
    x = np.array([0.0, 1.0, 3.0, 6.0, 10.0])
    dist = np.abs(x[:, None] - x[None, :])
    paths, lengths = orderings.greedy_walks(dist, np.array([2, 0]))
    assert paths.tolist() == [[2, 1, 0, 3, 4], [0, 1, 2, 3, 4]]
    assert lengths.tolist() == [13.0, 10.0]
    # Starts 0 and 4 tie at length 10: the lowest start wins.
    assert orderings.shortest_greedy_walk(dist) == [0, 1, 2, 3, 4]
    assert orderings.shortest_greedy_walk(dist, start=3) == [3, 2, 1, 0, 4]


def test_similarity_walk_is_shorter_than_random_orders(mini, concepts, clip):
    emb = scoring.concept_embeddings(clip, concepts, mini, torch.device("cpu")).numpy()
    assert emb.shape[0] == len(concepts) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    stream = order_concepts(mini, "similarity", datasets=DATASETS, scorer=ModelScorer(clip))
    assert sorted(stream) == sorted(concepts) and "mini_scenes+++*" in stream
    walk = orderings.path_length(concepts, emb, stream)
    random_lengths = [orderings.path_length(concepts, emb, order_random(concepts, s)) for s in range(20)]
    assert walk < min(random_lengths)
    # Shortest over every start: no single start's walk is shorter.
    for start in stream[:5]:
        one = order_concepts(mini, "similarity", datasets=DATASETS, scorer=ModelScorer(clip, options=OrderingOptions(start=start)), options=OrderingOptions(start=start))
        assert one[0] == start
        assert orderings.path_length(concepts, emb, one) >= walk - 1e-9
    assert order_concepts(mini, "similarity", datasets=DATASETS, scorer=ModelScorer(clip)) == stream  # deterministic


def test_similarity_start_must_be_in_the_stream(mini, clip):
    with pytest.raises(ValueError, match="did you mean 'mini_digits\\+\\+\\+3'"):
        order_concepts(mini, "similarity", datasets=DATASETS, scorer=ModelScorer(clip, options=OrderingOptions(start="mini_digits+++33")), options=OrderingOptions(start="mini_digits+++33"))


def test_model_orderings_need_the_model(mini):
    with pytest.raises(ValueError, match="needs the base model"):
        order_concepts(mini, "easy_to_hard", datasets=DATASETS)


# ----------------------------------------------------------------------------------------------
# Easy-to-hard


def test_easy_to_hard_is_non_increasing_in_zero_shot_score(mini, concepts, clip):
    opts = OrderingOptions(difficulty_samples=3)
    stream = order_concepts(mini, "easy_to_hard", seed=3, datasets=DATASETS, scorer=ModelScorer(clip, options=opts), options=opts)
    scores = scoring.zero_shot_scores(clip, concepts, mini, torch.device("cpu"), samples_per_class=3, seed=3)
    assert sorted(stream) == sorted(concepts)
    assert [scores[c] for c in stream] == sorted((scores[c] for c in stream), reverse=True)
    assert all(0.0 <= v <= 100.0 for v in scores.values())
    assert order_concepts(mini, "easy_to_hard", seed=3, datasets=DATASETS, scorer=ModelScorer(clip, options=opts), options=opts) == stream
    rev = order_concepts(mini, "easy_to_hard", seed=3, reverse=True, datasets=DATASETS, scorer=ModelScorer(clip, options=opts), options=opts)
    assert rev == stream[::-1]


def test_class_scores_agree_with_the_evaluator(mini, clip):
    from fif.eval.zeroshot import evaluate_dataset

    digits = benchmark_concepts(mini, ["mini_digits", "mini_scenes"])
    scores = scoring.zero_shot_scores(clip, digits, mini, torch.device("cpu"), split="test", samples_per_class=1000)
    assert clip.model.training  # the ordering put the model back in the mode it found it in
    data = mini.load("mini_digits", "test")  # class-balanced: mean per-class accuracy = overall accuracy
    scenes = mini.load("mini_scenes", "test")
    clip.model.eval()  # as the orderings score (BatchNorm uses its running statistics)
    try:
        full = evaluate_dataset(clip, mini.spec("mini_digits"), data, np.arange(len(data)), 256, torch.device("cpu"))
        retrieval = evaluate_dataset(clip, mini.spec("mini_scenes"), scenes, np.arange(len(scenes)), 256, torch.device("cpu"))
    finally:
        clip.model.train()
    assert np.mean([scores[c] for c in digits[:-1]]) == pytest.approx(full.score, abs=1e-6)
    assert scores["mini_scenes+++*"] == pytest.approx(retrieval.score)  # 16 test pairs: the subset is all of them
    with pytest.raises(ValueError, match="difficulty_split"):
        scoring.zero_shot_scores(clip, digits, mini, torch.device("cpu"), split="val")
