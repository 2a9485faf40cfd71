"""The one place that decides which backend runs an op, from the input's device, dtype and layout.

Backends:

* ``reference``: plain tensor ops (any device and dtype); the specification every other backend is
  tested against, and what TorchScript, tracing and ONNX export see;
* ``cpu``: repact's C kernels (``repact._native``; float32/float64 CPU tensors);
* ``triton``: repact's Triton kernels (CUDA tensors; float32, float16, bfloat16, float64; on CPU
  tensors too when Triton's interpreter is on, ``TRITON_INTERPRET=1``, which is how they are
  tested without a GPU).

``set_backend("auto" | "reference" | "cpu" | "triton")`` (``"torch"`` and ``"native"`` are
aliases of ``reference`` and ``cpu``) or the :func:`backend` context manager choose. ``auto``
runs CPU tensors on ``cpu``, CUDA tensors on ``triton``, and everything else (other devices, meta
tensors, other dtypes, a missing compiler or Triton) on ``reference``. A forced backend runs
where it applies and falls back to ``reference`` elsewhere (``cpu`` never sees a CUDA tensor).

Dtypes, the same for every backend (:func:`param_dtype`, :func:`cast_params`): an op's result has
its input's dtype; its parameters are cast at the op's entry to float64 for a float64 input and to
float32 for any other (float16/bfloat16 inputs, as under AMP, meet float32 parameters), by a
differentiable cast, so each parameter's gradient comes back in its own dtype (the piecewise
quadratic's table is cast where each backend prepares it, once per cached table). A float32
module takes float64 inputs, and a float64 one float32 inputs, on every backend.

:func:`choose` reads only the tensor's metadata: no data, no host copy, no device sync.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator, Optional, Tuple

import torch

from .. import _native
from .batchnorm import accumulation_dtype

__all__ = ["BACKENDS", "set_backend", "get_backend", "backend", "choose", "native_available",
           "triton_available", "triton_interpreted", "param_dtype", "cast_params", "CallCache"]

BACKENDS = ("auto", "reference", "cpu", "triton")
_ALIASES = {"torch": "reference", "native": "cpu"}
CPU_DTYPES = (torch.float32, torch.float64)
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

_backend = "auto"


class CallCache(dict):
    """The per-input-layout calls a module decided (its routing, its kernels' views and launches),
    keyed by the module (on :func:`get_backend` too: the decision is the dispatch's); never copied
    or pickled (a copy of the module starts with none)."""

    def __reduce__(self):
        return (CallCache, ())

    def __deepcopy__(self, memo):
        return CallCache()

    def __copy__(self):
        return CallCache()


def _canonical(name: str) -> str:
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in BACKENDS:
        names = ", ".join(BACKENDS + tuple(_ALIASES))
        raise ValueError(f"unknown backend {name!r}; choose one of {names}")
    return key


def set_backend(name: str) -> None:
    """Choose the implementation for every op: ``auto``, ``reference``, ``cpu`` or ``triton``."""
    global _backend
    key = _canonical(name)
    if key == "cpu" and not native_available():
        raise RuntimeError(f"the cpu backend is unavailable: {_native.build_error()}")
    if key == "triton" and not triton_available():
        raise RuntimeError("the triton backend is unavailable: the triton package cannot be imported")
    _backend = key


def get_backend() -> str:
    return _backend


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Run a block with another backend (restored afterwards)."""
    previous = _backend
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def native_available() -> bool:
    """Whether the C kernels are built and loaded (builds them on first call)."""
    return _native.library() is not None


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - triton ships with CUDA wheels only
        return False
    return True


def triton_interpreted() -> bool:
    """Whether repact's Triton kernels run in Triton's interpreter (they were built with
    ``TRITON_INTERPRET=1`` set); then they take CPU tensors."""
    if not triton_available():
        return False
    from . import _triton

    return _triton.interpreted()


def choose(x: torch.Tensor, *, compiled: bool = False) -> str:
    """The backend that runs an op on ``x``: ``"reference"``, ``"cpu"`` or ``"triton"``.

    Under ``torch.compile`` (a fake ``x``) only device and dtype are known: with ``compiled=True``
    the caller has a registered op for the kernels and gets ``cpu``/``triton`` where they apply;
    otherwise the reference (which the compiler fuses). Scripting, tracing and ONNX export (which
    traces, or compiles) always get the reference.
    """
    if _backend == "reference" or torch.jit.is_scripting() or torch.jit.is_tracing():
        return "reference"
    compiling = torch.compiler.is_compiling()
    if compiling:
        # (asked only here: is_in_onnx_export costs microseconds; the exporter traces or compiles)
        if not compiled or torch.onnx.is_in_onnx_export():
            return "reference"
    elif type(x) is not torch.Tensor or x.layout != torch.strided or x.numel() == 0:
        return "reference"
    dev = x.device.type
    if dev == "cpu" and _backend in ("auto", "cpu") and x.dtype in CPU_DTYPES and native_available():
        return "cpu"
    if x.dtype in TRITON_DTYPES and triton_available():
        if dev == "cuda" and _backend in ("auto", "triton"):
            return "triton"
        if dev == "cpu" and _backend == "triton" and not compiling and triton_interpreted():
            return "triton"
    return "reference"


def param_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype an op's parameters and tables are computed in for the input ``x``, on every
    backend: float64 for a float64 input, float32 for any other (the dtype its sums accumulate in)."""
    return accumulation_dtype(x.dtype)


def cast_params(x: torch.Tensor, *tensors: Optional[torch.Tensor]) -> Tuple[Optional[torch.Tensor], ...]:
    """``tensors`` (None passes through) in :func:`param_dtype` of ``x``, each as it is where it
    already has that dtype; a differentiable cast, so gradients return in each tensor's own dtype."""
    dt = param_dtype(x)
    return tuple(t if t is None or t.dtype == dt else t.to(dt) for t in tensors)
