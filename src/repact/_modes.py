"""Train/eval flags that a function changes for a while and hands back as it found them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["kept_modes", "eval_mode"]


@contextmanager
def kept_modes(*modules: nn.Module) -> Iterator[None]:
    """On exit (error or not), every submodule of ``modules`` gets back its own ``training`` flag,
    including models whose parts were in different modes. A submodule created inside the block (a
    lazy activation building its BatchNorm in an eval forward) takes its parent's restored flag."""
    flags = [(m, m.training) for module in modules for m in module.modules()]
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag
        known = {id(m) for m, _ in flags}
        for module in modules:
            _inherit_new(module, known)


def _inherit_new(parent: nn.Module, known: set[int]) -> None:
    for child in parent.children():
        if id(child) not in known:
            child.training = parent.training
        _inherit_new(child, known)


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """``modules`` in eval mode inside the block; each submodule's own flag restored after it."""
    with kept_modes(*modules):
        for module in modules:
            module.eval()
        yield
