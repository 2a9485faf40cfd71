"""Training options about the activations themselves: the few-bit backward (``--backward-bits``) and
the schedule of stochastic activations (``--stochastic-p``, ``--stochastic-finetune``)."""

from __future__ import annotations

from typing import Any

from torch import nn

from .config import ConfigError, TrainConfig

__all__ = ["validate_act_options", "apply_backward_bits", "parse_p_schedule", "ActTraining"]


def parse_p_schedule(text: Any) -> tuple[float, float]:
    """``"P"`` or ``"START:END"`` as (start, end), each in [0, 1]; :class:`ConfigError` otherwise."""
    parts = str(text).split(":")
    try:
        values = [float(v) for v in parts]
    except ValueError:
        values = []
    if len(parts) not in (1, 2) or len(values) != len(parts) or not all(0 <= v <= 1 for v in values):
        raise ConfigError(f"stochastic_p must be P or START:END with numbers in [0, 1] (e.g. 0.5 or 0.9:0.3), "
                          f"got {text!r}")
    return values[0], values[-1]


def validate_act_options(cfg: TrainConfig) -> None:
    """:class:`ConfigError` naming a bad activation option and what is accepted."""
    from ..ops.fewbit import BITS

    if cfg.backward_bits is not None and cfg.backward_bits not in BITS:
        raise ConfigError(f"backward_bits must be one of {', '.join(map(str, BITS))} (or unset), "
                          f"got {cfg.backward_bits}")
    if cfg.stochastic_p is not None:
        parse_p_schedule(cfg.stochastic_p)
    if not 0 <= cfg.stochastic_finetune < cfg.epochs:
        raise ConfigError(f"stochastic_finetune must be from 0 to epochs - 1 ({cfg.epochs - 1}) epochs, "
                          f"got {cfg.stochastic_finetune}")
    from .finetune import validate_finetune

    validate_finetune(cfg)


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


class ActTraining:
    """What the activation options do during training. The :class:`~repact.activations.stochastic.Stochastic`
    activations get ``p`` linear from START to END over the stochastic epochs' steps
    (``--stochastic-p``; unset: each keeps its own), then ``fixed`` for the last
    ``--stochastic-finetune`` epochs: a function of (epoch, step) only, so a resumed run follows the
    uninterrupted one. ``frozen`` modules (``--train-only``'s BatchNorms) stay in eval mode."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, steps_per_epoch: int, frozen=()) -> None:
        from ..activations.stochastic import Stochastic

        self.frozen = list(frozen)
        self.modules = [m for m in model.modules() if isinstance(m, Stochastic)]
        self.p = parse_p_schedule(cfg.stochastic_p) if cfg.stochastic_p is not None else None
        self.finetune_from = cfg.epochs - cfg.stochastic_finetune
        self.steps = steps_per_epoch
        asked = [f for f, on in (("--stochastic-p", self.p is not None),
                                 ("--stochastic-finetune", cfg.stochastic_finetune > 0)) if on]
        if asked and not self.modules:
            raise ConfigError(f"{' and '.join(asked)}: model {cfg.model!r} with act {cfg.act!r} has no stochastic "
                              "activation (use --act stochastic or stochastic_element)")

    def before_epoch(self) -> None:
        """After ``model.train()``: the frozen modules back to eval mode."""
        for m in self.frozen:
            m.eval()

    def before_step(self, epoch: int, step: int) -> None:
        if not self.modules:
            return
        fixed = epoch >= self.finetune_from
        p = None
        if self.p is not None and not fixed:
            t = epoch * self.steps + step
            span = max(1, self.finetune_from * self.steps - 1)
            p = self.p[0] + (self.p[1] - self.p[0]) * min(1.0, t / span)
        for m in self.modules:
            m.fixed = fixed
            if p is not None:
                m.p = p

    def record(self) -> dict[str, Any]:
        """What the epoch's metrics record: the p of the last step and whether it was fixed."""
        if not self.modules:
            return {}
        m = self.modules[0]
        return {"stochastic_p": m.p, "stochastic_fixed": m.fixed}
