"""What a training run records and draws for the pictures of ``repact.analysis``: the mean |gradient|
of the first/last conv and BN weights every few steps (``grads.jsonl``), the activation shapes as
TensorBoard images, and ``curves.png`` / ``activations.png`` in the run folder at the end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..checkpoint import atomic_write_text
from .logs import GradProbe, read_jsonl

__all__ = ["GRADS_FILE", "CURVES_FILE", "ACTIVATIONS_FILE", "POINTS_PER_EPOCH", "TracedGradProbe", "log_tensorboard_pictures", "write_run_pictures"]

GRADS_FILE = "grads.jsonl"
CURVES_FILE = "curves.png"
ACTIVATIONS_FILE = "activations.png"
#: about this many gradient records per epoch (one every max(1, steps // POINTS_PER_EPOCH) steps)
POINTS_PER_EPOCH = 20


class TracedGradProbe(GradProbe):
    """A :class:`GradProbe` that also appends, every ``every`` steps, the mean of the values over
    those steps to ``run_dir/grads.jsonl`` as ``{"epoch", "step", "global_step", "epochs", key: value}``
    (``epochs`` = global_step / steps per epoch). Records past ``start_epoch`` left by an earlier
    run in the folder are dropped first (a resumed run continues the file)."""

    def __init__(self, model: nn.Module, run_dir: str | Path, steps_per_epoch: int, start_epoch: int = 0,
                 enabled: bool = True) -> None:
        super().__init__(model)
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.every = max(1, self.steps_per_epoch // POINTS_PER_EPOCH)
        self.global_step = int(start_epoch) * self.steps_per_epoch
        self.path = Path(run_dir) / GRADS_FILE if enabled else None
        self._window: dict[str, torch.Tensor] = {}
        self._window_steps = 0
        if self.path is not None and self.path.exists():
            keep = [r for r in read_jsonl(self.path) if int(r.get("epoch", 0)) <= start_epoch]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def relocate(self, run_dir: str | Path) -> None:
        """Append to ``run_dir`` from now on (the run's folder was swapped into place)."""
        if self.path is not None:
            self.path = Path(run_dir) / GRADS_FILE

    @torch.no_grad()
    def update(self) -> dict[str, torch.Tensor]:
        now = super().update()
        self.global_step += 1
        if self.path is None:
            return now
        for k, v in now.items():
            self._window[k] = self._window[k] + v if k in self._window else v
        self._window_steps += 1
        step = (self.global_step - 1) % self.steps_per_epoch + 1
        if step % self.every == 0 or step == self.steps_per_epoch:
            rec = {"epoch": (self.global_step - 1) // self.steps_per_epoch + 1, "step": step,
                   "global_step": self.global_step, "epochs": self.global_step / self.steps_per_epoch,
                   **{k: float(v) / self._window_steps for k, v in self._window.items()}}
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(rec) + "\n")
            self._window, self._window_steps = {}, 0
        return now


def log_tensorboard_pictures(logger, model: nn.Module, epoch: int) -> None:
    """The activation layers' shapes (``plot layers``) as a TensorBoard image, when TensorBoard is open."""
    tb = getattr(logger, "_tb", None)
    if tb is None:
        return
    from ..analysis.layers import activation_layers, plot_layers

    if activation_layers(model):
        fig, _ = plot_layers(model, points=301)
        tb.add_figure("activations", fig, epoch)  # closes the figure
        tb.flush()


def write_run_pictures(run_dir: str | Path, model: nn.Module | None, say: Callable[[str], None] = print
                       ) -> dict[str, Path]:
    """``curves.png`` (loss and top-1 per epoch, train and val) and ``activations.png`` (every
    activation layer of the final model) in the run folder. A missing matplotlib is reported, not raised."""
    from ..analysis.figures import MissingDependency, save_figure
    from ..analysis.layers import activation_layers, plot_layers
    from ..analysis.runs import plot_run_curves

    run_dir = Path(run_dir)
    out: dict[str, Path] = {}
    try:
        fig, _ = plot_run_curves(run_dir)
        out["curves"] = save_figure(fig, run_dir / CURVES_FILE)
        if model is not None and activation_layers(model):
            fig, _ = plot_layers(model, title=f"activation layers of {run_dir.name} (final model)")
            out["activations"] = save_figure(fig, run_dir / ACTIVATIONS_FILE)
    except MissingDependency as exc:
        say(f"note: no curves.png / activations.png: {exc}")
    return out
