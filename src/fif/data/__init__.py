"""Data: the Batch type, dataset specs, the benchmark registry (FiF's 63 datasets, the procedural mini
world, a user's YAML benchmark), readers of each on-disk layout, streams and their orderings, and the exact
per-batch mixture of pretraining, current-task and buffer data.

Importing the package registers the built-in benchmarks (each module's ``@register_benchmark`` line).
"""

import fif.data.fif_benchmark  # noqa: F401  (registers "fif")
import fif.data.mini  # noqa: F401  (registers "mini")
import fif.data.user_benchmark  # noqa: F401  (registers benchmark YAML paths)
