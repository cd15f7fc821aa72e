"""Optional packages are found missing at validation, with the command that installs them."""

from __future__ import annotations

import sys

import pytest

from fif.config import load_config
from fif.core.deps import install_command, is_installed, missing_dependency_problems
from fif.core.typed import ConfigError


def test_a_blocked_module_is_missing_and_a_present_one_is_not(monkeypatch):
    assert is_installed("json") and not is_installed("fif_no_such_module")
    monkeypatch.setitem(sys.modules, "json", None)  # what `import json` would fail on
    assert not is_installed("json")
    assert missing_dependency_problems("x=y", ("json",), "drop it") == [
        "x=y needs the json package, which is not installed: pip install json, or drop it"
    ]
    assert install_command("peft") == "pip install 'fif[peft]' (or pip install peft)"


@pytest.mark.parametrize("module, overrides, fix", [
    ("peft", ["method.name=lora"], "choose another method.name"),
    ("peft", ["method.name=vera"], "choose another method.name"),
    ("tensorboard", ["log.tensorboard=true"], "log.tensorboard=false"),
    ("wandb", ["log.wandb=true"], "log.wandb=false"),
])
def test_config_validation_names_the_missing_package_and_the_install_command(module, overrides, fix, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ConfigError) as e:
        load_config("mini", overrides)
    assert f"pip install 'fif[{module}]'" in str(e.value) and fix in str(e.value)
