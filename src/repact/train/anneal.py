"""Annealing activations into the identity during training (``repact train --anneal-acts START:END``).

Every :class:`repact.Annealed` of the model (built in, as in ``vanillanet_mini``, or wrapped around
the activations whose path matches ``--anneal-include REGEX``) gets ``lam`` from the training
time ``t`` in epochs (fractional: ``epoch + step / steps``), set before every step and once more
at the end of each epoch, before validation and the checkpoint:

* ``lam = 0`` before START, 1 from END on, and in between ``u = (t - START) / (END - START)``
  (``--anneal-schedule linear``) or ``(1 - cos(pi u)) / 2`` (``cosine``);
* ``--anneal-by model`` (default): every activation follows that window; ``layer``: the window is
  cut into one equal slice per annealed activation, in the order the model registers them (first
  layer first), so the layers reach the identity one after another.

``lam`` is a buffer saved with the weights and a function of the step, so a resumed run continues
exactly; under DDP every process sets the same values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..activations.anneal import Annealed, anneal_activations, annealed_modules
from .config import ConfigError, TrainConfig

__all__ = ["ANNEAL_SCHEDULES", "ANNEAL_BY", "parse_window", "anneal_fraction", "Annealer", "check_anneal_config",
           "wrap_for_training"]

ANNEAL_SCHEDULES = ("linear", "cosine")
ANNEAL_BY = ("model", "layer")


def parse_window(text: Any) -> tuple[float, float]:
    """``"START:END"`` (epochs, START < END, START >= 0) as two floats, else :class:`ConfigError`."""
    parts = str(text).split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        start, end = float(parts[0]), float(parts[1])
    except ValueError:
        raise ConfigError(f"anneal_acts must be START:END in epochs, such as 0:8, got {text!r} (in a YAML file, "
                          "quote it: \"0:8\")") from None
    if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
        raise ConfigError(f"anneal_acts {text!r}: START and END must be finite with 0 <= START < END")
    return start, end


def anneal_fraction(t: float, start: float, end: float, schedule: str = "linear") -> float:
    """``lam`` at time ``t`` (epochs) for the window [start, end]: 0 before, 1 from ``end`` on."""
    if t <= start:
        return 0.0
    if t >= end:
        return 1.0
    u = (t - start) / (end - start)
    return u if schedule == "linear" else 0.5 * (1.0 - math.cos(math.pi * u))


def check_anneal_config(cfg: TrainConfig) -> None:
    """:class:`ConfigError` for bad or contradictory annealing options (called by ``validate_config``)."""
    cfg.anneal_schedule = str(cfg.anneal_schedule).strip().lower()
    cfg.anneal_by = str(cfg.anneal_by).strip().lower()
    if cfg.anneal_schedule not in ANNEAL_SCHEDULES:
        raise ConfigError(f"unknown anneal_schedule {cfg.anneal_schedule!r}; accepted: {', '.join(ANNEAL_SCHEDULES)}")
    if cfg.anneal_by not in ANNEAL_BY:
        raise ConfigError(f"unknown anneal_by {cfg.anneal_by!r}; accepted: {', '.join(ANNEAL_BY)}")
    if cfg.anneal_acts in (None, ""):
        cfg.anneal_acts = None
        if cfg.anneal_include:
            raise ConfigError("--anneal-include chooses the activations that --anneal-acts anneals; give "
                              "--anneal-acts START:END too")
        return
    start, end = parse_window(cfg.anneal_acts)
    if end > cfg.epochs:
        raise ConfigError(f"anneal_acts {cfg.anneal_acts}: END ({end:g}) must not exceed epochs ({cfg.epochs}), "
                          "or the activations never reach the identity")
    if cfg.anneal_include and cfg.task != "classification":
        raise ConfigError("--anneal-include applies to classification models only")


def wrap_for_training(model: nn.Module, cfg: TrainConfig) -> dict[str, Any] | None:
    """Wrap the activations ``cfg.anneal_include`` names (in place); the model-config record that
    rebuilds the wrappers (``repact.checkpoint.build_model``), or None when nothing was asked."""
    if not cfg.anneal_acts or not cfg.anneal_include:
        return None
    try:
        anneal_activations(model, cfg.anneal_include)
    except ValueError as exc:
        raise ConfigError(f"--anneal-include: {exc}") from None
    return {"include": cfg.anneal_include}


@dataclass
class Annealer:
    """Sets ``lam`` of every annealed activation from the training time (see the module docstring)."""

    modules: list[Annealed]
    windows: list[tuple[float, float]]
    schedule: str

    @classmethod
    def from_config(cls, cfg: TrainConfig, model: nn.Module) -> "Annealer | None":
        """None without ``--anneal-acts``; :class:`ConfigError` for a model with nothing to anneal."""
        if not cfg.anneal_acts:
            return None
        mods = list({id(m): m for _, m in annealed_modules(model)}.values())
        if not mods:
            raise ConfigError(f"--anneal-acts: model {cfg.model!r} has no annealed activation (vanillanet_mini has "
                              "them built in); pass --anneal-include REGEX to anneal the activations whose path "
                              "matches it")
        start, end = parse_window(cfg.anneal_acts)
        if cfg.anneal_by == "model":
            windows = [(start, end)] * len(mods)
        else:
            step = (end - start) / len(mods)
            windows = [(start + i * step, start + (i + 1) * step) for i in range(len(mods))]
        return cls(mods, windows, cfg.anneal_schedule)

    def set(self, t: float) -> float:
        """Set every ``lam`` for time ``t`` (epochs); returns their mean."""
        total = 0.0
        for m, (a, b) in zip(self.modules, self.windows):
            lam = anneal_fraction(t, a, b, self.schedule)
            m.set_lam(lam)
            total += lam
        return total / len(self.modules)

    def mean(self) -> float:
        return sum(m.lam_value for m in self.modules) / len(self.modules)
