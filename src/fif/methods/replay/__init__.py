"""Replay: ER, DER, DER++ and GDumb learn from a small memory of earlier samples.

- **ER** (experience replay; Chaudhry et al. 2019): a reservoir of ``buffer_size`` image–text pairs of the
  update data seen so far (Vitter's algorithm R, so it is a uniform sample of the stream); each step adds
  a replay minibatch to the CLIP loss, at the model's own temperature (concatenated to the batch, or as a
  second CLIP loss).
- **DER** (Buzzega et al. 2020): the reservoir also stores the model's image and text embeddings at
  insertion; each step adds α · mean ‖f(x) − z‖² over replayed samples (dark knowledge: the past
  function, not only the past labels).
- **DER++**: DER plus β · the CLIP loss on the replayed pairs.
- **GDumb** (Prabhu et al. 2020): a class-balanced greedy memory over the task's concepts; at each task
  the model restarts from the base weights θ0 and trains on the memory only. Its training steps are the
  retrain (charged to the budget as steps); the weights they learn are deployed, never dropped.

The buffers are method state on the model's device: images (uint8 or fp16), tokens and embeddings of a
fixed number of rows, saved by :meth:`state_dict` for exact resume. The reservoir's insertions run in
``after_step`` as device ops only (a device-side counter of the samples seen, random numbers from a
device generator seeded from the run seed and task, a write-sink row for samples not kept): no host sync.
See docs/methods-distillation-replay.md.
"""

from fif.methods.replay import gdumb, reservoir  # noqa: F401  (registers er, der, derpp, gdumb)
from fif.methods.replay.buffers import (  # noqa: F401
    ImageCodec,
    Reservoir,
    embedding_mse,
    masked_clip_loss,
    reservoir_slots,
    sample_slots,
)
