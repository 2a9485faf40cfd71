"""Low-level differentiable ops behind repact's activations."""

from .piecewise import (
    backend,
    get_backend,
    native_available,
    piecewise_quadratic,
    piecewise_quadratic_torch,
    set_backend,
)

__all__ = [
    "backend",
    "get_backend",
    "native_available",
    "piecewise_quadratic",
    "piecewise_quadratic_torch",
    "set_backend",
]
