"""A compact token vocabulary for fif's tiny architectures: open_clip's BPE, restricted to the words in use.

open_clip's tokenizer has 49,408 BPE tokens; a text tower of width 64 spends 3.2M parameters (12.6 MB,
most of a tiny model) and a dense embedding gradient per step on them, while the mini world writes about
160 of them. :class:`CompactTokenizer` keeps open_clip's BPE (so words split exactly as open_clip splits
them) and maps each BPE id to a small id through a fixed table read from a vocabulary file, one BPE token
per line (``configs/fif-mini.vocab``). Ids: 0 is padding, 1..K the listed tokens in file order, and the
last three ids of the table are unknown, start and end of text, so the end token stays the largest id
in every sequence (open_clip pools the text at the argmax of the ids).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch

log = logging.getLogger(__name__)


def read_vocabulary(path: str | Path) -> list[str]:
    """The BPE tokens listed in a vocabulary file, in order (blank lines and ``#`` comments skipped).

    Raises:
        ValueError: a token is listed twice.
    """
    tokens = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    tokens = [t for t in tokens if t and not t.startswith("#")]
    seen: set[str] = set()
    for t in tokens:
        if t in seen:
            raise ValueError(f"vocabulary {path}: token {t!r} is listed twice")
        seen.add(t)
    return tokens


class CompactTokenizer:
    """open_clip's tokenizer with its ids mapped into a small fixed vocabulary.

    Args:
        bpe: open_clip's ``SimpleTokenizer`` (it splits, truncates and pads; this only remaps ids).
        tokens: the BPE tokens to keep (e.g. ``"circle</w>"``), in id order.
        vocab_size: the text tower's embedding rows; at least ``len(tokens) + 4``.

    Raises:
        ValueError: a token is not in open_clip's BPE vocabulary, or ``vocab_size`` is too small.
    """

    def __init__(self, bpe, tokens: Sequence[str], vocab_size: int):
        if vocab_size < len(tokens) + 4:
            raise ValueError(f"compact vocabulary of {len(tokens)} tokens needs vocab_size >= {len(tokens) + 4}, got {vocab_size}")
        unknown = [t for t in tokens if t not in bpe.encoder]
        if unknown:
            raise ValueError(f"compact vocabulary: {unknown[:5]} are not open_clip BPE tokens (write them as BPE pieces, "
                             f"e.g. 'circle</w>')")
        self.bpe, self.vocab_size = bpe, vocab_size
        self.context_length = bpe.context_length
        self.unk_id, self.sot_id, self.eot_id = vocab_size - 3, vocab_size - 2, vocab_size - 1
        # On the CPU explicitly: models may be built under ``with torch.device("meta")`` (budget estimates).
        table = torch.full((len(bpe.encoder),), self.unk_id, dtype=torch.long, device="cpu")
        table[0] = 0
        for i, t in enumerate(tokens, start=1):
            table[bpe.encoder[t]] = i
        table[bpe.sot_token_id], table[bpe.eot_token_id] = self.sot_id, self.eot_id
        self.table = table
        self._warned: set[str] = set()

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """Token ids (B, context_length), as open_clip's tokenizer returns them but in the compact vocabulary."""
        ids = self.bpe(texts, context_length) if context_length else self.bpe(texts)
        out = self.table[ids]
        if (out == self.unk_id).any():  # rare: a word the vocabulary lacks (mini-world texts never do)
            self._warn_unknown(texts)
        return out

    def _warn_unknown(self, texts: str | Sequence[str]) -> None:
        for text in [texts] if isinstance(texts, str) else texts:
            for i in self.bpe.encode(text):  # BPE pieces: "ring." is "ring" (known) and "." (maybe not)
                piece = self.bpe.decoder[i].replace("</w>", "")
                if int(self.table[i]) == self.unk_id and piece not in self._warned:
                    self._warned.add(piece)
                    log.warning("%r (in %r) is not in the compact vocabulary of this tiny model; it reads as unknown",
                                piece, text)

    def encode(self, text: str) -> list[int]:
        """Compact ids of ``text`` without start and end tokens."""
        return [int(self.table[i]) for i in self.bpe.encode(text)]
