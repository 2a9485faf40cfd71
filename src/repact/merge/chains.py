"""Finding and merging the layer chains inside ``nn.Sequential`` containers.

A *run* is the flattened list of the leaf modules of one outermost ``nn.Sequential`` (nested
Sequentials, e.g. torchvision's ``Conv2dNormActivation``, are flattened into it; any other
module is a leaf, searched for Sequentials of its own). Inside a run, modules compose in order,
so two layers separated only by linear modules can merge:

1. **fold**: every run of per-channel affine modules right after a convolution or Linear layer
   (eval BatchNorm, an affine deploy activation, an annealed activation at ``lam == 1``) folds into
   that layer's weight and bias; the folded modules become ``nn.Identity``;
2. **compose**: a layer followed (through ``Identity`` / ``Dropout`` only) by another merges when
   that is exact: a 1x1 convolution after any convolution, a kxk convolution after a 1x1 one (its
   padded border carried exactly by :class:`PaddedConv2d`, or the pair refused), a Linear after a
   Linear. The first layer's slot gets the merged layer, the second's an ``Identity``.

Every merge is checked on its own (random input with borders, the pair against the merged layer).
A module used at several places, or not run by the example input, is not merged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import fuse
from .._hooks import run_hooked
from ..activations.anneal import Annealed
from ..activations.piecewise import PiecewiseQuadratic
from . import transforms as T
from .layers import PaddedConv2d

__all__ = ["Slot", "MergeStep", "Fold", "Refusal", "sequential_runs", "fold_run", "compose_run", "channel_affine",
           "WHEN"]

#: which exact merges are done: every one, or only those that do not add multiply-adds
WHEN = ("cheaper", "always")


@dataclass
class Slot:
    """One leaf module of a run: where it sits (``parent._modules[key]``) and its path."""

    parent: nn.Module
    key: str
    path: str

    @property
    def module(self) -> nn.Module:
        return self.parent._modules[self.key]

    def put(self, m: nn.Module) -> None:
        self.parent._modules[self.key] = m


@dataclass
class Fold:
    """Affine modules folded into the layer before them."""

    into: str
    folded: list[str]


@dataclass
class MergeStep:
    """Two layers merged into one (at ``first``'s path; ``second`` and what stood between became Identity)."""

    first: str
    second: str
    form: str  # e.g. "1x1 after 3x3", "3x3 after 1x1 (padded border)", "linear after linear"
    removed: list[str]
    madds_before: int  # multiply-adds per output position of the pair
    madds_after: int
    max_rel: float  # the merge's own check


@dataclass
class Refusal:
    """A pair of layers left as they are, and why (``kind``: "inexact" or "costlier")."""

    first: str
    second: str
    kind: str
    reason: str


def _is_sequential(m: nn.Module) -> bool:
    return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward


def sequential_runs(model: nn.Module) -> list[list[Slot]]:
    """The runs of ``model``: for each outermost Sequential, its flattened leaves (root included)."""
    runs: list[list[Slot]] = []

    def flatten(seq: nn.Module, path: str, out: list[Slot]) -> None:
        for key, child in seq._modules.items():
            if child is None:
                continue
            p = f"{path}.{key}" if path else key
            if _is_sequential(child):
                flatten(child, p, out)
            else:
                out.append(Slot(seq, key, p))

    def visit(m: nn.Module, path: str) -> None:
        if _is_sequential(m):
            run: list[Slot] = []
            flatten(m, path, run)
            runs.append(run)
            for s in run:
                visit_children(s.module, s.path)
        else:
            visit_children(m, path)

    def visit_children(m: nn.Module, path: str) -> None:
        for key, child in m._modules.items():
            if child is not None:
                visit(child, f"{path}.{key}" if path else key)

    visit(model, "")
    return runs


# --------------------------------------------------------------------------------------------------
# layers and affine modules
# --------------------------------------------------------------------------------------------------


def layer_kind(m: nn.Module) -> str | None:
    """"conv" (a Conv2d with zero padding, or a PaddedConv2d), "linear", or None."""
    if isinstance(m, PaddedConv2d):
        return "conv"
    if type(m) is nn.Conv2d and m.padding_mode == "zeros" and not isinstance(m.padding, str):
        return "conv"
    if type(m) is nn.Linear:
        return "linear"
    return None


def _transparent(m: nn.Module) -> bool:
    return isinstance(m, (nn.Identity, nn.modules.dropout._DropoutNd))


def channel_affine(m: nn.Module, layer: nn.Module, rank: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(scale, shift) of a module that is ``scale * y + shift`` per output channel of ``layer`` (a
    convolution: channels on dim 1; a Linear layer: on the last dim) whose output has ``rank`` dims,
    or None when it is not such a map."""
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    conv = isinstance(layer, nn.Conv2d)
    channels = _out_channels(layer)
    if isinstance(m, Annealed):
        return (one, zero) if m.lam_value == 1.0 else None
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        # a BatchNorm normalizes dim 1: a convolution's channels, a Linear layer's features only in 2-D
        fits = isinstance(m, nn.BatchNorm2d) if conv else (rank == 2 and isinstance(m, nn.BatchNorm1d))
        if not fits or m.running_mean is None or m.num_features != channels:
            return None
        return fuse.batchnorm_affine(m.running_mean.double(), m.running_var.double(),
                                     None if m.weight is None else m.weight.double(),
                                     None if m.bias is None else m.bias.double(), m.eps)
    if isinstance(m, PiecewiseQuadratic):
        c = m.coeffs.detach().double()
        if bool(c[..., 2].any()) or not bool((c[:, :, :2] == c[:, :1, :2]).all()):
            return None
        on_channels = rank == 2 or (m.channels_last != conv)  # the table's channel dim is the layer's
        if c.shape[0] > 1 and (c.shape[0] != channels or not on_channels):
            return None
        return c[:, 0, 1], c[:, 0, 0]
    return None


# --------------------------------------------------------------------------------------------------
# fold
# --------------------------------------------------------------------------------------------------


def _out_channels(m: nn.Module) -> int:
    return m.out_channels if isinstance(m, nn.Conv2d) else m.out_features


def _rebuilt(m: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> nn.Module:
    """A copy of layer ``m`` (same geometry, with a bias) holding ``weight`` and ``bias``."""
    dtype, device = m.weight.dtype, m.weight.device
    if isinstance(m, nn.Conv2d):
        new = _conv_like(m, m.in_channels, m.out_channels, m.groups)
    else:
        new = nn.Linear(m.in_features, m.out_features, bias=True)
    new = new.to(device=device, dtype=dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        new.bias.copy_(bias)
    return new


def _conv_like(m: nn.Conv2d, in_ch: int, out_ch: int, groups: int, **geometry: Any) -> nn.Conv2d:
    """A convolution with ``m``'s kernel, stride, dilation, padding and pad value, except what
    ``geometry`` overrides (``pad_value=None``: zeros); a :class:`PaddedConv2d` for a nonzero pad value."""
    g = dict(kernel_size=m.kernel_size, stride=m.stride, dilation=m.dilation, padding=m.padding,
             pad_value=m.pad_value if isinstance(m, PaddedConv2d) else None)
    g.update(geometry)
    pad_value = g.pop("pad_value")
    if pad_value is not None and bool(pad_value.any()) and any(_size(g["padding"])):
        new = PaddedConv2d(in_ch, out_ch, groups=groups, bias=True, **g)
        with torch.no_grad():
            new.pad_value.copy_(pad_value)
        return new
    return nn.Conv2d(in_ch, out_ch, groups=groups, bias=True, **g)


def fold_run(run: list[Slot], usable: set[int], ranks: dict[int, int]) -> list[Fold]:
    """Fold affine modules into the layer before them, in place; returns what was folded."""
    folds = []
    for i, slot in enumerate(run):
        layer = slot.module
        if layer_kind(layer) is None or id(layer) not in usable:
            continue
        scale = torch.ones(1, dtype=torch.float64)
        shift = torch.zeros(1, dtype=torch.float64)
        taken: list[Slot] = []
        for nxt in run[i + 1:]:
            m = nxt.module
            if _transparent(m):
                continue
            aff = channel_affine(m, layer, ranks[id(layer)]) if id(m) in usable else None
            if aff is None:
                break
            s, t = (v.detach().double().cpu() for v in aff)
            scale, shift = scale * s, shift * s + t
            taken.append(nxt)
        if not taken:
            continue
        w, b = T.fold_affine(layer.weight, layer.bias, scale, shift)
        slot.put(_rebuilt(layer, w, b))
        usable.add(id(slot.module))
        ranks[id(slot.module)] = ranks[id(layer)]
        for t_slot in taken:
            t_slot.put(nn.Identity())
        folds.append(Fold(slot.path, [t.path for t in taken]))
    return folds


# --------------------------------------------------------------------------------------------------
# compose
# --------------------------------------------------------------------------------------------------


def _size(v) -> tuple[int, int]:
    return tuple(int(t) for t in v)  # type: ignore[return-value]


def _pads(m: nn.Conv2d) -> tuple[tuple[int, int], torch.Tensor | None]:
    """(padding, pad value or None for zeros)."""
    return _size(m.padding), (m.pad_value if isinstance(m, PaddedConv2d) else None)


def _pointwise(m: nn.Conv2d) -> bool:
    return _size(m.kernel_size) == (1, 1) and _pads(m)[0] == (0, 0)


def _madds(m: nn.Module) -> int:
    if isinstance(m, nn.Conv2d):
        return T.weight_count(m.out_channels, m.in_channels, m.groups, _size(m.kernel_size))
    return T.weight_count(m.out_features, m.in_features, 1)


def _kname(m: nn.Module) -> str:
    if isinstance(m, nn.Conv2d):
        kh, kw = _size(m.kernel_size)
        return f"{kh}x{kw}" + (" depthwise" if m.groups == m.in_channels == m.out_channels and m.groups > 1 else "")
    return "linear"


def compose_pair(a: nn.Module, b: nn.Module) -> tuple[nn.Module, str] | str:
    """The merged layer of ``b(a(x))`` and its form, or why there is no exact one."""
    if layer_kind(a) == "linear" and layer_kind(b) == "linear":
        w, bias = T.compose_after_pointwise(a.weight, a.bias, b.weight, b.bias)
        new = nn.Linear(a.in_features, b.out_features, bias=True)
        return _filled(new, a, w, bias), "linear after linear"
    if not (layer_kind(a) == "conv" and layer_kind(b) == "conv"):
        return f"a {_kname(a)} layer then a {_kname(b)} layer do not merge"
    da, db = T.dense_weight(a.weight, a.groups), T.dense_weight(b.weight, b.groups)
    if _pointwise(b):  # 1x1 after anything: pointwise, exact at every position
        w, bias = T.compose_after_pointwise(da, a.bias, db.reshape(db.shape[0], -1), b.bias)
        wg, groups = T.group_weight(w)
        stride = tuple(sa * sb for sa, sb in zip(_size(a.stride), _size(b.stride)))
        new = _conv_like(a, a.in_channels, b.out_channels, groups, stride=stride)
        return _filled(new, a, wg, bias), f"{_kname(b)} after {_kname(a)}"
    if not _pointwise(a) or _size(a.stride) != (1, 1):
        why = "a strided 1x1 convolution" if _pointwise(a) else f"two spatial kernels ({_kname(a)}, {_kname(b)})"
        return f"{why} before a {_kname(b)} convolution: no exact merge at the padded borders"
    w, bias = T.compose_pointwise_first(da.reshape(da.shape[0], -1), a.bias, db, b.bias)
    wg, groups = T.group_weight(w)
    border, target = _pads(b)
    form = f"{_kname(b)} after {_kname(a)}"
    if border == (0, 0):
        return _filled(_conv_like(b, a.in_channels, b.out_channels, groups, pad_value=None), a, wg, bias), form
    u = T.border_value(da.reshape(da.shape[0], -1), a.bias, target)
    if u is None:
        return (f"the first convolution's bias does not pass through the second's zero padding exactly "
                f"(the 1x1's bias is not in the span of its weights, {a.in_channels} -> {a.out_channels} channels)")
    new = _conv_like(b, a.in_channels, b.out_channels, groups, pad_value=u.to(a.weight.dtype))
    return _filled(new, a, wg, bias), form + (" (padded border)" if isinstance(new, PaddedConv2d) else "")


def _filled(new: nn.Module, like: nn.Module, w: torch.Tensor, b: torch.Tensor) -> nn.Module:
    new = new.to(device=like.weight.device, dtype=like.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        new.bias.copy_(b)
    return new


def _probe_input(first: nn.Module, second: nn.Module, gen: torch.Generator) -> torch.Tensor:
    """A random input reaching every border case of the pair."""
    dtype = first.weight.dtype
    if isinstance(first, nn.Linear):
        return torch.randn(4, first.in_features, generator=gen).to(dtype)
    side = []
    for d in range(2):
        ext = [(m.kernel_size[d] - 1) * m.dilation[d] + 1 + 2 * _pads(m)[0][d] for m in (first, second)]
        side.append(2 * sum(ext) * first.stride[d] * second.stride[d] + 3)
    return torch.randn(2, first.in_channels, *side, generator=gen).to(dtype)


@torch.no_grad()
def _pair_error(first: nn.Module, second: nn.Module, merged: nn.Module) -> float:
    gen = torch.Generator().manual_seed(0)
    x = _probe_input(first, second, gen).to(first.weight.device)
    ref = second(first(x)).double()
    got = merged(x).double()
    if ref.shape != got.shape:
        return math.inf
    scale = float(ref.abs().max())
    err = float((ref - got).abs().max())
    return err / scale if scale > 0 else (0.0 if err == 0 else math.inf)


def compose_run(run: list[Slot], usable: set[int], when: str, rtol: float) -> tuple[list[MergeStep], list[Refusal]]:
    """Merge consecutive layers of ``run`` in place (chains of three or more step by step)."""
    steps: list[MergeStep] = []
    refused: list[Refusal] = []
    i = 0
    while i < len(run):
        a_slot = run[i]
        a = a_slot.module
        if layer_kind(a) is None:
            i += 1
            continue
        j = i + 1
        between: list[Slot] = []
        while j < len(run) and _transparent(run[j].module):
            between.append(run[j])
            j += 1
        if j >= len(run) or layer_kind(run[j].module) is None:
            i = j
            continue
        b_slot = run[j]
        b = b_slot.module
        if id(a) not in usable or id(b) not in usable:
            refused.append(Refusal(a_slot.path, b_slot.path, "inexact", "used at several places or not run by the "
                                   "example input"))
            i = j
            continue
        got = compose_pair(a, b)
        if isinstance(got, str):
            refused.append(Refusal(a_slot.path, b_slot.path, "inexact", got))
            i = j
            continue
        merged, form = got
        area = math.prod(_size(b.stride)) if isinstance(b, nn.Conv2d) else 1
        before, after = _madds(a) * area + _madds(b), _madds(merged)
        if when == "cheaper" and after > before:
            refused.append(Refusal(a_slot.path, b_slot.path, "costlier",
                                   f"{form}: the merged layer needs {after:,} multiply-adds per output position, "
                                   f"the pair {before:,}"))
            i = j
            continue
        err = _pair_error(a, b, merged)
        if not err <= rtol:
            refused.append(Refusal(a_slot.path, b_slot.path, "inexact",
                                   f"{form}: the merged layer differs from the pair by {err:.2e} (relative), above "
                                   f"{rtol:g}"))
            i = j
            continue
        a_slot.put(merged)
        usable.add(id(merged))
        b_slot.put(nn.Identity())
        steps.append(MergeStep(a_slot.path, b_slot.path, form, [s.path for s in between] + [b_slot.path], before,
                               after, err))
        # stay at i: the merged layer may merge with the next one too
    return steps, refused


def usable_layers(model: nn.Module, example_input: Any) -> tuple[set[int], dict[int, int]]:
    """(ids of the modules used at one place and run by ``example_input``, output rank of each layer)."""
    uses: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        uses[id(m)] = uses.get(id(m), 0) + 1
    ran: set[int] = set()
    ranks: dict[int, int] = {}

    def hook(m, inputs, output):
        ran.add(id(m))
        if torch.is_tensor(output):
            ranks[id(m)] = output.dim()

    handles = [m.register_forward_hook(hook) for m in {id(m): m for m in model.modules()}.values()]
    run_hooked(model, example_input, handles, torch.no_grad())
    usable = {i for i in ran if uses.get(i, 0) == 1}
    return usable, ranks

