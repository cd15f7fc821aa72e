"""The package's layers import only downward (docs/architecture.md): parse every module's imports, at
module level and inside functions, and fail on an upward import or a deferred import of fif itself.

Deferred (function-level) imports are allowed only for optional or heavy third-party libraries, each
with a comment on its line or the line above saying why; never to dodge a cycle inside fif.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "fif"

# Bottom to top. A module may import its own layer and those below it.
LAYERS = ("core", "model", "data", "merge", "methods", "budget", "train", "eval", "results", "config",
          "runner", "studies", "update", "cli")
# The public face sits above everything (fif/__init__.py, fif/__main__.py).
TOP = len(LAYERS)
# Third-party modules a function may import late: optional extras (an ImportError names the extra) or
# libraries heavy enough to slow every command's start. Anything else is imported at module level.
LATE_OK = ("peft", "wandb", "tensorboard", "torch.utils.tensorboard", "matplotlib", "sklearn", "open_clip",
           "fcntl", "webdataset")


def layer_of(module: str) -> int:
    parts = module.split(".")
    if parts[0] != "fif":
        raise ValueError(module)
    if len(parts) == 1 or parts[1] in ("__init__", "__main__"):
        return TOP
    if parts[1] not in LAYERS:
        raise AssertionError(f"fif.{parts[1]} belongs to no layer: add it to LAYERS in {__file__}")
    return LAYERS.index(parts[1])


def module_name(path: Path) -> str:
    """fif.a.b of …/fif/a/b.py (the last folder named fif is the package root)."""
    parts = path.with_suffix("").parts
    parts = parts[len(parts) - 1 - parts[::-1].index("fif"):]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_level_nodes(tree: ast.Module) -> set[int]:
    """Nodes that run at import: the module body and what its if/try blocks hold (TYPE_CHECKING too)."""
    ids: set[int] = set()
    for node in tree.body:
        if isinstance(node, (ast.If, ast.Try)):
            ids.update(id(n) for n in ast.walk(node))
        ids.add(id(node))
    return ids


def imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, imported module, at module level) of every import in a file."""
    tree = ast.parse(path.read_text(), str(path))
    top = _module_level_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import; write fif.… in full"
            base = node.module or ""
            if base == "fif":  # from fif import x: x may be a submodule
                found += [(node.lineno, f"fif.{a.name}", id(node) in top) for a in node.names]
            else:
                found.append((node.lineno, base, id(node) in top))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, id(node) in top) for a in node.names]
    return found


def problems(root: Path = SRC) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        mod = module_name(path)
        here = layer_of(mod)
        lines = path.read_text().splitlines()
        for line, target, module_level in imports(path):
            where = f"{path.relative_to(root.parent)}:{line}"
            if target == "fif" or target.startswith("fif."):
                if target in ("fif", "fif.__version__"):
                    out.append(f"{where}: {mod} imports the public face `fif`; import from fif.core.version")
                    continue
                there = layer_of(target)
                if there > here:
                    out.append(f"{where}: {mod} ({LAYERS[here] if here < TOP else 'fif'}) imports {target} "
                               f"({LAYERS[there]}), a layer above it")
                elif not module_level and here < LAYERS.index("cli") and here != TOP:
                    out.append(f"{where}: {mod} imports {target} inside a function; import it at module level "
                               "(a deferred import must not dodge a cycle)")
            elif not module_level:
                if not any(target == m or target.startswith(m + ".") for m in LATE_OK):
                    out.append(f"{where}: {mod} imports {target} inside a function; import it at module level "
                               f"(only optional or heavy libraries are imported late: {', '.join(LATE_OK)})")
                elif "#" not in lines[line - 1] and not lines[line - 2].strip().startswith("#"):
                    out.append(f"{where}: {mod} imports {target} late without a comment saying why")
    return out


def test_every_import_points_down():
    found = problems()
    assert not found, "layering violations:\n" + "\n".join(found)


def test_an_upward_import_is_caught(tmp_path):
    pkg = tmp_path / "fif"
    (pkg / "core").mkdir(parents=True)
    (pkg / "core" / "seeding.py").write_text("import fif.runner.stream\n")
    (pkg / "data").mkdir()
    (pkg / "data" / "stream.py").write_text("def f():\n    from fif.core import seeding\n")
    (pkg / "__init__.py").write_text("")
    found = problems(pkg)
    assert len(found) == 2, found
    assert "fif/core/seeding.py:1" in found[0] and "a layer above it" in found[0]
    assert "fif/data/stream.py:2" in found[1] and "inside a function" in found[1]


@pytest.mark.parametrize("module", ["fif.core.io", "fif.runner.stream", "fif"])
def test_layer_of(module):
    assert layer_of(module) in range(TOP + 1)
