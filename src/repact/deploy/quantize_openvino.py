"""INT8 post-training quantization for OpenVINO with NNCF; optional (``pip install 'repact[openvino]'``).

``quantize_int8_openvino`` reads an exported ONNX file into OpenVINO at a static input shape (batch
1, as the FP32 OpenVINO check compiles it), runs ``nncf.quantize`` (int8 weights per output channel,
8-bit activations per tensor, min/max statistics on the calibration images) and writes the OpenVINO
IR (``.xml`` + ``.bin``). The nodes of the activation modules named in ``float_sites`` are left to
NNCF's ignored scope: the activation then runs in float inside the one kernel OpenVINO compiles
per site, and only its output is quantized (for the next convolution). On the trained RepAct
MobileNetV3-Small this made the INT8 model run as fast as the INT8 HardSwish model at batch 32
(0.93-1.01x, against 1.32-1.34x with the activation's own nodes quantized) at the same top-1
(docs/benchmarks.md). ``ov_top1`` evaluates an ONNX or IR file with OpenVINO's CPU plugin.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from .openvino_run import ov_compile
from .quantize import QuantizeError, nodes_of_modules

__all__ = ["OPENVINO_INT8_FORMAT", "openvino_quantize_missing", "quantize_int8_openvino", "ov_top1"]

OPENVINO_INT8_FORMAT = ("OpenVINO IR with FakeQuantize: int8 weights per output channel, 8-bit activations per "
                        "tensor, min/max calibration, the activation sites' own nodes in float (NNCF post-training "
                        "quantization, performance preset, the sites in its ignored scope)")


def openvino_quantize_missing() -> list[str]:
    """The packages ``quantize_int8_openvino`` needs that are not installed (``openvino``, ``nncf``)."""
    import importlib.util

    missing = []
    for name in ("openvino", "nncf"):
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a module set to None in sys.modules, or one without a spec
            found = False
        if not found:
            missing.append(name)
    return missing


def require_openvino_quantize(what: str = "INT8 quantization for OpenVINO") -> None:
    """:class:`QuantizeError` (one line: ``what`` needs ..., naming what to install) when OpenVINO or NNCF
    is missing."""
    missing = openvino_quantize_missing()
    if missing:
        raise QuantizeError(f"{what} needs {' and '.join(missing)}, which "
                            f"{'is' if len(missing) == 1 else 'are'} not installed: pip install 'repact[openvino]'")


def quantize_int8_openvino(fp32_path: str | os.PathLike, xml_path: str | os.PathLike,
                           calibration: Iterable[torch.Tensor], *, float_sites: Sequence[str] = (),
                           **options: Any) -> Path:
    """Quantize the ONNX file ``fp32_path`` with NNCF, calibrated on the ``calibration`` batches (split into
    single images: the model is read at the static shape of one), into the OpenVINO IR ``xml_path`` (and the
    ``.bin`` beside it, both replaced atomically). The nodes of the modules at ``float_sites`` (paths in the
    exported model) stay float; ``options`` go to ``nncf.quantize`` (e.g. ``preset``, ``fast_bias_correction``).
    Returns the ``.xml`` path."""
    require_openvino_quantize()
    import nncf
    import openvino as ov

    items = [b[i:i + 1].detach().cpu().float().numpy() for b in calibration for i in range(int(b.shape[0]))]
    if not items:
        raise ValueError("no calibration images: give at least one batch")
    model = ov.Core().read_model(str(fp32_path))
    model.reshape(list(items[0].shape))
    if float_sites:
        names = nodes_of_modules((op.get_friendly_name() for op in model.get_ops()), float_sites)
        options["ignored_scope"] = nncf.IgnoredScope(names=names, validate=False)
    quantized = nncf.quantize(model, nncf.Dataset(items), subset_size=len(items), **options)
    out = Path(xml_path)
    if out.suffix != ".xml":
        raise ValueError(f"an OpenVINO IR file ends in .xml, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".repact-quant-", dir=out.parent) as tmp:  # same file system: os.replace
        staged = Path(tmp) / out.name  # the .xml finds its weights as the .bin of the same stem
        ov.save_model(quantized, str(staged), compress_to_fp16=False)  # float constants stay float32
        os.replace(staged.with_suffix(".bin"), out.with_suffix(".bin"))
        os.replace(staged, out)
    return out


def ov_top1(path: str | os.PathLike, loader: Iterable, *, threads: int | None = None,
            limit: int | None = None) -> dict[str, float]:
    """``{"acc1", "n"}`` of an ONNX or OpenVINO IR file run by OpenVINO over ``loader``'s (images, labels);
    compiled once per batch shape (static shapes)."""
    compiled: dict[tuple[int, ...], Any] = {}
    correct = n = 0
    for i, (x, y) in enumerate(loader):
        if limit is not None and i >= limit:
            break
        shape = tuple(int(s) for s in x.shape)
        if shape not in compiled:
            compiled[shape] = ov_compile(path, shape, threads=threads)
        logits = compiled[shape](x.float().numpy())[0]
        correct += int((logits.argmax(1) == y.numpy()).sum())
        n += int(y.numel())
    return {"acc1": 100.0 * correct / max(n, 1), "n": n}
