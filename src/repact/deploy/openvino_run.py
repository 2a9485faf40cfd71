"""OpenVINO (CPU plugin) for the deploy checks and benchmarks; optional (``pip install 'repact[openvino]'``).

Models are compiled at a static input shape: the CPU plugin tokenizes elementwise subgraphs into
one JIT kernel ("snippets") only for static shapes, and the deploy forms rely on it.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from torch import nn

from .._modes import eval_mode

__all__ = ["openvino_available", "ov_compile", "ov_parity", "ov_layer_types"]


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def ov_compile(path: str | os.PathLike, shape: Sequence[int], *, threads: int | None = None) -> Any:
    """An OpenVINO CPU compiled model of the ONNX file at ``path`` for the static input ``shape`` (f32)."""
    try:
        import openvino as ov
    except ImportError:
        raise ImportError("OpenVINO is not installed: pip install 'repact[openvino]'") from None
    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape([int(s) for s in shape])
    cfg = {"INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()), "INFERENCE_PRECISION_HINT": "f32",
           "PERFORMANCE_HINT": "LATENCY"}
    return core.compile_model(model, "CPU", cfg)


def ov_layer_types(compiled: Any) -> dict[str, int]:
    """Node count per executed layer type (``Convolution``, ``Subgraph``, ``Eltwise``, ``Reorder`` ...)."""
    out: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        out[kind] = out.get(kind, 0) + 1
    return out


def ov_parity(model: nn.Module, path: str | os.PathLike, inputs: Sequence[torch.Tensor], *,
              threads: int | None = None) -> float:
    """Max absolute difference between ``model`` and OpenVINO on ``path`` over ``inputs`` (one compile per shape)."""
    worst = 0.0
    with eval_mode(model), torch.no_grad():
        for x in inputs:
            compiled = ov_compile(path, tuple(x.shape), threads=threads)
            got = torch.from_numpy(compiled(x.float().numpy())[0].copy())
            ref = model(x)
            d = float((ref.double() - got.double()).abs().max())
            worst = max(worst, d if d == d else float("inf"))
    return worst
