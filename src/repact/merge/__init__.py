"""Merging the layers that linear activations leave apart (VanillaNet, LayerMerge, RePaViT).

``repact.merge_linear(model, example_input)`` re-parameterizes a model and merges, where exact,
the convolution and Linear layers that an identity (an activation annealed to ``lam == 1``) or
another linear module separates; see :mod:`repact.merge.linear`. The pure parameter transforms
are in :mod:`repact.merge.transforms`, the chain search in :mod:`repact.merge.chains`, the
calibration report of RepActs that are linear on their input range in :mod:`repact.merge.candidates`.
"""

from __future__ import annotations

from .candidates import LinearCandidate, linear_candidates
from .chains import WHEN, Fold, MergeStep, Refusal
from .layers import PaddedConv2d, apply_structure, module_from_spec, module_spec, structure_changes
from .linear import MergeError, MergeReport, merge_linear, model_cost, verify_merge

__all__ = ["WHEN", "Fold", "LinearCandidate", "MergeError", "MergeReport", "MergeStep", "PaddedConv2d", "Refusal",
           "apply_structure", "linear_candidates", "merge_linear", "model_cost", "module_from_spec", "module_spec",
           "structure_changes", "verify_merge"]
