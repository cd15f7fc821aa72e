"""Batch: the DataLoader's pin_memory reaches every tensor of a batch (no GPU here: pinning is stubbed)."""

from __future__ import annotations

import torch
from torch.utils.data._utils.pin_memory import pin_memory

from fif.data.batch import Batch, synthetic_batch
from fif.model.clip import build_clip


def test_pin_memory_pins_every_field(monkeypatch):
    pinned = []

    def fake_pin(tensor):  # pinning needs an accelerator; record what would be pinned
        pinned.append(tensor)
        return tensor.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    batch = Batch(torch.rand(2, 3, 4, 4), torch.ones(2, 5, dtype=torch.long), torch.zeros(2, dtype=torch.int8),
                  torch.tensor([0, 1]), bad=(("pool", "a.tar (sample 3)"),))
    out = pin_memory(batch)  # what DataLoader(pin_memory=True) does with each item
    assert isinstance(out, Batch) and len(pinned) == 4 and out.bad == batch.bad  # the unreadable files ride along
    assert all(torch.equal(getattr(out, f), getattr(batch, f)) for f in ("images", "tokens", "source", "labels"))
    assert len(pin_memory(Batch(batch.images, batch.tokens, batch.source)).images) == 2 and len(pinned) == 7


def test_a_synthetic_batch_reads_as_known_words_on_every_tiny_model(caplog):
    """The budget's synthetic captions are words the tiny models' compact vocabulary holds (an unknown word
    printed a warning at the top of every default run)."""
    for arch in ("fif-mini-rn32", "fif-mini-vit32"):
        with caplog.at_level("WARNING", logger="fif.model.vocab"):
            synthetic_batch(build_clip(arch), 2, "cpu")
    assert not [r for r in caplog.records if r.name == "fif.model.vocab"]
