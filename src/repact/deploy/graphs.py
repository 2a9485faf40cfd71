"""What a runtime makes of an exported graph: the nodes it runs after its own optimizations.

``ort_node_counts`` reads onnxruntime's optimized graph (``nchwc:Conv[HardSwish]`` is a convolution
with HardSwish fused into it, ``nchwc:ReorderInput`` a layout conversion, ``:Abs`` a standalone
pass); ``ov_node_counts`` the layer types of OpenVINO's compiled CPU model (``Subgraph`` is a
snippets JIT kernel fusing several elementwise ops, ``Eltwise`` a standalone elementwise pass,
``Reorder`` a layout conversion; post-ops fused into a convolution do not appear).
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Sequence

__all__ = ["ort_node_counts", "ov_node_counts"]


def ort_node_counts(path: str | os.PathLike, *, threads: int = 1) -> dict[str, int]:
    """``domain:OpType[activation]`` -> count in onnxruntime's optimized graph of the ONNX file at ``path``."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="repact-ort-graph-") as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads)
        so.log_severity_level = 3
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        graph = onnx.load(so.optimized_model_filepath, load_external_data=False).graph
    counts: Counter[str] = Counter()
    for n in graph.node:
        act = next((a.s.decode() for a in n.attribute if a.name == "activation"), None)
        counts[f"{n.domain.split('.')[-1] if n.domain else ''}:{n.op_type}" + (f"[{act}]" if act else "")] += 1
    return dict(sorted(counts.items()))


def ov_node_counts(path: str | os.PathLike, shape: Sequence[int], *, threads: int = 1) -> dict[str, int]:
    """Layer type -> count of OpenVINO's compiled CPU model of ``path`` at the static input ``shape``
    (parameters, results and constants left out)."""
    from .openvino_run import ov_compile, ov_layer_types

    counts = ov_layer_types(ov_compile(path, shape, threads=threads))
    return {k: v for k, v in sorted(counts.items()) if k not in ("Input", "Output", "Parameter", "Result", "Const")}
