"""Pictures of activations and runs. Each is a function returning the matplotlib figure (Agg
backend, CPU only) and the numbers behind it, and a ``repact plot`` / ``repact cam`` command:

=================================  =====================================================================
``plot_acts(names, params)``       f and f' (autograd) of registered activations, knots marked
``plot_layers(model)``             every activation layer in network order; RepAct branch weights
``plot_evolution(run_dir)``        the learned shapes over epochs from ``act_params.jsonl``
``cam_grid(models, images)``       CAMs through grad-cam, images x models, class and score
``plot_features(model, x, layer)`` maps before/after an activation, input histogram with knots
``plot_grads(run_dirs)``           mean |grad| of the first/last conv and BN weights over training
``plot_run_curves(run_dir)``       loss and top-1 per epoch (``curves.png`` of every run)
``plot_compare_curves(records)``   a grid's learning curves, mean and band over seeds
``confusion_data`` / ``plot_confusion``  confusion matrix and top-1/top-5 through torchmetrics
=================================  =====================================================================

Save a figure with :func:`save_figure` (png, svg or pdf, written atomically). Submodules load on
first use, so importing this package does not import matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FORMATS": "figures", "save_figure": "figures", "output_path": "figures", "MissingDependency": "figures",
    "Curve": "curves", "ActsData": "curves", "activation_curve": "curves", "activation_knots": "curves",
    "build_activation": "curves", "plot_acts": "curves",
    "LayersData": "layers", "activation_layers": "layers", "layer_curves": "layers", "plot_layers": "layers",
    "EvolutionData": "evolution", "evolution_data": "evolution", "plot_evolution": "evolution",
    "CAM_METHODS": "cam", "CamData": "cam", "compute_cams": "cam", "default_target_layer": "cam", "cam_grid": "cam",
    "FeaturesData": "features", "feature_data": "features", "plot_features": "features",
    "GradsData": "grads", "grad_series": "grads", "plot_grads": "grads",
    "RunCurves": "runs", "CompareCurves": "runs", "run_curves": "runs", "plot_run_curves": "runs",
    "compare_curves": "runs", "plot_compare_curves": "runs",
    "ConfusionData": "confusion", "confusion_data": "confusion", "plot_confusion": "confusion",
    "write_confusion": "confusion",
    "preprocess_from": "preprocess", "load_image": "preprocess",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
