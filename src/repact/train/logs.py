"""Per-epoch run logs: metrics (CSV + JSONL, TensorBoard when installed), activation parameters,
and the mean |gradient| of the first/last conv and BN weights."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import atomic_write_text
from .optim import activation_modules

__all__ = ["RunLogger", "activation_snapshot", "GradProbe", "read_jsonl", "csv_text"]


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSONL file; a torn last line (a killed write) is skipped."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def csv_text(rows: list[dict[str, Any]]) -> str:
    """``rows`` as CSV text: one column per key in order of first appearance (a row without a key leaves
    its cell empty), dict and list values as JSON."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows([{k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in r.items()} for r in rows])
    return buf.getvalue()


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class RunLogger:
    """Appends one record per epoch to ``metrics.jsonl`` / ``act_params.jsonl`` and rewrites ``metrics.csv``."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.dir = Path(run_dir)
        self.enabled = enabled
        self._tb = None
        self._tb_epoch = 0
        if enabled:
            self.dir.mkdir(parents=True, exist_ok=True)

    @property
    def metrics_path(self) -> Path:
        return self.dir / "metrics.jsonl"

    @property
    def csv_path(self) -> Path:
        return self.dir / "metrics.csv"

    @property
    def acts_path(self) -> Path:
        return self.dir / "act_params.jsonl"

    def relocate(self, run_dir: Path) -> None:
        """Write into ``run_dir`` from now on (the run's folder was swapped into place)."""
        reopen = self._tb is not None
        self.close()
        self.dir = Path(run_dir)
        if reopen:
            self.open_tensorboard(self._tb_epoch)

    def truncate_after(self, epoch: int) -> None:
        """Drop records past ``epoch`` (left by a run killed between its logs and its checkpoint)."""
        if not self.enabled:
            return
        for path in (self.metrics_path, self.acts_path):
            if path.exists():
                keep = [r for r in read_jsonl(path) if int(r.get("epoch", 0)) <= epoch]
                atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
        self._write_csv()

    def open_tensorboard(self, start_epoch: int) -> bool:
        """Log to ``tensorboard/`` in the run folder too; False when tensorboard is not installed."""
        if not self.enabled:
            return True
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed
            return False
        self._tb = SummaryWriter(str(self.dir / "tensorboard"), purge_step=start_epoch + 1)
        self._tb_epoch = start_epoch
        return True

    def log_epoch(self, record: dict[str, Any], acts: dict[str, Any] | None) -> None:
        if not self.enabled:
            return
        with open(self.metrics_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        if acts is not None:
            with open(self.acts_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"epoch": record["epoch"], "layers": acts}) + "\n")
        self._write_csv()
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self._tb.add_scalar(k, v, record["epoch"])
            self._tb.flush()
            self._tb_epoch = int(record["epoch"])

    def log_init_acts(self, acts: dict[str, Any]) -> None:
        """Activation parameters before training (epoch 0)."""
        if self.enabled:
            atomic_write_text(self.acts_path, json.dumps({"epoch": 0, "layers": acts}) + "\n")

    def _write_csv(self) -> None:
        atomic_write_text(self.csv_path, csv_text(read_jsonl(self.metrics_path)))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


#: tensors up to this many elements are logged in full, larger ones as summary statistics
FULL_VALUES_UP_TO = 256


@torch.no_grad()
def activation_snapshot(model: nn.Module) -> dict[str, Any]:
    """``{layer: {"type": ..., tensor name: values}}`` for every activation that holds parameters or buffers."""
    out: dict[str, Any] = {}
    for name, m in activation_modules(model):
        entry: dict[str, Any] = {}
        for pname, t in [*m.named_parameters(), *m.named_buffers()]:
            if not t.is_floating_point() or pname.rsplit(".", 1)[-1].startswith("_"):
                continue  # constants such as RepAct's knot table
            flat = t.detach().float().cpu().reshape(-1)
            if flat.numel() <= FULL_VALUES_UP_TO:
                vals = flat.tolist()
                entry[pname] = vals[0] if len(vals) == 1 else vals
            else:  # large tensors (FReLU's conv, wide per-channel params): summary statistics
                entry[pname] = {"numel": flat.numel(), "mean": float(flat.mean()), "std": float(flat.std()),
                                "min": float(flat.min()), "max": float(flat.max())}
        if entry:
            out[name or "<root>"] = {"type": type(m).__name__, **entry}
    return out


class GradProbe:
    """Accumulates mean |grad| of the first/last conv and first/last BatchNorm weights over an epoch
    (activation internals excluded). Values stay on the device until :meth:`epoch_means`."""

    def __init__(self, model: nn.Module) -> None:
        inside_act = [n for n, _ in activation_modules(model)]

        def outside(n: str) -> bool:
            return not any(n == p or n.startswith(p + ".") for p in inside_act if p)

        convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd) and outside(n)]
        bns = [(n, m) for n, m in model.named_modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and outside(n)]
        self.targets: dict[str, tuple[str, torch.Tensor]] = {}
        for label, items in (("conv", convs), ("bn", bns)):
            if items:
                self.targets[f"first_{label}"] = (items[0][0], items[0][1].weight)
                self.targets[f"last_{label}"] = (items[-1][0], items[-1][1].weight)
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0

    @torch.no_grad()
    def update(self) -> dict[str, torch.Tensor]:
        """Add this step's values to the epoch's sums; returns them (device tensors)."""
        now = {}
        for key, (_, w) in self.targets.items():
            if w.grad is not None:
                v = now[key] = w.grad.detach().abs().mean().float()
                self.sums[key] = self.sums[key] + v if key in self.sums else v
        self.steps += 1
        return now

    def epoch_means(self) -> dict[str, float]:
        n = max(1, self.steps)
        return {f"grad_{k}": float(v) / n for k, v in self.sums.items()}

    def names(self) -> dict[str, str]:
        return {k: n for k, (n, _) in self.targets.items()}
