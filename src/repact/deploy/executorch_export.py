"""ExecuTorch export with the XNNPACK delegate (mobile CPUs); optional (``pip install executorch``).

The deploy model is exported in the plain basis form (:class:`~repact.deploy.PlainBasis`, only
``mul``/``add``/``relu``/``hardswish``), which XNNPACK takes whole; the ``.pte`` file has a static
input shape, that of the example input.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .._modes import eval_mode
from .onnx_forms import prepare_for_export

__all__ = ["executorch_available", "export_executorch", "executorch_method", "executorch_parity",
           "executorch_checked", "undelegated_ops"]

_INSTALL = "pip install 'repact[executorch]'"


def executorch_available() -> bool:
    try:
        import executorch.exir  # noqa: F401
        import executorch.runtime  # noqa: F401
    except ImportError:
        return False
    return True


def _lowered(model: nn.Module, example: torch.Tensor, form: str):
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    except ImportError:
        raise ImportError(f"ExecuTorch is not installed: {_INSTALL}") from None
    prepared, _ = prepare_for_export(model, example, form)
    with torch.no_grad():
        exported = torch.export.export(prepared, (example,))
    return to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])


def undelegated_ops(lowered) -> dict[str, int]:
    """Operators left outside the XNNPACK delegate (run by ExecuTorch's portable kernels)."""
    out: dict[str, int] = {}
    for node in lowered.exported_program().graph_module.graph.nodes:
        if node.op == "call_function" and "executorch_call_delegate" not in str(node.target) \
                and "getitem" not in str(node.target):
            name = getattr(node.target, "__name__", str(node.target))
            out[name] = out.get(name, 0) + 1
    return out


def export_executorch(model: nn.Module, example: torch.Tensor, path: str | os.PathLike, *,
                      form: str = "basis") -> tuple[Path, dict[str, int]]:
    """Write ``model`` (eval mode, a copy) as an XNNPACK-delegated ``.pte`` file at ``path``; returns the
    path and the operators XNNPACK did not take."""
    with eval_mode(model):
        lowered = _lowered(model, example, form)
    left = undelegated_ops(lowered)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(lowered.to_executorch().buffer)
    os.replace(tmp, path)
    return path, left


def executorch_method(path: str | os.PathLike) -> Any:
    """The loaded ``forward`` method of a ``.pte`` file (``method.execute([x])`` runs it)."""
    from executorch.runtime import Runtime

    return Runtime.get().load_program(str(path)).load_method("forward")


def executorch_parity(model: nn.Module, path: str | os.PathLike, x: torch.Tensor) -> float:
    """Max absolute difference between ``model`` and the ``.pte`` file on ``x`` (its export shape)."""
    method = executorch_method(path)
    with eval_mode(model), torch.no_grad():
        ref = model(x)
    got = method.execute([x.float().contiguous()])[0]
    return float((ref.double() - got.double()).abs().max())


def executorch_checked(deployed: nn.Module, path: Path, x: torch.Tensor, parity_tol: float,
                       say: Callable[[str], None]) -> dict[str, Any]:
    """Export ``deployed`` to ``path`` at ``x``'s shape and compare the ``.pte`` file with PyTorch on ``x``
    and on a second input of that shape; the deploy report's ``executorch`` entry. ``DeployError`` when
    it differs by more than ``parity_tol``."""
    import executorch

    t0 = time.perf_counter()
    path, left = export_executorch(deployed, x, path, form="basis")
    seconds = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(1)
    parity = max(executorch_parity(deployed, path, t) for t in (x, torch.randn(x.shape, generator=gen)))
    say(f"executorch: wrote {path.name} (XNNPACK, input {list(x.shape)}, {seconds:.0f} s), max abs diff "
        f"{parity:.3e}; outside the delegate: {left or 'nothing'}")
    if not parity <= parity_tol:
        from .pipeline import DeployError

        raise DeployError(f"ExecuTorch differs from PyTorch by {parity:.3e}, above the tolerance {parity_tol:g}; "
                          "nothing was written")
    return {"file": path.name, "delegate": "xnnpack", "input_shape": list(x.shape), "parity_max_abs": parity,
            "undelegated_ops": left,
            "export_seconds": seconds, "version": getattr(executorch, "__version__", "unknown")}
