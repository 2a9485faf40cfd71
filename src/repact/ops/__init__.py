"""repact's ops, one interface each, with a reference and kernel backends (see ``dispatch``).

* :func:`piecewise_quadratic`: the deploy activation's function (table or RepAct's basis);
* :func:`repact_train`: RepAct's training op (I/II/III, layer/channel, RepAct-III's statistics);
* :func:`acon`: ACON's training op;
* :mod:`~repact.ops.batchnorm`: RepAct-III's statistics and the running update.

``set_backend("auto" | "reference" | "cpu" | "triton")`` (aliases ``"torch"``, ``"native"``) or the
``backend(...)`` context manager choose the backend; :func:`choose` is where it is decided.
"""

from . import registered  # noqa: F401  (defines torch.ops.repact.* for torch.compile)
from .acon import acon
from .batchnorm import batch_stats, update_running
from .dispatch import (
    BACKENDS,
    backend,
    choose,
    get_backend,
    native_available,
    set_backend,
    triton_available,
    triton_interpreted,
)
from .piecewise import piecewise_quadratic, piecewise_quadratic_torch
from .repact_train import repact_train

__all__ = [
    "BACKENDS",
    "acon",
    "backend",
    "batch_stats",
    "choose",
    "get_backend",
    "native_available",
    "piecewise_quadratic",
    "piecewise_quadratic_torch",
    "repact_train",
    "set_backend",
    "triton_available",
    "triton_interpreted",
    "update_running",
]
