"""repact.integrations.ultralytics without ultralytics: the module imports, its functions say how to install it.

Runs whether or not ultralytics is installed: every ``ultralytics`` module is hidden (``None`` in
``sys.modules`` makes Python's import fail), and the integration module is imported afresh.
"""

from __future__ import annotations

import importlib
import sys

import pytest
from torch import nn

import repact.integrations


def test_missing_ultralytics_gives_an_import_error_naming_pip_install(monkeypatch):
    for name in [n for n in sys.modules if n == "ultralytics" or n.startswith("ultralytics.")] + ["ultralytics"]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "repact.integrations.ultralytics", raising=False)
    monkeypatch.setattr(repact.integrations, "ultralytics", None, raising=False)  # restored afterwards
    with pytest.raises(ImportError):
        import ultralytics  # noqa: F401  (the simulation holds)

    mod = importlib.import_module("repact.integrations.ultralytics")  # no ultralytics needed to import it
    for call in (lambda: mod.swap_yolo_activations(nn.Conv2d(3, 8, 3)), lambda: mod.reparameterize_yolo(nn.SiLU())):
        with pytest.raises(ImportError, match=r"pip install ultralytics") as info:
            call()
        assert "AGPL" in str(info.value) and "repact[yolo]" in str(info.value)
