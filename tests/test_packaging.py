"""pyproject.toml says what the code needs: the torch floor covers the APIs it calls, and every
package-data file it declares exists."""

import re
import tomllib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _floor(name: str) -> tuple[int, ...]:
    spec = next(d for d in PYPROJECT["project"]["dependencies"] if re.match(rf"{name}\b", d))
    return tuple(int(p) for p in re.search(r">=\s*([\d.]+)", spec).group(1).split("."))


def test_torch_floor_covers_the_apis_the_code_calls():
    # register_fake / register_autograd / custom_op and is_autocast_enabled(device_type): 2.4;
    # torch.onnx.export(dynamo=...): 2.5 (the deploy pipeline passes it)
    assert _floor("torch") >= (2, 5)
    assert _floor("torchvision") >= (0, 20)  # torchvision's release for torch 2.5
    src = "\n".join(p.read_text() for p in (ROOT / "src" / "repact").rglob("*.py"))
    assert "register_fake" in src and "dynamo=" in src  # the reasons above are still in the code
    installed = tuple(int(p) for p in re.match(r"(\d+)\.(\d+)", torch.__version__).groups())
    assert installed >= _floor("torch")


def test_declared_package_data_exists():
    declared = PYPROJECT["tool"]["setuptools"]["package-data"]["repact"]
    pkg = ROOT / "src" / "repact"
    for pattern in declared:
        assert list(pkg.glob(pattern)), f"pyproject declares {pattern} but src/repact has no such file"
    assert (pkg / "py.typed").exists()


def test_yolo_extra_is_optional_and_not_in_all():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert any(d.startswith("ultralytics") for d in extras["yolo"])
    assert "yolo" not in extras["all"][0] and not any("ultralytics" in d for d in extras["all"])  # AGPL-3.0
    assert not any("ultralytics" in d for d in PYPROJECT["project"]["dependencies"])
