"""Every text of the mini world reads in full in fif's tiny models: known tokens, within the context."""

from __future__ import annotations

import open_clip
import pytest

from fif.data.mini import build_mini
from fif.model.clip import COMPACT_VOCABULARY, CONFIG_DIR, register_fif_models
from fif.model.vocab import read_vocabulary

SIZES = dict(pool_size=1500, train_per_class=20, test_per_class=10, eval_size=120, retrieval_train=100, retrieval_test=60)


@pytest.fixture(scope="module")
def texts() -> set[str]:
    bench = build_mini(**SIZES)
    out: set[str] = set()
    for spec in bench.datasets.values():
        out |= {spec.primer.format(c) for c in spec.classnames} | {p.format(c) for c in spec.classnames for p in spec.templates}
        for split in ("train", "test") if spec.role != "pretraining" else ("train",):
            data = bench.load(spec.name, split)
            out |= {c for i in range(len(data)) for c in data.captions(i)}
    return out


def test_every_word_of_the_world_is_in_the_compact_vocabulary(texts):
    bpe = open_clip.tokenizer.SimpleTokenizer()
    known = {bpe.encoder[t] for t in read_vocabulary(COMPACT_VOCABULARY)}
    missing = sorted({bpe.decoder[i] for t in texts for i in bpe.encode(t)} - {bpe.decoder[i] for i in known})
    assert not missing, f"append {missing} to {COMPACT_VOCABULARY} (one BPE token per line)"
    letters = {bpe.encoder[f"{c}</w>"] for c in "abcdefghijklmnopqrstuvwxyz"}
    assert letters <= known  # any alphabet given as the letters option


def test_every_caption_and_prompt_fits_every_tiny_models_context(texts):
    """The tiny models have a short text context (24 tokens, for speed): nothing of the world may be cut off."""
    register_fif_models()
    bpe = open_clip.tokenizer.SimpleTokenizer()
    text, longest = max(((t, len(bpe.encode(t)) + 2) for t in texts), key=lambda x: x[1])  # + start and end tokens
    for path in CONFIG_DIR.glob("*.json"):
        context = open_clip.get_model_config(path.stem)["text_cfg"]["context_length"]
        assert longest <= context, f"{text!r} has {longest} tokens; {path.stem}'s context is {context}"
