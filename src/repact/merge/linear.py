"""``merge_linear(model, example_input)``: merge the layers that linear activations leave apart.

The model is re-parameterized first (an annealed activation at ``lam == 1`` becomes nothing, a
RepAct its deploy form), then in every ``nn.Sequential`` the BatchNorms and other per-channel
affine modules fold into the layer before them and consecutive layers merge where that is exact
(:mod:`repact.merge.chains`). The merged model is checked against the model on the example input
(``rtol``, relative to the output's scale), and the report gives layers, parameters, FLOPs and
optionally latency before and after. "Before" is the model's deploy form without merging (what
``repact deploy`` exports without ``--merge``), so the numbers show what merging adds.

``verify_merge`` is the RepVGG-style check: random BatchNorm statistics first, then merge and compare.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from .._modes import eval_mode, kept_modes
from ..reparam import VerifyResult, _flatten_outputs, compare_outputs, randomize_batchnorm_, reparameterize, verify
from .candidates import LinearCandidate, linear_candidates
from .chains import WHEN, Fold, MergeStep, Refusal, compose_run, fold_run, sequential_runs, usable_layers
from .layers import structure_changes

__all__ = ["MergeError", "MergeReport", "merge_linear", "verify_merge", "model_cost"]


class MergeError(ValueError):
    """The merged model differs from the model (above the tolerance), or a bad argument."""


@dataclass
class MergeReport:
    """What ``merge_linear`` did, and the cost of the model before and after."""

    merged: list[MergeStep] = field(default_factory=list)
    folded: list[Fold] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    verify: dict[str, Any] = field(default_factory=dict)
    candidates: list[LinearCandidate] = field(default_factory=list)
    #: ``path -> module spec`` turning a rebuilt model into the merged one (``repact.merge.apply_structure``)
    structure: dict[str, dict[str, Any]] = field(default_factory=dict)

    def ratios(self) -> dict[str, float]:
        """after / before of every measured quantity."""
        out = {}
        for k, v in self.before.items():
            w = self.after.get(k)
            if isinstance(v, (int, float)) and isinstance(w, (int, float)) and v:
                out[k] = w / v
        return out

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratios"] = self.ratios()
        return d

    def table(self) -> str:
        """A small before / after / ratio table."""
        rows = [("quantity", "before", "after", "after/before")]
        ratios = self.ratios()
        for k, v in self.before.items():
            w = self.after.get(k)
            fmt = (lambda t: f"{t:.3f}") if isinstance(v, float) else (lambda t: f"{t:,}")
            rows.append((k, fmt(v), fmt(w) if w is not None else "-", f"{ratios[k]:.3f}" if k in ratios else "-"))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        return "\n".join("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))
                         for r in rows)

    def lines(self) -> list[str]:
        out = [f"merged {len(self.merged)} layer pair(s), folded {sum(len(f.folded) for f in self.folded)} "
               f"affine module(s) (BatchNorm ...) into {len(self.folded)} layer(s)"]
        out += [f"  merged {m.first} + {m.second}: {m.form}" for m in self.merged]
        out += [f"  kept {r.first} + {r.second} ({r.kind}): {r.reason}" for r in self.refused]
        for c in self.candidates:
            if c.linear:
                out.append(f"  merge candidate: {c.path} ({c.type}) is linear on its measured input range "
                           f"[{c.low:.3g}, {c.high:.3g}]")
        return out


def model_cost(model: nn.Module, example_input: torch.Tensor) -> dict[str, Any]:
    """Layers (convolution and Linear), convolutions, BatchNorms, parameters and FLOPs (one sample)."""
    from ..deploy.cost import count_flops, count_params

    mods = list({id(m): m for m in model.modules()}.values())
    convs = sum(isinstance(m, nn.modules.conv._ConvNd) for m in mods)
    return {"layers": convs + sum(isinstance(m, nn.Linear) for m in mods), "conv_layers": convs,
            "batchnorms": sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in mods),
            "params": count_params(model), "flops": count_flops(model, example_input[:1]).total}


def _latency(before: nn.Module, after: nn.Module, x: torch.Tensor, rounds: int) -> tuple[float, float]:
    """Median eager latency (ms) of the two, timed in the same interleaved rounds."""
    from ..deploy.latency import time_interleaved

    with torch.inference_mode(), eval_mode(before, after):
        t = time_interleaved({"before": lambda: before(x), "after": lambda: after(x)}, rounds=rounds, warmup=3)
    return t["before"].median_ms, t["after"].median_ms


def merge_linear(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    when: str = "cheaper",
    rtol: float = 1e-5,
    inplace: bool = False,
    latency_rounds: int = 0,
    calibration: Iterable[Any] | None = None,
) -> tuple[nn.Module, MergeReport]:
    """Re-parameterize ``model`` and merge the layers around its linear parts; returns (merged, report).

    Args:
        example_input: a batch the model runs on (for the checks, the output ranks, FLOPs, latency).
        when: ``"cheaper"`` merges a pair only when the merged layer needs no more multiply-adds than
            the two (a 1x1 after a depthwise 3x3 would not); ``"always"`` merges every exact pair.
        rtol: largest accepted relative difference of the outputs (and of each merged pair).
        inplace: convert ``model`` itself (default: a copy; ``model`` is left as it was).
        latency_rounds: time the deploy form before and after merging this many rounds (0: not timed).
        calibration: batches on which to measure the input ranges of the remaining activations and
            report those that are linear there (:func:`repact.merge.linear_candidates`).

    Raises :class:`MergeError` when the merged model differs from the model by more than ``rtol``.
    """
    if when not in WHEN:
        raise MergeError(f"when must be one of {', '.join(WHEN)}, got {when!r}")
    if not torch.is_tensor(example_input):
        raise MergeError(f"example_input must be a tensor batch, got {type(example_input).__name__}")
    with kept_modes(model):
        model.eval()
        with torch.no_grad():
            reference = [t.detach().clone() for t in _flatten_outputs(model(example_input))]
        before = reparameterize(model, inplace=False).eval()
        work = reparameterize(model, inplace=True) if inplace else copy.deepcopy(before)
        work.eval()
        report = MergeReport()
        usable, ranks = usable_layers(work, example_input)
        for run in sequential_runs(work):
            report.folded += fold_run(run, usable, ranks)
        for run in sequential_runs(work):
            steps, refused = compose_run(run, usable, when, rtol)
            report.merged += steps
            report.refused += refused
        with torch.no_grad():
            got = _flatten_outputs(work(example_input))
        res = compare_outputs(reference, got)
        report.verify = res.as_dict()
        if not res.ok(rtol):
            raise MergeError(f"the merged model differs from the model: {res}, above rtol={rtol:g}")
        report.before = model_cost(before, example_input)
        report.after = model_cost(work, example_input)
        if latency_rounds:
            b, a = _latency(before, work, example_input, latency_rounds)
            report.before["latency_ms"], report.after["latency_ms"] = b, a
        if calibration is not None:
            report.candidates = linear_candidates(work, calibration)
        report.structure = structure_changes(model, work)
    return work, report


def verify_merge(model: nn.Module, example_input: torch.Tensor, *, randomize_bn: bool = True, seed: int = 0,
                 when: str = "always", rtol: float = 1e-5) -> tuple[VerifyResult, nn.Module, MergeReport]:
    """Randomize BatchNorm statistics (optional; in place, as ``verify_reparameterization`` does), merge a
    copy and compare it with the model; returns (result, merged, report). ``when`` defaults to
    ``"always"`` so that every exact merge is checked. The result is not checked against ``rtol``
    here (``rtol`` only guards each pair's own check); call ``result.ok()``."""
    if randomize_bn:
        randomize_batchnorm_(model, seed)
    merged, report = merge_linear(model, example_input, when=when, rtol=float("inf"))
    res = verify(model, merged, example_input)
    report.verify = res.as_dict()
    return res, merged, report
