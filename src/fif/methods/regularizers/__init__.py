"""Weight regularizers: EWC, SI and MAS keep important weights close to where earlier tasks left them.

All three add a quadratic penalty to the CLIP loss on later tasks,

    L(θ) = L_CLIP(θ) + s · Σ_i Ω_i (θ_i − θ*_i)²

with θ* the weights at the end of the last task and Ω a per-weight importance, and differ in how Ω is
estimated (FiF §4, "regularization"):

- **EWC** (Kirkpatrick et al. 2017; online, Schwarz et al. 2018): Ω = F, the diagonal Fisher of the CLIP
  loss over up to ``fisher_samples`` of the task's training samples, at the model's own temperature;
  F ← γ·F + F_t; s = λ/2.
- **SI** (Zenke et al. 2017): Ω ← Ω + ω/(Δ² + ξ), with ω = −Σ_steps g·Δθ the path integral of the
  training loss along the task's trajectory (accumulated in ``after_step``, on the device) and Δ the
  task's total change of each weight; s = c.
- **MAS** (Aljundi et al. 2018): Ω = mean |∂‖f(x)‖²/∂θ| over the task's samples, with f the image and text
  embeddings before normalisation (MAS's label-free importance); Ω ← γ·Ω + Ω_t; s = λ.

Unlike the reference pipeline, the learned weights are kept at every task end (deploy = the model as it
is); only the importance and the anchor are stored (one copy each of the trainable weights, on the
device, not one per task). EWC's and MAS's passes are charged to the budget (:meth:`extra_cost`), so
they leave fewer training steps. See docs/methods-regularizers.md.
"""

from fif.methods.regularizers.importance import (  # noqa: F401
    Anchor,
    Objective,
    PassCost,
    _QuadraticPenalty,
    importance_pass,
    output_norm_objective,
    pass_samples,
)
from fif.methods.regularizers.methods import (  # noqa: F401  (registers ewc, mas, si)
    Ewc,
    EwcConfig,
    Mas,
    MasConfig,
    Si,
    SiConfig,
)
