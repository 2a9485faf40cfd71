"""Starting from a pretrained classifier: ``--weights``, and activation-only fine-tuning with
``--swap-act``, ``--init`` and ``--train-only``.

``repact train --model M --act A --weights FILE --swap-act repact --init approximate --train-only acts``
builds M with its activations A (``default``: the architecture's own), loads FILE (a local state
dict: a repact checkpoint ``.safetensors``, a bare safetensors file, or a ``torch.save`` file read
with ``weights_only=True``; nothing pickled runs), swaps every activation module for ``repact``
(:func:`repact.swap_activations`, one per call site, ``approximate``: fitted to the function it
replaces) and trains only the activations' parameters (``acts``), or those and the BatchNorms'
(``acts,bn``); frozen BatchNorms keep their running statistics (eval mode). The run's
``finetune.json`` (and ``summary.json``'s ``finetune``) give the trainable parameters and the
validation top-1 of the pretrained model and of the swapped one before any step; the top-1
change is the run's against the pretrained model's. The swap is recorded in the model config, so
checkpoints rebuild (``repact eval``, ``deploy``, ``--resume``) with the swapped activations.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import CLASSIFICATION, ConfigError, TrainConfig

__all__ = ["TRAIN_ONLY", "INITS", "validate_finetune", "train_only", "FineTune"]

#: what --train-only accepts (parts separated by commas)
TRAIN_ONLY = ("acts", "bn")
INITS = ("approximate", "default")


def _train_only_parts(text: str | None) -> set[str]:
    parts = {p.strip() for p in str(text).split(",") if p.strip()} if text else set()
    if text is not None and ("acts" not in parts or not parts <= set(TRAIN_ONLY)):
        raise ConfigError(f"train_only must be acts or acts,bn (the activations' parameters, optionally with the "
                          f"BatchNorms'), got {text!r}")
    return parts


def validate_finetune(cfg: TrainConfig) -> None:
    """:class:`ConfigError` for fine-tuning options that are bad or impossible together."""
    from ..registry import resolve_name

    if cfg.swap_init not in INITS:
        raise ConfigError(f"unknown init {cfg.swap_init!r}; accepted: {', '.join(INITS)}")
    parts = _train_only_parts(cfg.train_only)
    if cfg.train_only is not None:
        cfg.train_only = ",".join(p for p in TRAIN_ONLY if p in parts)
    given = [f for f, on in (("--swap-act", cfg.swap_act is not None), ("--train-only", cfg.train_only is not None))
             if on]
    if given and cfg.task != CLASSIFICATION:
        raise ConfigError(f"{' and '.join(given)} fine-tune a pretrained classifier; task {cfg.task} swaps its "
                          "backbone's activations with --act")
    if given and cfg.weights is None:
        raise ConfigError(f"{' and '.join(given)} fine-tune a pretrained model: give its weights with --weights FILE "
                          "(to train a new model with other activations, use --act)")
    if cfg.swap_act is not None:
        try:
            resolve_name(cfg.swap_act)
        except ValueError as exc:
            raise ConfigError(f"--swap-act: {exc}") from None


def _load(model: nn.Module, path: str) -> int:
    """Load a local weights file (strict); returns the tensors loaded."""
    from ..models.task_backbone import read_state_dict

    try:
        state = read_state_dict(path)
    except ValueError as exc:
        raise ConfigError(f"--weights: {exc}") from None
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(v.shape)} (model {tuple(own[k].shape)})" for k, v in state.items()
              if k in own and v.shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} of another shape (e.g. {shapes[0]})")
        raise ConfigError(f"--weights {path} does not fit the model being trained: {'; '.join(parts)}; build it as "
                          "it was trained (--model, --act, --model-kw, the dataset's classes)")
    model.load_state_dict(state)
    return len(state)


class FineTune:
    """The pretrained start of a run (fresh: weights loaded, activations swapped; resumed: the recorded
    swap replayed), its frozen parameters, and the start's top-1 for the report."""

    def __init__(self, model: nn.Module, model_config: dict[str, Any], cfg: TrainConfig,
                 saved: dict[str, Any] | None) -> None:
        from ..surgery import replay_swap, swap_activations

        self.cfg = cfg
        self.pretrained: nn.Module | None = None
        self.info: dict[str, Any] = {}
        shape = model_config.get("input_shape")
        if saved is not None:  # resuming: the checkpoint's weights come next
            if saved.get("swap"):
                replay_swap(model, saved["swap"], shape)
                model_config["swap"] = saved["swap"]
        elif cfg.weights is not None and cfg.task == CLASSIFICATION:
            loaded = _load(model, cfg.weights)
            self.info = {"weights": str(cfg.weights), "tensors_loaded": loaded}
            if cfg.swap_act is not None:
                self.pretrained = copy.deepcopy(model)
                example = torch.zeros([2, *shape])
                report = swap_activations(model, cfg.swap_act, init=cfg.swap_init, example_input=example)
                if not report.swapped:
                    raise ConfigError(f"--swap-act {cfg.swap_act}: model {cfg.model!r} with act {cfg.act!r} has no "
                                      "activation module to swap (ReLU, ReLU6, HardSwish, SiLU, GELU, LeakyReLU, "
                                      "PReLU)")
                model_config["swap"] = {"act": cfg.swap_act, "targets": report_targets()}
                errors = [r.fit_error for r in report.swapped if r.fit_error is not None]
                self.info.update(swap_act=cfg.swap_act, init=cfg.swap_init, swapped=len(report.swapped),
                                 fit_max_error=max(errors) if errors else None)
        self.frozen_norms = self._freeze(model)
        self.info.update(train_only=cfg.train_only, params=sum(p.numel() for p in model.parameters()),
                         trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad))

    def _freeze(self, model: nn.Module) -> list[nn.Module]:
        if self.cfg.train_only is None:
            return []
        try:
            return train_only(model, self.cfg.train_only)
        except ValueError as exc:
            raise ConfigError(f"--train-only {self.cfg.train_only}: {exc}") from None

    def check_annealing(self, model: nn.Module) -> None:
        """Refuse ``--train-only`` whose every trainable parameter sits in an activation annealed into the
        identity before the last epoch (``--anneal-acts START:END``, END < epochs): after END nothing trains."""
        cfg = self.cfg
        if cfg.train_only is None or not cfg.anneal_acts:
            return
        from ..activations.anneal import annealed_modules
        from .anneal import parse_window

        end = parse_window(cfg.anneal_acts)[1]
        inside = {id(p) for _, m in annealed_modules(model) for p in m.parameters()}
        trainable = [p for p in model.parameters() if p.requires_grad]
        if end < cfg.epochs and all(id(p) in inside for p in trainable):
            raise ConfigError(f"--train-only {cfg.train_only} with --anneal-acts {cfg.anneal_acts}: every parameter it "
                              f"trains is in an annealed activation, the identity from epoch {end:g} on, so epochs "
                              f"{end:g} to {cfg.epochs} would train nothing; end the annealing at --epochs "
                              f"({str(cfg.anneal_acts).split(':')[0]}:{cfg.epochs}) or train the BatchNorms too (acts,bn)")

    def train_modes(self) -> None:
        """After ``model.train()``: frozen BatchNorms back to eval mode."""
        for m in self.frozen_norms:
            m.eval()

    def evaluate_start(self, model: nn.Module, objective, val_loader, device, env, cfg: TrainConfig) -> None:
        """Top-1 of the pretrained model (before the swap) and of the model before its first step."""
        if not self.info.get("weights"):
            return
        limit = cfg.limit_val_batches or cfg.limit_batches
        start = objective.score(objective.evaluate(model, val_loader, device, env, cfg.amp, limit))
        before = start
        if self.pretrained is not None:
            self.pretrained.to(device)
            before = objective.score(objective.evaluate(self.pretrained, val_loader, device, env, cfg.amp, limit))
            self.pretrained = None
        self.info.update(pretrained_acc1=before, start_acc1=start)

    def write(self, folder: Path) -> None:
        """``finetune.json`` in the run folder (a new run with --weights only)."""
        if self.info.get("weights"):
            from ..checkpoint import atomic_write_text

            atomic_write_text(Path(folder) / "finetune.json", json.dumps(self.info, indent=2) + "\n")


def train_only(model: nn.Module, parts: str = "acts") -> list[nn.Module]:
    """Leave trainable only the activations' parameters (``"acts"``), or those and the BatchNorms'
    (``"acts,bn"``); every other parameter gets ``requires_grad=False``. Returns the BatchNorms whose
    statistics stay frozen: put them back in eval mode after each ``model.train()`` (none with ``bn``).
    ``ValueError`` for other parts, or a model with no activation parameters."""
    chosen = _train_only_parts(str(parts))
    from .optim import activation_modules

    acts = [m for _, m in activation_modules(model)]
    keep = {id(p) for m in acts for p in m.parameters()}
    if not keep:
        raise ValueError("the model has no activation parameters to train (swap in a learnable activation first, "
                         "e.g. repact or pau)")
    inside = {id(s) for m in acts for s in m.modules()}  # RepAct-III's own BatchNorm is an activation's
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in inside]
    if "bn" in chosen:
        keep |= {id(p) for m in norms for p in m.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return [] if "bn" in chosen else norms


def report_targets() -> list[str]:
    from ..surgery import DEFAULT_TARGETS

    return [t.__name__ for t in DEFAULT_TARGETS]
