"""``repact deploy --quantize int8``: quantize a deployed model and report what it costs.

The INT8 file is quantized from the plain basis form (:data:`INT8_SOURCE_FORM`), whatever form the
FP32 file was written in: onnxruntime's QDQ quantization turns every node of the exported form into
an int8 op of its own, and of the exact forms the plain formula gave the fewest and fastest
(MobileNetV3-Small at 32 px, 2 threads, ratio to the INT8 HardSwish model at batch 1 / 32: basis
1.40 / 1.59, the onnxruntime ``conv`` form 1.80 / 1.80, ``auto`` 2.26 / 2.72, ``where`` 3.7 / 10.3).
Calibration takes N class-balanced images of the data folder's ``train/`` split (evaluation
transforms, no augmentation); accuracy is measured with onnxruntime on its ``val/`` split for the
FP32 and the INT8 file alike; latency of the two files is timed in interleaved rounds.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from .latency import time_interleaved
from .onnx_export import export_onnx
from .quantize import activation_ranges, image_batches, onnx_top1, quantize_int8, summarize_ranges

__all__ = ["INT8_SOURCE_FORM", "calibration_data", "int8_report", "int8_latency"]

#: the export form the INT8 file is quantized from
INT8_SOURCE_FORM = "basis"


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


def int8_latency(files: dict[str, Path], shape: Sequence[int], batch_sizes: Sequence[int] = (1, 32), *,
                 threads: int | None = None, rounds: int = 20, warmup: int = 3, baseline: str | None = None,
                 spinning: bool = True) -> list[dict[str, Any]]:
    """Interleaved onnxruntime timings of ``files`` (name -> ONNX path) at each batch size; one row per file.
    ``spinning=False``: idle onnxruntime threads do not busy-wait (steadier on a shared machine)."""
    from .onnx_export import ort_session

    sessions = {k: ort_session(p, threads=threads, spinning=spinning) for k, p in files.items()}
    rows = []
    gen = torch.Generator().manual_seed(0)
    for b in batch_sizes:
        x = torch.randn(int(b), *shape, generator=gen).numpy()
        runners = {k: (lambda s=s: s.run(None, {s.get_inputs()[0].name: x})) for k, s in sessions.items()}
        for k, t in time_interleaved(runners, baseline=baseline, warmup=warmup, rounds=rounds).items():
            rows.append({"batch": int(b), "variant": k, **t.as_dict()})
    return rows


def int8_report(deployed: nn.Module, fp32_onnx: Path, int8_onnx: Path, data_dir: str | Path, shape: Sequence[int],
                *, calibration_images: int = 500, val_images: int | None = None, seed: int = 0,
                threads: int | None = None, latency_rounds: int = 20,
                say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Quantize ``fp32_onnx`` into ``int8_onnx`` and measure both: the report's ``int8`` entry."""
    t0 = time.perf_counter()
    calib, val, info = calibration_data(data_dir, shape, calibration_images, seed=seed)
    n_cal = sum(int(b.shape[0]) for b in calib)
    say(f"int8: calibrating on {n_cal} images of {Path(data_dir) / 'train'}")
    with tempfile.TemporaryDirectory(prefix=".repact-int8-", dir=Path(int8_onnx).parent) as tmp:
        source = export_onnx(deployed, calib[0][:1], Path(tmp) / "source.onnx", form=INT8_SOURCE_FORM)
        quantize_int8(source, int8_onnx, calib)
    ranges = summarize_ranges(activation_ranges(deployed, calib))
    if val_images is not None:
        val = torch.utils.data.Subset(val, range(min(int(val_images), len(val))))
    loader = DataLoader(val, batch_size=256, shuffle=False)
    acc_fp32 = onnx_top1(fp32_onnx, loader, threads=threads)
    acc_int8 = onnx_top1(int8_onnx, loader, threads=threads)
    say(f"int8: top-1 FP32 {acc_fp32['acc1']:.2f}%, INT8 {acc_int8['acc1']:.2f}% on {acc_int8['n']} val images")
    latency = int8_latency({"fp32": fp32_onnx, "int8": int8_onnx}, shape, threads=threads, rounds=latency_rounds)
    return {"file": Path(int8_onnx).name, "format": "QDQ, int8 weights per channel, uint8 activations per tensor, "
                                                   "min/max calibration (onnxruntime.quantization)",
            "quantized_form": INT8_SOURCE_FORM,
            "calibration_images": n_cal, "calibration_split": str(Path(data_dir) / "train"),
            "val_images": acc_int8["n"], "top1_fp32": acc_fp32["acc1"], "top1_int8": acc_int8["acc1"],
            "top1_loss": acc_fp32["acc1"] - acc_int8["acc1"], "activation_ranges": ranges,
            "latency_onnxruntime": latency, "seconds": time.perf_counter() - t0}
