"""Deploy tools: ONNX export and parity, cost reports (params, FLOPs, latency), the deploy pipeline."""

from __future__ import annotations

from .bench import (CPU_ENGINES, CUDA_ENGINES, ENGINES, GRAPH_ENGINES, CostReport, build_variants, compile_cache_room,
                    cost_report, pick_engines)
from .cost import FlopsReport, activation_modules, count_flops, count_params
from .latency import Timing, bench_device, cuda_graph_replay, cuda_peak_bytes, steady_malloc, time_interleaved
from .onnx_export import EXPORTERS, MIN_OPSET, check_onnx, export_onnx, last_export_forms, onnx_parity, ort_session
from .onnx_forms import ONNX_FORMS, HardSwishBasis, PlainBasis, basis_coefficients, prepare_for_export
from .pipeline import (DeployError, DeployResult, NothingToFuseError, deploy_model, deploy_outputs, describe_activations,
                       unfused_activations)
from .runtime_forms import TARGETS, ConvFusedBasis, form_for_target
from .tasks import deploy_task_model, verify_task_reparameterization

__all__ = [
    "CPU_ENGINES",
    "CUDA_ENGINES",
    "ENGINES",
    "GRAPH_ENGINES",
    "EXPORTERS",
    "MIN_OPSET",
    "ONNX_FORMS",
    "ConvFusedBasis",
    "CostReport",
    "DeployError",
    "DeployResult",
    "FlopsReport",
    "NothingToFuseError",
    "HardSwishBasis",
    "PlainBasis",
    "TARGETS",
    "Timing",
    "activation_modules",
    "basis_coefficients",
    "bench_device",
    "build_variants",
    "check_onnx",
    "compile_cache_room",
    "steady_malloc",
    "cost_report",
    "cuda_graph_replay",
    "cuda_peak_bytes",
    "count_flops",
    "count_params",
    "deploy_model",
    "deploy_outputs",
    "deploy_task_model",
    "describe_activations",
    "export_onnx",
    "form_for_target",
    "last_export_forms",
    "onnx_parity",
    "ort_session",
    "pick_engines",
    "prepare_for_export",
    "time_interleaved",
    "unfused_activations",
    "verify_task_reparameterization",
]
