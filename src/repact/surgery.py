"""Activation surgery: swap a model's activation modules for another activation, one per call site.

``swap_activations(model, act, ...)`` replaces every activation module of the target types (and
whose path passes the ``include``/``exclude`` regex filters) by a fresh ``create_act(act, ...)``
instance, in place, and returns a :class:`SwapReport`.

* **Call sites.** A module registered at several paths gets one new instance per path. A module
  called several times from its parent's ``forward`` (torchvision's ResNet blocks reuse one
  ``self.relu``) is untied: the parent's forward is traced with ``torch.fx`` (its children kept as
  leaves) and every call gets its own module (``relu``, ``relu_1``, ``relu_2``), so learnable
  activations never share parameters by accident. The parent becomes a ``GraphModule`` with the
  same children and state-dict keys (plus the new ones).
* **Channels** come from one example forward (``example_input``: forward hooks record each call's
  input shape and the layer that ran just before it) or, without it, from the layer just before
  the activation in a ``Sequential``. The layer the activation follows says which dim holds the
  channels: a convolution's ``out_channels`` or a BatchNorm's features on dim 1, a Linear's
  ``out_features`` or a LayerNorm's shape on the last dim. Token tensors (N, L, C) or (N, H, W, C)
  (ViT and Swin MLPs) so get the hidden width and ``channels_last=True``, not the token count.
  Unknown counts stay ``None``: repact activations then build their parameters lazily on the
  first forward.
* **Functional calls** (``F.relu(x)``, ``torch.relu``, ``x.relu()``, ``F.hardswish`` ... inside a
  ``forward``) cannot be swapped; they are found during the example forward by a
  ``TorchFunctionMode`` (``__torch_function__``) scan that knows which module's forward is
  running, and listed in the report. This works on any model that runs, unlike ``torch.fx``
  tracing, which fails on data-dependent control flow.
* ``init="approximate"`` fits the new activation's parameters to the function it replaces on a grid
  (least squares): exactly for RepAct-I/III (their output is linear in the branch weights, so
  RepAct starting as HardSwish gets weights (0, 0, 0, 1)), by L-BFGS for any other activation.
"""

from __future__ import annotations

import copy
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ._hooks import run_hooked
from ._modes import eval_mode
from .activations.base import Activation
from .fit import fit_activation, model_device_dtype
from .registry import create_act

__all__ = [
    "DEFAULT_TARGETS",
    "SwapRecord",
    "FunctionalCall",
    "SwapReport",
    "swap_activations",
    "fit_activation",
    "untie_calls",
]

#: activation types replaced by default
DEFAULT_TARGETS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.GELU, nn.LeakyReLU, nn.PReLU,
)

#: functional names that compute each target type's function (for the functional-call scan)
_FUNCTIONAL_NAMES: dict[type[nn.Module], tuple[str, ...]] = {
    nn.ReLU: ("relu", "relu_"),
    nn.ReLU6: ("relu6",),
    nn.Hardswish: ("hardswish", "hardswish_"),
    nn.SiLU: ("silu", "silu_"),
    nn.GELU: ("gelu",),
    nn.LeakyReLU: ("leaky_relu", "leaky_relu_"),
    nn.PReLU: ("prelu",),
    nn.Sigmoid: ("sigmoid", "sigmoid_"),
    nn.Tanh: ("tanh", "tanh_"),
    nn.Mish: ("mish",),
    nn.ELU: ("elu", "elu_"),
    nn.Hardsigmoid: ("hardsigmoid",),
    nn.Softplus: ("softplus",),
}

_INITS = ("default", "approximate")


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------


@dataclass
class SwapRecord:
    """One replaced call site."""

    path: str
    old_type: str
    new_type: str
    channels: int | None
    channels_from: str  # "example forward", "neighbouring layer" or "unknown (lazy)"
    untied_from: str | None = None  # the shared module's path when this site was untied
    fit_error: float | None = None  # max abs error on the fit grid (init="approximate")
    channels_last: bool = False  # the new module was built with channels on the last dim


@dataclass
class FunctionalCall:
    """An activation computed by a functional call that surgery cannot replace."""

    op: str
    module: str  # path of the module whose forward made the call ("" = the root)
    module_type: str
    count: int


@dataclass
class SwapReport:
    """What ``swap_activations`` changed, and what it could not."""

    act: str
    init: str
    swapped: list[SwapRecord] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    functional: list[FunctionalCall] = field(default_factory=list)
    functional_scan: str = ""
    dry_run: bool = False

    def __len__(self) -> int:
        return len(self.swapped)

    @property
    def paths(self) -> list[str]:
        return [r.path for r in self.swapped]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        verb = "would swap" if self.dry_run else "swapped"
        lines = [f"{verb} {len(self.swapped)} activation(s) for {self.act} (init={self.init})"]
        if self.swapped:
            rows = [("path", "old", "new", "channels", "note")]
            for r in self.swapped:
                notes = []
                if r.untied_from is not None:
                    notes.append(f"untied from {r.untied_from}")
                if r.channels_last:
                    notes.append("channels last")
                if r.fit_error is not None:
                    notes.append(f"fit max err {r.fit_error:.2e}")
                ch = "lazy" if r.channels is None else str(r.channels)
                rows.append((r.path or "<root>", r.old_type, r.new_type, ch, "; ".join(notes)))
            widths = [max(len(row[i]) for row in rows) for i in range(4)]
            for row in rows:
                lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + ("  " + row[4] if row[4] else ""))
        for path, reason in self.skipped:
            lines.append(f"  skipped {path or '<root>'}: {reason}")
        if self.functional:
            lines.append("functional activation calls that were NOT swapped (rewrite them as modules to swap them):")
            for f in self.functional:
                lines.append(f"  {f.op} in {f.module or '<root>'} ({f.module_type}) x{f.count}")
        lines.append(f"functional-call scan: {self.functional_scan}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _compile_patterns(patterns: str | Iterable[str] | None, what: str) -> list[re.Pattern] | None:
    if patterns is None:
        return None
    if isinstance(patterns, str):
        patterns = [patterns]
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p))
        except re.error as exc:
            raise ValueError(f"{what} pattern {p!r} is not a valid regular expression: {exc}") from None
    return out


def _resolve_targets(targets: Any) -> tuple[type[nn.Module], ...]:
    if isinstance(targets, (type, str)):
        targets = (targets,)
    out = []
    for t in targets:
        if isinstance(t, str):
            cls = getattr(nn, t, None)
            if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
                raise ValueError(f"target {t!r} is not a torch.nn module class (e.g. 'ReLU', 'Hardswish')")
            t = cls
        if not (isinstance(t, type) and issubclass(t, nn.Module)):
            raise ValueError(f"targets must be nn.Module classes or their torch.nn names, got {t!r}")
        out.append(t)
    if not out:
        raise ValueError("targets is empty: name at least one activation type")
    return tuple(out)


def _act_label(act: Any) -> str:
    if isinstance(act, str):
        return act
    return getattr(act, "__name__", None) or type(act).__name__


def _parent_and_name(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    if "." in path:
        parent_path, name = path.rsplit(".", 1)
        return model.get_submodule(parent_path), name
    return model, path


def _features_of(layer: nn.Module | None) -> tuple[int, bool] | None:
    """(channels, on the last dim) of what ``layer`` outputs, for the layers that say it."""
    if isinstance(layer, nn.modules.batchnorm._NormBase):
        return int(layer.num_features), False
    if isinstance(layer, nn.GroupNorm):
        return int(layer.num_channels), False
    if isinstance(layer, nn.modules.conv._ConvNd):
        return int(layer.out_channels), False
    if isinstance(layer, nn.Linear):
        return int(layer.out_features), True
    if isinstance(layer, nn.LayerNorm):
        return int(layer.normalized_shape[-1]), True
    return None


def _passes_through(layer: nn.Module) -> bool:
    """Layers that keep the shape and layout they get (skipped when looking for the layer before)."""
    return isinstance(layer, (nn.Dropout, nn.Identity, Activation)) or isinstance(layer, DEFAULT_TARGETS)


def _layout(shape: tuple[int, ...], before: nn.Module | None) -> tuple[int | None, bool]:
    """(channels, channels_last) of an activation input of ``shape`` that follows layer ``before``.

    The channel count is the one ``before`` produces, found on dim 1 or on the last dim of the
    input (after any permute or reshape in between); when both fit, the layer's own layout
    decides (last for Linear and LayerNorm). ``channels_last`` only for inputs of 3 dims or more.
    Without a telling layer, dim 1.
    """
    if len(shape) < 2:
        return None, False
    feat = _features_of(before)
    if feat is not None:
        n, last = feat
        on_first, on_last = shape[1] == n, shape[-1] == n
        if on_last and (last or not on_first) and len(shape) >= 3:
            return n, True
        if on_first or on_last:
            return n, False
    return int(shape[1]), False


def _channels_from_neighbour(model: nn.Module, path: str) -> tuple[int | None, bool]:
    """(channels, channels_last) from the layer just before ``path`` in a Sequential parent."""
    if not path:
        return None, False
    parent, name = _parent_and_name(model, path)
    if not isinstance(parent, nn.Sequential):
        return None, False
    names = [n for n, _ in parent.named_children()]
    idx = names.index(name)
    for prev_name in reversed(names[:idx]):
        prev = getattr(parent, prev_name)
        feat = _features_of(prev)
        if feat is not None:
            return feat  # a Linear's or LayerNorm's output has its features last, whatever its rank
        if _passes_through(prev):
            continue
        return None, False
    return None, False


class _FunctionalScan(TorchFunctionMode):
    """Records activation functions called outside activation modules during a forward."""

    def __init__(self, names: set[str], stack: list[tuple[str, nn.Module]]) -> None:
        super().__init__()
        self.names = names
        self.stack = stack
        self.calls: dict[tuple[str, str], FunctionalCall] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.names:
            path, mod = self.stack[-1] if self.stack else ("", None)
            inside_act = mod is not None and (
                isinstance(mod, Activation) or type(mod).__module__ == "torch.nn.modules.activation"
            )
            if not inside_act:
                owner = getattr(func, "__module__", None) or "torch.Tensor"
                op = f"{owner}.{name}" if owner != "torch._C._nn" else f"torch.nn.functional.{name}"
                key = (op, path)
                if key in self.calls:
                    self.calls[key].count += 1
                else:
                    self.calls[key] = FunctionalCall(op, path, type(mod).__name__ if mod is not None else "?", 1)
        return func(*args, **(kwargs or {}))


@dataclass
class _Call:
    module_id: int
    parent: str  # path of the module whose forward was running
    shape: tuple[int, ...]
    before: nn.Module | None = None  # the last layer that ran before this call (shape-keeping ones skipped)

    @property
    def layout(self) -> tuple[int | None, bool]:
        return _layout(self.shape, self.before)


def _example_forward(model: nn.Module, example_input: Any, candidates: dict[int, nn.Module],
                     functional_names: set[str]) -> tuple[list[_Call], list[FunctionalCall]]:
    """One eval-mode forward recording each candidate call (parent, input shape) and functional calls."""
    stack: list[tuple[str, nn.Module]] = []
    calls: list[_Call] = []
    handles = []
    named = list(model.named_modules())
    last_layer: list[nn.Module | None] = [None]

    def pre(path, mod):
        def hook(m, inputs):
            if id(m) in candidates and inputs and torch.is_tensor(inputs[0]):
                calls.append(_Call(id(m), stack[-1][0] if stack else "", tuple(inputs[0].shape), last_layer[0]))
            stack.append((path, m))
        return hook

    def post(m, inputs, output):
        if stack:
            stack.pop()
        if not any(True for _ in m.children()) and not _passes_through(m):
            last_layer[0] = m

    for path, mod in named:
        handles.append(mod.register_forward_pre_hook(pre(path, mod)))
        handles.append(mod.register_forward_hook(post))
    scan = _FunctionalScan(functional_names, stack)
    run_hooked(model, example_input, handles, eval_mode(model), torch.no_grad(), scan)
    return calls, list(scan.calls.values())


class _LeafTracer(torch.fx.Tracer):
    """Traces only the root's own forward: every submodule stays a leaf call."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def _trace_parent(parent: nn.Module) -> torch.fx.GraphModule:
    graph = _LeafTracer().trace(parent)
    return torch.fx.GraphModule(parent, graph, class_name=type(parent).__name__ + "Untied")


def _free_name(taken: set[str], base: str) -> str:
    i = 1
    while f"{base}_{i}" in taken:
        i += 1
    name = f"{base}_{i}"
    taken.add(name)
    return name


# --------------------------------------------------------------------------------------------------
# the swap
# --------------------------------------------------------------------------------------------------


@dataclass
class _Site:
    """A call site to replace: ``attr`` on ``parent_path`` (or a new attribute of a traced parent)."""

    parent_path: str
    attr: str
    old: nn.Module
    channels: int | None
    channels_from: str
    ndim: int
    untied_from: str | None = None
    channels_last: bool = False  # channels on the last dim (token tensors)


def swap_activations(
    model: nn.Module,
    act: Any,
    *,
    targets: Sequence[type[nn.Module] | str] | type[nn.Module] = DEFAULT_TARGETS,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    init: str = "default",
    example_input: torch.Tensor | tuple | None = None,
    dry_run: bool = False,
) -> SwapReport:
    """Replace the activation modules of ``model`` (in place) by ``act``; returns a :class:`SwapReport`.

    Args:
        act: what ``repact.create_act`` takes: a registered name (``"repact"``, ``"acon_c"``), a
            class or a callable; one instance is built per call site with its channel count.
        targets: activation types to replace (classes, or torch.nn names such as ``"ReLU"``).
        include, exclude: regular expressions (or lists of them) searched in each module path; a
            module is replaced when it matches some ``include`` (all when None) and no ``exclude``.
        init: ``"default"`` (the activation's own init) or ``"approximate"`` (fit it to the
            function it replaces on 1201 points over [-6, 6]).
        example_input: an input for one eval-mode forward that finds channel counts, modules called
            several times, and functional activation calls (recommended).
        dry_run: plan and report without changing the model.
    """
    if init not in _INITS:
        raise ValueError(f"init must be one of {', '.join(_INITS)}, got {init!r}")
    if act is None or isinstance(act, nn.Module):
        raise ValueError("act must be an activation name, class or factory (one instance is built per call site), "
                         f"got {act!r}")
    target_types = _resolve_targets(targets)
    inc = _compile_patterns(include, "include")
    exc = _compile_patterns(exclude, "exclude")
    create_act(act)  # fails early (unknown name, bad keyword) before anything changes
    report = SwapReport(act=_act_label(act), init=init, dry_run=dry_run)

    # 1. candidate modules by path (a module registered at several paths appears at each)
    by_id: dict[int, list[str]] = {}
    modules: dict[int, nn.Module] = {}
    for path, mod in model.named_modules(remove_duplicate=False):
        if not isinstance(mod, target_types):
            continue
        if inc is not None and not any(p.search(path) for p in inc):
            report.skipped.append((path, "not matched by include"))
            continue
        if exc is not None and any(p.search(path) for p in exc):
            report.skipped.append((path, "matched by exclude"))
            continue
        if not path:
            report.skipped.append((path, "the model itself is an activation; build the activation you want instead"))
            continue
        by_id.setdefault(id(mod), []).append(path)
        modules[id(mod)] = mod

    # 2. the example forward: per-call parents and shapes, functional calls
    calls: list[_Call] = []
    if example_input is not None:
        names = {n for t in target_types for base, ns in _FUNCTIONAL_NAMES.items() if issubclass(t, base) for n in ns}
        calls, functional = _example_forward(model, example_input, modules, names)
        report.functional = sorted(functional, key=lambda f: (f.module, f.op))
        report.functional_scan = "TorchFunctionMode (__torch_function__) during the example forward"
    else:
        report.functional_scan = "not run (pass example_input= to find functional activation calls)"

    # 3. plan one site per path, or per call for a module called several times from one parent
    sites: list[_Site] = []
    traced: dict[str, torch.fx.GraphModule] = {}
    taken_names: dict[str, set[str]] = {}
    for mid, paths in by_id.items():
        mod = modules[mid]
        mcalls = [c for c in calls if c.module_id == mid]
        for path in paths:
            parent_path, attr = path.rsplit(".", 1) if "." in path else ("", path)
            here = [c for c in mcalls if c.parent == parent_path]
            siblings = [p for p in paths if (p.rsplit(".", 1)[0] if "." in p else "") == parent_path]
            if len(siblings) > 1 and here:
                # one object under several names of one parent (e.g. a Sequential): one call per name
                if len(here) != len(siblings):
                    report.skipped.append((path, f"registered {len(siblings)} times in {parent_path or 'the root'} "
                                                 f"but called {len(here)} times from it; left shared"))
                    continue
                layouts = {c.layout for c in here}
                if len(layouts) == 1:
                    ch, last = layouts.pop()
                elif isinstance(model.get_submodule(parent_path) if parent_path else model, nn.Sequential):
                    ch, last = here[siblings.index(path)].layout  # a Sequential calls in order
                else:
                    ch, last = None, False
                src = "example forward" if ch is not None else "unknown (lazy)"
                sites.append(_Site(parent_path, attr, mod, ch, src, len(here[0].shape), channels_last=last))
                continue
            if len(here) <= 1:
                if here:
                    (ch, last), src, nd = here[0].layout, "example forward", len(here[0].shape)
                else:
                    ch, last = _channels_from_neighbour(model, path)
                    src = "neighbouring layer" if ch is not None else "unknown (lazy)"
                    nd = 4
                sites.append(_Site(parent_path, attr, mod, ch, src, nd, channels_last=last))
                continue
            # called len(here) times from the parent's forward: untie with torch.fx
            if not parent_path:
                report.skipped.append((path, f"called {len(here)} times from the root module's forward; untie it "
                                             "first with model = repact.surgery.untie_calls(model, example_input)"))
                continue
            parent = model.get_submodule(parent_path)
            try:
                gm = traced.get(parent_path) or _trace_parent(parent)
            except Exception as err:  # noqa: BLE001  (fx raises many types)
                report.skipped.append((path, f"called {len(here)} times but torch.fx could not trace "
                                             f"{parent_path} ({type(err).__name__}: {err}); left shared"))
                continue
            traced[parent_path] = gm
            taken = taken_names.setdefault(parent_path, {n for n, _ in parent.named_children()})
            nodes = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == attr]
            if len(nodes) != len(here):
                report.skipped.append((path, f"called {len(here)} times but the traced forward of {parent_path} "
                                             f"has {len(nodes)} calls; left shared"))
                continue
            for i, (node, call) in enumerate(zip(nodes, here)):
                name = attr if i == 0 else _free_name(taken, attr)
                node.target = name
                ch, last = call.layout
                sites.append(_Site(parent_path, name, mod, ch, "example forward", len(call.shape), untied_from=path,
                                   channels_last=last))

    # 4. build every new module before changing anything
    device, dtype = model_device_dtype(model)
    built: list[tuple[_Site, nn.Module, float | None]] = []
    for s in sites:
        new = create_act(act, channels=s.channels, **({"channels_last": True} if s.channels_last else {}))
        if s.channels_last and getattr(new, "needs_channels", False) and not getattr(new, "channels_last", False):
            raise ValueError(f"{s.parent_path}.{s.attr} gets token tensors (channels on the last dim) but "
                             f"{_act_label(act)} did not take channels_last=True; give a factory that accepts it")
        if device is not None:
            new = new.to(device=device)
            if dtype is not None and dtype != torch.float32:
                new = new.to(dtype=dtype)
        new.train(s.old.training)
        err = None
        if init == "approximate" and (isinstance(new, Activation) or any(True for _ in new.parameters())):
            if getattr(new, "needs_channels", False) and s.channels is None:
                raise ValueError(
                    f"init='approximate' needs the channel count at {s.parent_path}.{s.attr} for the channel-wise "
                    f"{type(new).__name__}; pass example_input="
                )
            ref = copy.deepcopy(s.old).eval()
            # layer-wise activations share one function over channels: fit on one channel
            per_channel = getattr(new, "needs_channels", True) or _channel_params(s.old)
            # (N, C) has its channels on dim 1 and on the last dim: one grid for both layouts
            err = fit_activation(new, ref, channels=s.channels if per_channel else 1,
                                 ndim=2 if s.channels_last else s.ndim)
        built.append((s, new, err))

    for s, new, err in built:
        path = f"{s.parent_path}.{s.attr}" if s.parent_path else s.attr
        report.swapped.append(SwapRecord(path, type(s.old).__name__, type(new).__name__, s.channels, s.channels_from,
                                         s.untied_from, err, bool(getattr(new, "channels_last", False))))
    if dry_run:
        return report

    # 5. apply: traced parents first (they carry the untied call sites), then every module
    for parent_path, gm in traced.items():
        gm.recompile()
        grand, name = _parent_and_name(model, parent_path)
        setattr(grand, name, gm)
    for s, new, _ in built:
        parent = model.get_submodule(s.parent_path) if s.parent_path else model
        setattr(parent, s.attr, new)
    return report


def _channel_params(mod: nn.Module) -> bool:
    """Whether the replaced module differs per channel (e.g. PReLU(num_parameters=C))."""
    return any(p.numel() > 1 for p in mod.parameters())


def untie_calls(model: nn.Module, example_input: Any, *, targets: Sequence[type[nn.Module]] | None = None) -> nn.Module:
    """Give every call of a module that the root's forward calls several times its own copy.

    ``swap_activations`` unties calls inside submodules itself; for calls from the root's own
    forward it cannot replace the root object, so this returns a ``torch.fx.GraphModule`` of the
    root (same children and state-dict keys, plus ``name_1``, ``name_2`` ... copies). Modules that
    are not reused at the root are left as they are, and ``model`` is returned unchanged when
    nothing needs untying. ``targets`` limits untying to these types (default: every module type).
    """
    types = tuple(targets) if targets else (nn.Module,)
    candidates = {id(m): m for _, m in model.named_children() if isinstance(m, types)}
    calls, _ = _example_forward(model, example_input, candidates, set())
    counts: dict[int, int] = {}
    for c in calls:
        if c.parent == "":
            counts[c.module_id] = counts.get(c.module_id, 0) + 1
    reused = {mid for mid, n in counts.items() if n > 1}
    if not reused:
        return model
    gm = _trace_parent(model)
    taken = {n for n, _ in gm.named_children()}
    seen: dict[str, int] = {}
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(node.target)
        if id(mod) not in reused:
            continue
        k = seen.get(node.target, 0)
        seen[node.target] = k + 1
        if k:
            name = _free_name(taken, node.target)
            gm.add_submodule(name, copy.deepcopy(mod))
            node.target = name
    gm.recompile()
    return gm
