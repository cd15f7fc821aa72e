"""The compact vocabulary of fif's tiny architectures: open_clip's BPE split, small ids, end token last."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer

from fif.model.clip import COMPACT_VOCABULARY, CONFIG_DIR, build_clip, uses_compact_vocabulary
from fif.model.vocab import CompactTokenizer, read_vocabulary

TOKENS = ["a</w>", "red</w>", "circle</w>", "in</w>", "the</w>", "top</w>", "left</w>"]


@pytest.fixture(scope="module")
def tokenizer():
    return CompactTokenizer(SimpleTokenizer(context_length=12), TOKENS, vocab_size=16)


def test_known_words_get_their_line_numbers_and_the_end_token_is_the_largest_id(tokenizer):
    ids = tokenizer(["a red circle", "in the top left"])
    assert ids.shape == (2, 12) and ids.dtype == torch.long
    assert ids[0, :5].tolist() == [14, 1, 2, 3, 15] and (ids[0, 5:] == 0).all()  # start, a, red, circle, end, padding
    assert ids[1, :6].tolist() == [14, 4, 5, 6, 7, 15]
    assert (ids.argmax(dim=1) == torch.tensor([4, 5])).all()  # open_clip pools the text at the argmax: the end token
    assert tokenizer.encode("red circle") == [2, 3]


def test_unknown_words_read_as_unknown_with_one_warning(tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="fif.model.vocab"):
        ids = tokenizer(["a blue circle", "a blue circle"])
    assert ids[0, :5].tolist() == [14, 1, 13, 3, 15]  # "blue" is unknown (id vocab_size - 3)
    assert sum("'blue'" in r.message for r in caplog.records) == 1


def test_long_texts_are_cut_as_open_clip_cuts_them_keeping_the_end_token(tokenizer):
    ids = tokenizer("a red circle " * 10)
    assert ids.shape == (1, 12) and ids[0, -1] == tokenizer.eot_id and ids[0].argmax() == 11


def test_bad_vocabularies_are_refused(tmp_path):
    with pytest.raises(ValueError, match="vocab_size >= 11"):
        CompactTokenizer(SimpleTokenizer(), TOKENS, vocab_size=10)
    with pytest.raises(ValueError, match="not open_clip BPE tokens"):
        CompactTokenizer(SimpleTokenizer(), ["red circle</w>"], vocab_size=16)  # two words, not one BPE token
    path = tmp_path / "v.vocab"
    path.write_text("# comment\nred</w>\n\nred</w>\n")
    with pytest.raises(ValueError, match="listed twice"):
        read_vocabulary(path)


def test_every_fif_architecture_reads_the_compact_vocabulary():
    tokens = read_vocabulary(COMPACT_VOCABULARY)
    configs = sorted(CONFIG_DIR.glob("*.json"))
    assert {p.stem for p in configs} >= {"fif-mini-rn32", "fif-mini-rn32-w2", "fif-mini-vit32"}
    for path in configs:
        assert uses_compact_vocabulary(path.stem)
        assert json.loads(path.read_text())["text_cfg"]["vocab_size"] >= len(tokens) + 4, path.name
    assert not uses_compact_vocabulary("ViT-B-16") and not uses_compact_vocabulary("hf-hub:org/fif-mini-rn32")


def test_a_fif_model_tokenizes_into_its_small_embedding():
    clip = build_clip("fif-mini-rn32")
    rows = clip.model.token_embedding.weight.shape[0]
    tokens = clip.tokenize(["a small red circle in the top left", 'the number "7"'])
    assert rows == 256 and 0 <= tokens.min() and tokens.max() == rows - 1  # the end token
    out = clip.model.encode_text(tokens)
    assert out.shape == (2, clip.model.text_projection.shape[1]) and torch.isfinite(out).all()


def test_the_warning_names_the_unknown_piece_not_the_word(tokenizer, caplog):
    """'circle.' is the known 'circle' and an unknown '.': the warning names '.', once for every such word."""
    with caplog.at_level(logging.WARNING, logger="fif.model.vocab"):
        tokenizer(["a red circle.", "a red circle in the top left."])
    messages = [r.message for r in caplog.records]
    assert len(messages) == 1 and messages[0].startswith("'.' (in 'a red circle.')")
