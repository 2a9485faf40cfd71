"""Training options about the activations themselves: the few-bit backward (``--backward-bits``)."""

from __future__ import annotations

from torch import nn

from .config import ConfigError, TrainConfig

__all__ = ["validate_act_options", "apply_backward_bits"]


def validate_act_options(cfg: TrainConfig) -> None:
    """:class:`ConfigError` naming a bad activation option and what is accepted."""
    from ..ops.fewbit import BITS

    if cfg.backward_bits is not None and cfg.backward_bits not in BITS:
        raise ConfigError(f"backward_bits must be one of {', '.join(map(str, BITS))} (or unset), "
                          f"got {cfg.backward_bits}")


def apply_backward_bits(model: nn.Module, cfg: TrainConfig) -> list[str]:
    """``--backward-bits``: every activation of ``model`` that has a few-bit backward gets it; returns their
    paths. A model with none of them is refused (the option would silently do nothing)."""
    if cfg.backward_bits is None:
        return []
    from ..activations.fewbit import set_backward_bits

    done = set_backward_bits(model, cfg.backward_bits)
    if not done:
        raise ConfigError(f"--backward-bits {cfg.backward_bits}: model {cfg.model!r} with act {cfg.act!r} has no "
                          "activation with a few-bit backward (RepAct-I/II, ACON-C, SiLU, GELU, HardSwish)")
    return done
