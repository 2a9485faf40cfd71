"""INT8 post-training quantization of a deployed ONNX model, and what it costs in accuracy.

``quantize_int8`` runs onnxruntime's static quantization (QDQ format, int8 weights per output
channel, uint8 activations per tensor, min/max calibration) on an exported model, calibrated on
batches of real images. ``activation_ranges`` records, per activation site of a PyTorch model,
the per-channel output ranges on those images: static activation quantization gives a whole
tensor one scale, so a layer whose channels span very different ranges leaves its narrow channels
few of the 256 levels. ``onnx_top1`` evaluates an ONNX file on a dataset with onnxruntime.
``nodes_of_modules`` finds the exported nodes of given modules (by the scope names torch's ONNX
exporter gives them), for quantizers told to leave those modules in float.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..activations.piecewise import PiecewiseQuadratic

__all__ = ["QUANTIZE_MODES", "ACTIVATION_SITES", "quantize_int8", "onnx_top1", "activation_ranges", "activation_sites",
           "summarize_ranges", "image_batches", "module_path_of_node", "nodes_of_modules"]

QUANTIZE_MODES = ("int8",)
#: the activation modules whose outputs are measured, and which a quantizer may keep in float
ACTIVATION_SITES: tuple[type, ...] = (PiecewiseQuadratic, nn.Hardswish)


class QuantizeError(RuntimeError):
    """onnxruntime's quantization tools are missing or failed."""


def image_batches(dataset, indices: Sequence[int], batch: int = 32) -> list[torch.Tensor]:
    """The images of ``dataset`` at ``indices`` as float32 batches of at most ``batch``."""
    out, cur = [], []
    for i in indices:
        cur.append(dataset[int(i)][0])
        if len(cur) == batch:
            out.append(torch.stack(cur).float())
            cur = []
    if cur:
        out.append(torch.stack(cur).float())
    return out


def module_path_of_node(name: str) -> str | None:
    """The path of the module an exported node belongs to, from the scope name torch's ONNX exporter gives
    it: ``/features/features.1/block/block.0/block.0.2/Mul`` -> ``features.1.block.0.2`` (each scope
    repeats its parent's name when the parent is a container); None for a node outside any module."""
    scopes = name.split("/")[1:-1] if name.startswith("/") else []
    if not scopes:
        return None
    path, prev = scopes[0], scopes[0]
    for s in scopes[1:]:
        path += s[len(prev):] if s.startswith(prev + ".") else "." + s
        prev = s
    return path


def nodes_of_modules(node_names: Iterable[str], paths: Iterable[str]) -> list[str]:
    """The names among ``node_names`` of nodes exported from the modules at ``paths`` (or inside them)."""
    wanted = tuple(paths)
    out = []
    for n in node_names:
        p = module_path_of_node(n)
        if p is not None and any(p == w or p.startswith(w + ".") for w in wanted):
            out.append(n)
    return out


def activation_sites(model: nn.Module, kinds: tuple[type, ...] = ACTIVATION_SITES) -> list[str]:
    """The paths of ``model``'s activation modules of ``kinds``."""
    return list(_sites(model, kinds))


def quantize_int8(fp32_path: str | os.PathLike, int8_path: str | os.PathLike, calibration: Iterable[torch.Tensor],
                  *, per_channel: bool = True, float_sites: Sequence[str] = ()) -> Path:
    """Static INT8 quantization of ``fp32_path`` into ``int8_path`` (QDQ, int8 per-channel weights,
    uint8 activations), calibrated by min/max on the ``calibration`` batches; the nodes of the modules at
    ``float_sites`` stay float (between DequantizeLinear and QuantizeLinear). Returns the path."""
    try:
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                              quantize_static)
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise QuantizeError(f"INT8 quantization needs onnxruntime's quantization tools ({exc}); "
                            "pip install 'repact[onnx]'") from None
    import onnxruntime as ort

    batches = [b.detach().cpu().float().numpy() for b in calibration]
    if not batches:
        raise ValueError("no calibration images: give at least one batch")
    name = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {name: b}

    out = Path(int8_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".repact-quant-", dir=out.parent) as tmp:  # same file system: os.replace
        pre, staged = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        excluded = []
        if float_sites:
            import onnx

            excluded = nodes_of_modules((n.name for n in onnx.load(str(pre)).graph.node), float_sites)
        quantize_static(str(pre), str(staged), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=excluded)
        os.replace(staged, out)
    return out


def onnx_top1(path_or_session: Any, loader: Iterable, *, threads: int | None = None,
              limit: int | None = None) -> dict[str, float]:
    """``{"acc1", "n"}`` of an ONNX model (a path or an onnxruntime session) over ``loader``'s (images, labels)."""
    from .onnx_export import ort_session

    sess = path_or_session if hasattr(path_or_session, "run") else ort_session(path_or_session, threads=threads)
    name = sess.get_inputs()[0].name
    correct = n = 0
    for i, (x, y) in enumerate(loader):
        if limit is not None and i >= limit:
            break
        logits = sess.run(None, {name: x.float().numpy()})[0]
        correct += int((logits.argmax(1) == y.numpy()).sum())
        n += int(y.numel())
    return {"acc1": 100.0 * correct / max(n, 1), "n": n}


def _sites(model: nn.Module, kinds: tuple[type, ...]) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if n and isinstance(m, kinds)}


@torch.no_grad()
def activation_ranges(model: nn.Module, batches: Iterable[torch.Tensor],
                      kinds: tuple[type, ...] = ACTIVATION_SITES) -> dict[str, dict[str, list[float]]]:
    """Per activation site (modules of ``kinds``): per-channel min and max of its output over ``batches``."""
    sites = _sites(model, kinds)
    lo: dict[str, torch.Tensor] = {}
    hi: dict[str, torch.Tensor] = {}

    def hook(path):
        def fn(_m, _i, out):
            dims = [d for d in range(out.dim()) if d != 1]
            mn, mx = out.amin(dim=dims), out.amax(dim=dims)
            lo[path] = torch.minimum(lo[path], mn) if path in lo else mn
            hi[path] = torch.maximum(hi[path], mx) if path in hi else mx
        return fn

    handles = [m.register_forward_hook(hook(p)) for p, m in sites.items()]
    was = model.training
    model.eval()
    try:
        for b in batches:
            model(b)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return {p: {"min": lo[p].tolist(), "max": hi[p].tolist()} for p in sites if p in lo}


def summarize_ranges(ranges: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """Per site: the tensor's range, the median channel's range, and the bits of an 8-bit per-tensor
    scale left to the median channel (8 - log2(tensor range / median channel range)); and their medians."""
    rows = {}
    for path, r in ranges.items():
        lo, hi = np.asarray(r["min"]), np.asarray(r["max"])
        width = hi - lo
        tensor = float(hi.max() - lo.min())
        med = float(np.median(width))
        bits = 8.0 - math.log2(tensor / med) if med > 0 and tensor > 0 else float("nan")
        rows[path] = {"tensor_range": tensor, "median_channel_range": med, "max_channel_range": float(width.max()),
                      "min": float(lo.min()), "max": float(hi.max()), "median_channel_bits": bits}
    vals = [r["median_channel_bits"] for r in rows.values() if r["median_channel_bits"] == r["median_channel_bits"]]
    spread = [r["tensor_range"] / r["median_channel_range"] for r in rows.values() if r["median_channel_range"] > 0]
    return {"sites": rows, "median_bits": float(np.median(vals)) if vals else None,
            "min_bits": float(min(vals)) if vals else None,
            "median_spread": float(np.median(spread)) if spread else None}
