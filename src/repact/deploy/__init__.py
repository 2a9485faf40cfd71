"""Deploy tools: ONNX export and parity, cost reports (params, FLOPs, latency), the deploy pipeline."""

from __future__ import annotations

from .onnx_export import EXPORTERS, MIN_OPSET, check_onnx, export_onnx, last_export_forms, onnx_parity, ort_session
from .onnx_forms import ONNX_FORMS, HardSwishBasis, PlainBasis, basis_coefficients, prepare_for_export

__all__ = [
    "EXPORTERS",
    "MIN_OPSET",
    "ONNX_FORMS",
    "HardSwishBasis",
    "PlainBasis",
    "basis_coefficients",
    "check_onnx",
    "export_onnx",
    "last_export_forms",
    "onnx_parity",
    "ort_session",
    "prepare_for_export",
]
