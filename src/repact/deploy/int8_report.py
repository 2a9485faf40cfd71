"""``repact deploy --quantize int8``: quantize a deployed model and report what it costs.

One pipeline, two quantizers (:data:`INT8_ROUTES`, picked by the deploy target with
:func:`int8_runtime`): ``--target openvino`` quantizes with NNCF for OpenVINO and writes an
OpenVINO IR (``NAME_int8.xml`` + ``.bin``); every other target with onnxruntime's QDQ quantization
(``NAME_int8.onnx``). Each route quantizes its own export form (:attr:`Int8Route.source_form`), whatever
form the FP32 file was written in: onnxruntime turns every node of the exported form into an int8
op of its own, and of the exact forms the plain basis formula gave the fewest and fastest
(MobileNetV3-Small at 32 px, 2 threads, ratio to the INT8 HardSwish model at batch 1 / 32: basis
1.40 / 1.59, the onnxruntime ``conv`` form 1.80 / 1.80, ``auto`` 2.26 / 2.72, ``where`` 3.7 / 10.3);
OpenVINO quantizes the form it runs in FP32 (its CPU plugin folds each site's elementwise graph into
one kernel). Calibration takes N class-balanced images of the data folder's ``train/`` split
(evaluation transforms, no augmentation); accuracy is measured on its ``val/`` split with the
route's runtime for the FP32 and the INT8 file alike; latency of the two files is timed in
interleaved rounds with that runtime.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from .latency import time_interleaved
from .onnx_export import export_onnx
from .quantize import activation_ranges, activation_sites, image_batches, onnx_top1, quantize_int8, summarize_ranges
from .quantize_openvino import OPENVINO_INT8_FORMAT, ov_top1, quantize_int8_openvino
from .runtime_forms import form_for_target

__all__ = ["INT8_ROUTES", "INT8_SOURCE_FORM", "Int8Route", "calibration_data", "int8_file", "int8_latency",
           "int8_report", "int8_runtime"]

#: the export form onnxruntime's INT8 file is quantized from
INT8_SOURCE_FORM = "basis"


@dataclass(frozen=True)
class Int8Route:
    """How one runtime quantizes, evaluates and times a deployed model."""

    runtime: str
    suffix: str  # of the INT8 file
    source_form: str  # the export form that is quantized
    format: str  # what the INT8 file holds, for the report
    quantize: Callable[..., Path]  # (FP32 ONNX file, INT8 path, calibration batches, float_sites=) -> INT8 path
    top1: Callable[..., dict[str, float]]  # (file, loader, threads=) -> {"acc1", "n"}
    float_activations: bool  # keep the activation sites' own nodes in float (only their outputs quantized)


#: runtime -> how it quantizes, evaluates and times (OpenVINO and NNCF are imported on use)
INT8_ROUTES: dict[str, Int8Route] = {
    "onnxruntime": Int8Route("onnxruntime", ".onnx", INT8_SOURCE_FORM,
                             "QDQ, int8 weights per channel, uint8 activations per tensor, min/max calibration "
                             "(onnxruntime.quantization)", quantize_int8, onnx_top1, float_activations=False),
    "openvino": Int8Route("openvino", ".xml", form_for_target("openvino"), OPENVINO_INT8_FORMAT,
                          quantize_int8_openvino, ov_top1, float_activations=True),
}


def int8_runtime(target: str | None) -> str:
    """The runtime whose quantizer ``repact deploy --target TARGET --quantize int8`` uses."""
    return "openvino" if target == "openvino" else "onnxruntime"


def int8_file(fp32_onnx: str | Path, name: str, runtime: str) -> Path:
    """The INT8 file beside ``fp32_onnx``: ``NAME_int8.onnx`` (onnxruntime) or ``NAME_int8.xml`` (OpenVINO)."""
    return Path(fp32_onnx).with_name(f"{name}_int8{INT8_ROUTES[runtime].suffix}")


def calibration_data(data_dir: str | Path, shape: Sequence[int], n: int, *, seed: int = 0):
    """(calibration batches of ``n`` balanced train images, the val dataset, DataInfo) of an image folder
    (``train/<class>/``, ``val/<class>/``) at ``shape``'s size."""
    from ..data import build_datasets
    from ..data.common import dataset_targets
    from ..data.subsets import balanced_indices

    if n < 1:
        raise ValueError(f"the number of calibration images must be positive, got {n}")
    channels, size = int(shape[0]), int(shape[-1])
    train, val, info = build_datasets("imagefolder", data_dir, img_size=size, augment="none")
    if info.in_channels != channels:
        raise ValueError(f"{data_dir} has {info.in_channels}-channel images; the model takes {channels}")
    train.transform = val.transform  # evaluation transforms for calibration
    idx = balanced_indices(dataset_targets(train), min(int(n), len(train)), seed=seed)
    return image_batches(train, idx), val, info


def _runners(files: dict[str, Path], x, runtime: str, threads: int | None, spinning: bool) -> dict[str, Callable]:
    """One call per file running it on ``x`` with ``runtime`` (OpenVINO: compiled at ``x``'s static shape)."""
    if runtime == "openvino":
        from .openvino_run import ov_compile

        reqs = {k: ov_compile(p, tuple(x.shape), threads=threads).create_infer_request() for k, p in files.items()}
        return {k: (lambda r=r: r.infer({0: x})) for k, r in reqs.items()}
    from .onnx_export import ort_session

    sessions = {k: ort_session(p, threads=threads, spinning=spinning) for k, p in files.items()}
    return {k: (lambda s=s: s.run(None, {s.get_inputs()[0].name: x})) for k, s in sessions.items()}


def int8_latency(files: dict[str, Path], shape: Sequence[int], batch_sizes: Sequence[int] = (1, 32), *,
                 runtime: str = "onnxruntime", threads: int | None = None, rounds: int = 20, warmup: int = 3,
                 baseline: str | None = None, spinning: bool = True) -> list[dict[str, Any]]:
    """Interleaved timings of ``files`` (name -> ONNX or, with OpenVINO, IR path) at each batch size with
    ``runtime`` (``onnxruntime`` or ``openvino``); one row per file. ``spinning=False``: idle onnxruntime
    threads do not busy-wait (steadier on a shared machine)."""
    rows = []
    gen = torch.Generator().manual_seed(0)
    for b in batch_sizes:
        x = torch.randn(int(b), *shape, generator=gen).numpy()
        runners = _runners(files, x, runtime, threads, spinning)
        for k, t in time_interleaved(runners, baseline=baseline, warmup=warmup, rounds=rounds).items():
            rows.append({"batch": int(b), "variant": k, **t.as_dict()})
    return rows


def int8_report(deployed: nn.Module, fp32_onnx: Path, int8_path: Path, data_dir: str | Path, shape: Sequence[int],
                *, runtime: str = "onnxruntime", calibration_images: int = 500, val_images: int | None = None,
                seed: int = 0, threads: int | None = None, latency_rounds: int = 20,
                say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Quantize ``deployed`` (exported in ``runtime``'s source form) into ``int8_path`` with ``runtime``'s
    quantizer and measure it beside ``fp32_onnx`` with that runtime: the report's ``int8`` entry."""
    if runtime not in INT8_ROUTES:
        raise ValueError(f"runtime must be one of {', '.join(INT8_ROUTES)}, got {runtime!r}")
    route = INT8_ROUTES[runtime]
    t0 = time.perf_counter()
    calib, val, info = calibration_data(data_dir, shape, calibration_images, seed=seed)
    n_cal = sum(int(b.shape[0]) for b in calib)
    say(f"int8: calibrating on {n_cal} images of {Path(data_dir) / 'train'}")
    with tempfile.TemporaryDirectory(prefix=".repact-int8-", dir=Path(int8_path).parent) as tmp:
        source = export_onnx(deployed, calib[0][:1], Path(tmp) / "source.onnx", form=route.source_form)
        floats = activation_sites(deployed) if route.float_activations else []
        route.quantize(source, int8_path, calib, float_sites=floats)
    ranges = summarize_ranges(activation_ranges(deployed, calib))
    if val_images is not None:
        val = torch.utils.data.Subset(val, range(min(int(val_images), len(val))))
    loader = DataLoader(val, batch_size=256, shuffle=False)
    acc_fp32 = route.top1(fp32_onnx, loader, threads=threads)
    acc_int8 = route.top1(int8_path, loader, threads=threads)
    say(f"int8: top-1 FP32 {acc_fp32['acc1']:.2f}%, INT8 {acc_int8['acc1']:.2f}% on {acc_int8['n']} val images "
        f"({runtime})")
    latency = int8_latency({"fp32": fp32_onnx, "int8": int8_path}, shape, runtime=runtime, threads=threads,
                           rounds=latency_rounds)
    files = [Path(int8_path)] + ([Path(int8_path).with_suffix(".bin")] if route.suffix == ".xml" else [])
    return {"file": Path(int8_path).name, "files": [p.name for p in files], "runtime": runtime,
            "format": route.format, "quantized_form": route.source_form,
            "float_activation_sites": len(floats),
            "calibration_images": n_cal, "calibration_split": str(Path(data_dir) / "train"),
            "val_images": acc_int8["n"], "top1_fp32": acc_fp32["acc1"], "top1_int8": acc_int8["acc1"],
            "top1_loss": acc_fp32["acc1"] - acc_int8["acc1"], "activation_ranges": ranges,
            f"latency_{runtime}": latency, "seconds": time.perf_counter() - t0}
