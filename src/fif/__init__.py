"""fif: FoMo-in-Flux — continual multimodal pretraining of CLIP under honest compute budgets.

Python API (mirrors ``fif run``)::

    import fif
    cfg = fif.load_config("mini", ["method.name=finetune", "stream.tasks=4"])
    result = fif.run(cfg, out_dir="runs/demo")
    print(result.final)          # {'task': 3, 'a_ka': ..., 'a_zs': ..., 'gm': ...}
    fif.resume("runs/demo")      # continue an interrupted run from its newest checkpoint

The package is a stack of layers (docs/architecture.md); this module is its public face and imports
lazily, so ``import fif`` stays cheap.
"""

from fif.core.version import __version__  # noqa: F401


def load_config(preset="mini", overrides=None):
    """See :func:`fif.config.load_config`."""
    from fif.config import load_config as _load

    return _load(preset, overrides)


def run(cfg, out_dir=None, overwrite=False, on_event=None, progress=False):
    """See :func:`fif.runner.stream.run`."""
    from fif.runner.stream import run as _run

    return _run(cfg, out_dir=out_dir, overwrite=overwrite, on_event=on_event, progress=progress)


def resume(run_dir, overrides=None, on_event=None, progress=False):
    """See :func:`fif.runner.stream.resume`."""
    from fif.runner.stream import resume as _resume

    return _resume(run_dir, overrides=overrides, on_event=on_event, progress=progress)
