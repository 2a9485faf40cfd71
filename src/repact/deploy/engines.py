"""Benchmark runners of the optional engines: OpenVINO (CPU plugin) and ExecuTorch (XNNPACK)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["require_engine", "optional_engine_runners"]

_INSTALL = {"openvino": "pip install 'repact[openvino]'", "executorch": "pip install 'repact[executorch]'"}


def require_engine(engine: str) -> None:
    """``ValueError`` in one line when the package of an optional engine is not installed."""
    from .executorch_export import executorch_available
    from .openvino_run import openvino_available

    ok = {"openvino": openvino_available, "executorch": executorch_available}[engine]()
    if not ok:
        raise ValueError(f"engine {engine!r} needs a package that is not installed: {_INSTALL[engine]}")


def optional_engine_runners(engine: str, models: dict[str, nn.Module], x: torch.Tensor, workdir: Path, threads: int,
                            forms: dict[str, str]) -> tuple[dict[str, Any], dict[str, float]]:
    """Callables running each model in ``engine`` on ``x`` (exported with ``forms[variant]``), and setup seconds."""
    runners: dict[str, Any] = {}
    setup: dict[str, float] = {}
    for k, m in models.items():
        t0 = time.perf_counter()
        if engine == "openvino":
            from .onnx_export import export_onnx
            from .openvino_run import ov_compile

            path = export_onnx(m, x, workdir / f"{k}-ov.onnx", form=forms[k])
            request = ov_compile(path, tuple(x.shape), threads=threads).create_infer_request()
            feed = x.detach().numpy()
            runners[k] = (lambda r=request: r.infer({0: feed}))
        else:
            from .executorch_export import executorch_method, export_executorch

            torch.set_num_threads(threads)
            path, _ = export_executorch(m, x, workdir / f"{k}-b{x.shape[0]}.pte", form=forms[k])
            method = executorch_method(path)
            args = [x.detach().contiguous()]
            runners[k] = (lambda meth=method: meth.execute(args))
        setup[k] = time.perf_counter() - t0
    return runners, setup
