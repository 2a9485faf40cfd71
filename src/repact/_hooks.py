"""Run a model once while hooks watch it, and take the hooks off afterwards whatever happens."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager, ExitStack
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ["example_args", "run_hooked"]


def example_args(example_input: Any) -> tuple[Any, ...]:
    """The positional arguments an example input stands for: a tuple as it is, anything else alone."""
    return example_input if isinstance(example_input, tuple) else (example_input,)


def run_hooked(model: nn.Module, example_input: Any, handles: Iterable[RemovableHandle],
               *contexts: AbstractContextManager) -> Any:
    """Call ``model`` once on ``example_input`` inside ``contexts`` (entered in order) and return its
    output; ``handles`` are removed afterwards, also when the call or a context raises."""
    handles = list(handles)
    try:
        with ExitStack() as stack:
            for c in contexts:
                stack.enter_context(c)
            return model(*example_args(example_input))
    finally:
        for h in handles:
            h.remove()
