"""RNG state capture/restore and the run folder's checkpoints (``last``, ``best``)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import CheckpointError, checkpoint_paths, load_checkpoint

__all__ = ["seed_all", "capture_rng", "restore_rng", "resolve_resume", "is_run_dir"]


def seed_all(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    """The process's RNG states in a checkpoint-storable form (tensors and JSON values)."""
    py = random.getstate()
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": py[0], "state": list(py[1]), "gauss": py[2]},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), int(n["pos"]), int(n["has_gauss"]),
                         float(n["gauss"])))
    torch.set_rng_state(state["torch"].to(torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.to(torch.uint8) for t in state["cuda"]])


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` already holds a training run (config or checkpoint)."""
    return (path / "config.yaml").exists() or checkpoint_paths(path / "last")[0].exists()


def resolve_resume(resume: str | Path, out: str | Path | None = None):
    """Load the checkpoint to resume from: a run folder (its ``last``), or a checkpoint file/stem.

    Returns ``(checkpoint, run_dir)``. Raises :class:`CheckpointError` naming the path when there is
    nothing to resume or the checkpoint holds no training state.
    """
    p = Path(resume) if str(resume) not in ("auto", "") else None
    if p is None:
        if out is None:
            raise CheckpointError("--resume without a path needs --out naming the run folder to continue")
        p = Path(out)
    if p.is_dir():
        stem = p / "last"
        if not checkpoint_paths(stem)[0].exists():
            raise CheckpointError(f"cannot resume: run folder {p} has no last checkpoint ({stem}.safetensors); "
                                  "it never finished an epoch, so start it again without --resume")
    else:
        stem = p
    ckpt = load_checkpoint(stem)
    if "optimizer" not in ckpt.state or "config" not in ckpt.state:
        raise CheckpointError(f"{ckpt.path} holds weights only, not a training state; resume needs a run's "
                              "'last' (or 'best') checkpoint written by repact train")
    return ckpt, ckpt.path.parent
