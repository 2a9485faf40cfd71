"""The merged layers, and a JSON record of each layer's architecture so a merged model can be rebuilt.

:class:`PaddedConv2d` is a ``Conv2d`` whose border is padded with a per-channel value instead of
zeros: a pointwise convolution merged into the kxk convolution after it computes what the two did
at the borders too (see :func:`repact.merge.transforms.border_value`).

``module_spec(m)`` records the architecture of the modules a merge or a re-parameterization
produces (``Identity``, ``Conv2d``, ``PaddedConv2d``, ``Linear``, ``PiecewiseQuadratic``) and
``module_from_spec`` builds one with placeholder weights that a state dict then fills;
``apply_structure(model, record)`` puts them at their paths.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..activations.anneal import Annealed
from ..activations.piecewise import PiecewiseQuadratic

#: the module types a structure record may name
STRUCTURE_MODULES = ("Identity", "Conv2d", "PaddedConv2d", "Linear", "PiecewiseQuadratic")

__all__ = ["PaddedConv2d", "check_structure", "spec_values", "module_spec", "module_from_spec", "apply_structure", "structure_changes",
           "deploy_model_config", "STRUCTURE_MODULES"]


class PaddedConv2d(nn.Conv2d):
    """A ``Conv2d`` whose ``padding`` pads each input channel with ``pad_value`` instead of zeros.

    Padding ``x`` with ``u`` is padding ``x - u`` with zeros and adding ``u`` everywhere, so the
    forward is the zero-padded convolution of ``x - u`` with the bias ``bias + sum_k W u``: one
    subtraction on the input (ONNX: Sub, then Conv). The pad value is a buffer (in the state dict).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                         groups=groups, bias=bias)
        self.register_buffer("pad_value", torch.zeros(in_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.pad_value.to(x.dtype)
        w = self.weight
        g, out_ch = self.groups, w.shape[0]
        through = (w.sum(dim=(2, 3)).reshape(g, out_ch // g, -1) @ u.reshape(g, -1, 1)).reshape(out_ch)
        bias = through if self.bias is None else self.bias + through
        return self._conv_forward(x - u.reshape(1, -1, 1, 1), w, bias)


def _pair(v) -> list[int]:
    return [int(t) for t in v] if isinstance(v, (tuple, list)) else [int(v), int(v)]


def module_spec(m: nn.Module) -> dict[str, Any] | None:
    """A JSON record of ``m``'s architecture, or None for a module type it does not cover."""
    if isinstance(m, nn.Identity):
        return {"module": "Identity"}
    if isinstance(m, PaddedConv2d) or type(m) is nn.Conv2d:
        spec = {"module": type(m).__name__, "in_channels": m.in_channels, "out_channels": m.out_channels,
                "kernel_size": _pair(m.kernel_size), "stride": _pair(m.stride), "dilation": _pair(m.dilation),
                "groups": m.groups, "bias": m.bias is not None}
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            return None
        spec["padding"] = _pair(m.padding)
        return spec
    if type(m) is nn.Linear:
        return {"module": "Linear", "in_features": m.in_features, "out_features": m.out_features,
                "bias": m.bias is not None}
    if isinstance(m, PiecewiseQuadratic):
        return {"module": "PiecewiseQuadratic", "knots": int(m.knots.numel()), "tables": int(m.coeffs.shape[0]),
                "channels_last": bool(m.channels_last)}
    return None


#: the largest channel count and kernel side a structure record may ask for
_MOST_CHANNELS, _MOST_SIDE = 1 << 20, 4096


def _ints(spec: dict[str, Any], key: str, n: int | None, least: int, most: int) -> list[int]:
    v = spec.get(key)
    vals = v if isinstance(v, list) and n is not None else [v]
    if (n is not None and len(vals) != n) or not all(isinstance(t, int) and not isinstance(t, bool) and
                                                      least <= t <= most for t in vals):
        what = f"a list of {n} integers" if n is not None else "an integer"
        raise ValueError(f"its {key!r} is {v!r}, not {what} from {least} to {most}")
    return vals


def spec_values(spec: Any) -> int:
    """How many values the tensors of the module built from ``spec`` hold; ``ValueError`` (naming the
    entry) for a record that is not one :func:`module_spec` writes. Nothing is allocated."""
    if not isinstance(spec, dict) or spec.get("module") not in STRUCTURE_MODULES:
        kind = spec.get("module") if isinstance(spec, dict) else spec
        raise ValueError(f"it names module {kind!r}; known: {', '.join(STRUCTURE_MODULES)}")
    kind = spec["module"]
    if kind == "Identity":
        return 0
    flags = ["bias"] if kind != "PiecewiseQuadratic" else ["channels_last"]
    for key in flags:
        if not isinstance(spec.get(key), bool):
            raise ValueError(f"its {key!r} is {spec.get(key)!r}, not true or false")
    if kind == "Linear":
        i, o = (_ints(spec, k, None, 1, _MOST_CHANNELS)[0] for k in ("in_features", "out_features"))
        return i * o + o * spec["bias"]
    if kind == "PiecewiseQuadratic":
        k = _ints(spec, "knots", None, 0, 1024)[0]
        return _ints(spec, "tables", None, 1, _MOST_CHANNELS)[0] * (k + 1) * 3 + k
    i, o, g = (_ints(spec, k, None, 1, _MOST_CHANNELS)[0] for k in ("in_channels", "out_channels", "groups"))
    if i % g or o % g:
        raise ValueError(f"its groups ({g}) do not divide its channels ({i} in, {o} out)")
    kh, kw = _ints(spec, "kernel_size", 2, 1, _MOST_SIDE)
    _ints(spec, "stride", 2, 1, _MOST_SIDE)
    _ints(spec, "dilation", 2, 1, _MOST_SIDE)
    _ints(spec, "padding", 2, 0, _MOST_SIDE)
    return o * (i // g) * kh * kw + o * spec["bias"] + (i if kind == "PaddedConv2d" else 0)


def check_structure(record: Any) -> int:
    """The values a structure record's modules hold in all; ``ValueError`` naming its first bad entry."""
    if not isinstance(record, dict):
        raise ValueError(f"the structure record is a {type(record).__name__}, not a mapping of paths to modules")
    total = 0
    for path, spec in record.items():
        if not isinstance(path, str) or not path or any(not part for part in path.split(".")):
            raise ValueError(f"the structure record has the path {path!r}, not a module path such as 'stem.0'")
        try:
            total += spec_values(spec)
        except ValueError as exc:
            raise ValueError(f"the structure record's entry {path!r} cannot be built: {exc}") from None
    return total


def module_from_spec(spec: dict[str, Any]) -> nn.Module:
    """A module built from :func:`module_spec`'s record, with placeholder weights; ``ValueError`` for a bad record."""
    try:
        spec_values(spec)
    except ValueError as exc:
        raise ValueError(f"the structure record {spec!r} cannot be built: {exc}") from None
    kind = spec["module"]
    try:
        if kind == "Identity":
            return nn.Identity()
        if kind in ("Conv2d", "PaddedConv2d"):
            args = dict(in_channels=spec["in_channels"], out_channels=spec["out_channels"],
                        kernel_size=tuple(spec["kernel_size"]), stride=tuple(spec["stride"]),
                        padding=tuple(spec["padding"]), dilation=tuple(spec["dilation"]), groups=spec["groups"],
                        bias=bool(spec["bias"]))
            return PaddedConv2d(**args) if kind == "PaddedConv2d" else nn.Conv2d(**args)
        if kind == "Linear":
            return nn.Linear(spec["in_features"], spec["out_features"], bias=bool(spec["bias"]))
        if kind == "PiecewiseQuadratic":
            k = int(spec["knots"])
            return PiecewiseQuadratic(torch.arange(k, dtype=torch.float32), torch.zeros(int(spec["tables"]), k + 1, 3),
                                      channels_last=bool(spec["channels_last"]))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"the structure record {spec!r} cannot be built ({type(exc).__name__}: {exc})") from None
    return nn.Identity()


def structure_changes(before: nn.Module, after: nn.Module) -> dict[str, dict[str, Any]]:
    """``path -> spec`` of every module of ``after`` that :func:`module_spec` covers and that differs from
    the module at the same path of ``before`` (or is new): what a rebuild of ``before``'s architecture,
    re-parameterized, must replace to get ``after``'s. (A RepAct's deploy form is left out: the
    rebuild's ``reparameterize`` makes it; an annealed activation's is not, since its deploy form
    depends on ``lam``, which a fresh build does not have.)"""
    old = dict(before.named_modules(remove_duplicate=False))
    out: dict[str, dict[str, Any]] = {}
    for path, m in after.named_modules(remove_duplicate=False):
        spec = module_spec(m)
        if not path or spec is None:
            continue
        prev = old.get(path)
        if prev is not None and type(prev) is type(m) and module_spec(prev) == spec:
            continue
        if isinstance(m, PiecewiseQuadratic) and not isinstance(prev, Annealed):
            continue  # a RepAct's deploy form: the rebuild's reparameterize makes it
        if any(path.startswith(p + ".") for p in out):
            continue
        out[path] = spec
    return out


def apply_structure(model: nn.Module, record: dict[str, dict[str, Any]]) -> nn.Module:
    """Put a module built from each spec of ``record`` (``path -> spec``) at its path, in place (outer paths
    first); ``ValueError`` naming a path the model does not have."""
    for path in sorted(record, key=lambda p: p.count(".")):
        parent_path, _, name = path.rpartition(".")
        try:
            parent = model.get_submodule(parent_path) if parent_path else model
        except AttributeError:
            raise ValueError(f"the structure record names {path!r}, which the model does not have") from None
        if name not in parent._modules:
            raise ValueError(f"the structure record names {path!r}, which the model does not have")
        parent._modules[name] = module_from_spec(record[path])
    return model


def deploy_model_config(cfg: dict[str, Any], model: nn.Module, deployed: nn.Module) -> dict[str, Any]:
    """``cfg`` (the model config of ``model``) for ``deployed``, the deploy form of ``model``:
    ``"reparameterized": true`` and the ``"structure"`` that ``repact.checkpoint.build_model`` needs to
    rebuild it (``model``'s own, if it was rebuilt with one, plus what changed since)."""
    out = dict(cfg)
    out["reparameterized"] = True
    changes = {**cfg.get("structure", {}), **structure_changes(model, deployed)}
    if changes:
        out["structure"] = changes
    return out
