"""Deploy tools: ONNX export and parity, cost reports (params, FLOPs, latency), the deploy pipeline."""

from __future__ import annotations

from .bench import ENGINES, CostReport, build_variants, compile_cache_room, cost_report
from .cost import FlopsReport, activation_modules, count_flops, count_params
from .latency import Timing, steady_malloc, time_interleaved
from .onnx_export import EXPORTERS, MIN_OPSET, check_onnx, export_onnx, last_export_forms, onnx_parity, ort_session
from .onnx_forms import ONNX_FORMS, HardSwishBasis, PlainBasis, basis_coefficients, prepare_for_export
from .pipeline import DeployError, DeployResult, deploy_model

__all__ = [
    "ENGINES",
    "EXPORTERS",
    "MIN_OPSET",
    "ONNX_FORMS",
    "CostReport",
    "DeployError",
    "DeployResult",
    "FlopsReport",
    "HardSwishBasis",
    "PlainBasis",
    "Timing",
    "activation_modules",
    "basis_coefficients",
    "build_variants",
    "check_onnx",
    "compile_cache_room",
    "steady_malloc",
    "cost_report",
    "count_flops",
    "count_params",
    "deploy_model",
    "export_onnx",
    "last_export_forms",
    "onnx_parity",
    "ort_session",
    "prepare_for_export",
    "time_interleaved",
]
