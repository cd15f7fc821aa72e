"""The small end-to-end run on the mini preset, shared by the runner tests (on the test path:
``pythonpath`` in pyproject.toml).

A random-init tiny CLIP, 8 fine-tuning steps over two tasks of two mini datasets, a small evaluation.
Tests append their own overrides: a later value of a key wins.
"""

SMALL_RUN = (
    "model.pretrained=null",
    "budget.ft_steps=8",
    "stream.tasks=2",
    "stream.datasets=[mini_digits,mini_letters]",
    "train.batch_size=16",
    "train.log_every=2",
    "eval.min_samples=40",
    "eval.batch_size=128",
    "eval.datasets=[mini_digits,mini_letters,mini_colors,mini_captions]",
    "data.options={pool_size: 400, train_per_class: 12, test_per_class: 6, eval_size: 60, retrieval_train: 40, "
    "retrieval_test: 40}",
)
