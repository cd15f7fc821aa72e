"""A tiny linear CLIP stand-in for the method tests (on the test path: ``pythonpath`` in pyproject.toml).

No BatchNorm, so train and eval mode agree, and small enough for exact hand computations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class TinyClip(nn.Module):
    """A linear CLIP with open_clip's interface: image = W·x (flattened), text = sum of token embeddings.

    Token ids are taken modulo ``vocab``, so any tokenizer's ids fit.
    """

    def __init__(
        self, dim_in: int = 12, vocab: int = 16, dim: int = 4, bias: bool = True, logit_scale: float = math.log(10.0)
    ):
        super().__init__()
        self.visual = nn.Linear(dim_in, dim, bias=bias)
        self.token_embedding = nn.Embedding(vocab, dim)
        self.logit_scale = nn.Parameter(torch.tensor(logit_scale))

    def encode_image(self, images, normalize: bool = False):
        f = self.visual(images.flatten(1))
        return F.normalize(f, dim=-1) if normalize else f

    def encode_text(self, tokens, normalize: bool = False):
        f = self.token_embedding(tokens % self.token_embedding.num_embeddings).sum(1)
        return F.normalize(f, dim=-1) if normalize else f

    def forward(self, images, tokens):
        return {
            "image_features": self.encode_image(images, normalize=True),
            "text_features": self.encode_text(tokens, normalize=True),
            "logit_scale": self.logit_scale.exp(),
        }
