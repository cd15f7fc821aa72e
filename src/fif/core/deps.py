"""Optional dependencies: found missing when the config is validated, with the command that installs them,
not as a ``ModuleNotFoundError`` after the base model was built.

fif imports these lazily (``method.name=lora`` needs peft, ``log.tensorboard=true`` tensorboard,
``log.wandb=true`` wandb), so ``pip install -e .`` stays small; :func:`missing_dependency_problems`
lets validation ask for them up front.
"""

from __future__ import annotations

import importlib.util
import sys

# module → the fif extra that installs it (pyproject.toml [project.optional-dependencies])
EXTRAS = {"peft": "peft", "tensorboard": "tensorboard", "wandb": "wandb"}


def is_installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (a ``None`` in ``sys.modules`` blocks it)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module without a spec
        return False


def install_command(module: str) -> str:
    """``pip install 'fif[peft]'`` (or the plain package when fif has no extra for it)."""
    extra = EXTRAS.get(module)
    return f"pip install 'fif[{extra}]' (or pip install {module})" if extra else f"pip install {module}"


def missing_dependency_problems(key: str, modules: tuple[str, ...], alternative: str) -> list[str]:
    """One problem per module of ``modules`` that is not installed.

    Args:
        key: the setting that needs them, as ``section.key=value``.
        modules: importable module names.
        alternative: what to set instead when the user does not want to install them.
    """
    return [
        f"{key} needs the {m} package, which is not installed: {install_command(m)}, or {alternative}"
        for m in modules if not is_installed(m)
    ]
