"""One registry from an activation name (or a class, or a callable) to a layer.

Names are lower case; ``-`` and ``_`` are interchangeable; aliases resolve to one canonical name.
Every registered factory is called as ``factory(channels=..., **kwargs)`` when it accepts
``channels`` and as ``factory(**kwargs)`` otherwise; ``inplace`` (timm's
``act_layer(inplace=True)`` convention) and ``channels_last`` (a layout hint that only channel-wise
layers use) are dropped for factories that do not take them.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

__all__ = ["ActSpec", "register_act", "unregister_act", "create_act", "list_acts", "get_act_spec", "resolve_name"]


@dataclass(frozen=True)
class ActSpec:
    """What the registry knows about one activation."""

    name: str
    factory: Callable[..., nn.Module]
    aliases: tuple[str, ...] = ()
    family: str = "classic"
    learnable: bool = False
    channelwise: bool = False
    deployable: bool = False
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, ActSpec] = {}
_ALIASES: dict[str, str] = {}


def _normalize(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register_act(
    name: str,
    factory: Callable[..., nn.Module] | None = None,
    *,
    aliases: tuple[str, ...] | list[str] = (),
    family: str = "classic",
    learnable: bool = False,
    channelwise: bool = False,
    deployable: bool = False,
    description: str = "",
    overwrite: bool = False,
    **defaults: Any,
):
    """Register ``factory`` under ``name``; usable as a decorator.

    ``defaults`` are keyword arguments bound to this name (so two names can share a class,
    e.g. ``repact`` and ``repact_softmax``). Re-registering a taken name raises unless
    ``overwrite=True``.
    """

    def _register(obj: Callable[..., nn.Module]):
        canonical = _normalize(name)
        names = [canonical, *(_normalize(a) for a in aliases)]
        if not overwrite:
            for n in names:
                if n in _REGISTRY or n in _ALIASES:
                    raise ValueError(f"activation name {n!r} is already registered; pass overwrite=True to replace it")
        doc = description or (inspect.getdoc(obj) or "").split("\n")[0]
        spec = ActSpec(
            name=canonical,
            factory=obj,
            aliases=tuple(names[1:]),
            family=family,
            learnable=learnable,
            channelwise=channelwise,
            deployable=deployable,
            description=doc,
            defaults=dict(defaults),
        )
        previous = _REGISTRY.get(canonical)
        if previous is not None:  # overwrite: the old aliases go with the old entry
            for alias in previous.aliases:
                _ALIASES.pop(alias, None)
        _REGISTRY[canonical] = spec
        _ALIASES.pop(canonical, None)
        for alias in names[1:]:
            _ALIASES[alias] = canonical
        return obj

    if factory is not None:
        return _register(factory)
    return _register


def unregister_act(name: str) -> None:
    """Remove a registered name and its aliases."""
    canonical = resolve_name(name)
    spec = _REGISTRY.pop(canonical)
    for alias in spec.aliases:
        _ALIASES.pop(alias, None)


def resolve_name(name: str) -> str:
    """Canonical name for ``name`` or an alias; ``ValueError`` naming the closest names otherwise."""
    _ensure_builtins()
    key = _normalize(name)
    if key in _REGISTRY:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    choices = sorted([*_REGISTRY, *_ALIASES])
    close = difflib.get_close_matches(key, choices, n=4, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(
        f"unknown activation {name!r}.{hint} Registered names: {', '.join(sorted(_REGISTRY))} "
        "(see repact.list_acts())."
    )


def get_act_spec(name: str) -> ActSpec:
    return _REGISTRY[resolve_name(name)]


def list_acts(family: str | None = None, *, deployable: bool | None = None) -> list[str]:
    """Canonical names of every registered activation, sorted; filter by family or deployability."""
    _ensure_builtins()
    out = []
    for n, s in _REGISTRY.items():
        if family is not None and s.family != family:
            continue
        if deployable is not None and s.deployable != deployable:
            continue
        out.append(n)
    return sorted(out)


def _accepts(fn: Callable, param: str) -> bool:
    if isinstance(fn, type):
        init = fn.__init__
        if init is nn.Module.__init__:  # takes **kwargs only to reject them
            return False
        fn = init
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    params = sig.parameters
    if param in params:
        return True
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


#: keywords passed only to factories that take them
_OPTIONAL_KWARGS = ("inplace", "channels_last")


def _call_factory(factory: Callable[..., nn.Module], channels: int | None, kwargs: dict[str, Any]) -> nn.Module:
    kwargs = dict(kwargs)
    for hint in _OPTIONAL_KWARGS:
        if hint in kwargs and not _accepts(factory, hint):
            kwargs.pop(hint)
    if _accepts(factory, "channels"):
        kwargs["channels"] = channels
    module = factory(**kwargs)
    if not isinstance(module, nn.Module):
        raise TypeError(f"activation factory {factory!r} returned {type(module).__name__}, expected an nn.Module")
    return module


def create_act(
    name: str | type[nn.Module] | Callable[..., nn.Module] | nn.Module | None,
    channels: int | None = None,
    **kwargs: Any,
) -> nn.Module | None:
    """Build an activation layer.

    ``name`` is a registered name or alias (``"repact"``, ``"acon_c"``, ``"hard_swish"`` ...), an
    ``nn.Module`` class, or any callable returning a module. ``channels`` is passed to factories
    that take it (channel-wise activations infer it on the first forward when it is ``None``).
    ``None`` returns ``None`` (no activation); an empty name is an error (``"identity"`` is the
    explicit no-op).
    """
    if name is None:
        return None
    if isinstance(name, str) and name.strip() == "":
        raise ValueError("the activation name is empty; give a registered name (see repact.list_acts()), "
                         "'identity' for no activation, or None")
    if isinstance(name, nn.Module):
        raise TypeError(
            f"create_act got a module instance ({type(name).__name__}); pass its class or a registered name "
            "so that every call site gets its own instance"
        )
    if isinstance(name, str):
        spec = get_act_spec(name)
        merged = {**spec.defaults, **kwargs}
        return _call_factory(spec.factory, channels, merged)
    if callable(name):
        return _call_factory(name, channels, kwargs)
    raise TypeError(f"activation must be a name, a class or a callable, got {type(name).__name__}")


_BUILTINS_LOADED = False


def _ensure_builtins() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        from . import activations  # noqa: F401  (registers the built-in families)
