"""RNG state capture/restore and the run folder's checkpoints (``last``, ``best``)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import CheckpointError, check_model_config, check_weights_finite, checkpoint_paths, load_checkpoint

__all__ = ["seed_all", "capture_rng", "restore_rng", "resolve_resume", "locate_resume", "check_train_state",
           "check_data_classes"]


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


def resolve_resume(resume: str | Path, out: str | Path | None = None):
    """Load the checkpoint to resume from: a run folder (its ``last``), or a checkpoint file/stem.

    Returns ``(checkpoint, run_dir)`` where ``run_dir`` is the folder as the caller named it (not
    the one recorded inside the checkpoint). Raises :class:`CheckpointError` naming the path when
    there is nothing to resume or the checkpoint holds no usable training state.
    """
    ckpt = load_checkpoint(locate_resume(resume, out))
    check_train_state(ckpt)
    return ckpt, ckpt.path.parent


def locate_resume(resume: str | Path, out: str | Path | None = None) -> Path:
    """The checkpoint stem ``--resume`` names: a run folder's ``last``, or a checkpoint file/stem
    (``auto``: the folder ``out``)."""
    p = Path(resume) if str(resume) not in ("auto", "") else None
    if p is None:
        if out is None:
            raise CheckpointError("--resume without a path needs --out naming the run folder to continue")
        p = Path(out)
    if not p.is_dir():
        return p
    stem = p / "last"
    if not checkpoint_paths(stem)[0].exists():
        raise CheckpointError(f"cannot resume: run folder {p} has no last checkpoint ({stem}.safetensors); it never "
                              f"finished an epoch, so nothing is lost: start it afresh with repact train --out {p} "
                              "(without --resume)")
    return stem


#: the training state a resumable checkpoint holds, and the JSON types of its entries
_STATE_TYPES: dict[str, tuple[type, ...]] = {
    "epoch": (int,), "best_score": (int, float), "best_epoch": (int,), "history": (list,), "optimizer": (dict,),
    "scheduler": (dict,), "config": (dict,), "rng": (dict, list),
}


def check_train_state(ckpt) -> None:
    """Refuse (naming the file) a checkpoint whose training state is missing, of the wrong types, or
    whose weights are not finite."""
    check_model_config(ckpt.model_config, ckpt.path)
    st = ckpt.state
    if not isinstance(st, dict) or "optimizer" not in st or "config" not in st:
        raise CheckpointError(f"{ckpt.path} holds weights only, not a training state; resume needs a run's "
                              "'last' (or 'best') checkpoint written by repact train")
    if "best_score" not in st and "best_acc1" in st:  # written before the tasks: the best top-1
        st["best_score"] = st["best_acc1"]
    for key, types in _STATE_TYPES.items():
        v = st.get(key)
        if not isinstance(v, types) or isinstance(v, bool):
            want = " or ".join(t.__name__ for t in types)
            raise CheckpointError(f"{ckpt.path}: its training state's {key!r} is {_kind(v)}, not a {want}; the file "
                                  "is damaged or was not written by repact train")
    if st["epoch"] < 0 or st["best_epoch"] < 0:
        raise CheckpointError(f"{ckpt.path}: its training state's epoch {st['epoch']} is negative")
    if not all(isinstance(h, dict) for h in st["history"]):
        raise CheckpointError(f"{ckpt.path}: its training state's 'history' holds something other than records")
    if st.get("scaler") is not None and not isinstance(st["scaler"], dict):
        raise CheckpointError(f"{ckpt.path}: its training state's 'scaler' is {_kind(st['scaler'])}, not a dict")
    _check_config_kwargs(ckpt)
    check_weights_finite(ckpt)


def _check_config_kwargs(ckpt) -> None:
    """The training config's builder keywords, as the model config's are checked (those that fetch
    weights aside: a resumed model is built without them)."""
    from ..models.checks import FETCHING, check_recorded_kwargs

    cfg = ckpt.state["config"]
    kwargs = cfg.get("model_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{ckpt.path}: its training config's model_kwargs is {_kind(kwargs)}, not a dict")
    try:
        check_recorded_kwargs(str(cfg.get("model")), {k: v for k, v in kwargs.items() if k not in FETCHING})
    except ValueError as exc:
        raise CheckpointError(f"{ckpt.path}: its training config is refused: {exc}") from None


def _kind(v: Any) -> str:
    return "missing" if v is None else f"a {type(v).__name__}"


def check_data_classes(ckpt, classes: list[str], where: str) -> None:
    """Refuse data whose class names (``classes``, in label order) differ from those the checkpoint was
    trained on, naming both lists and the first difference (``where`` names the data). A checkpoint
    that records no names passes (its class count is checked by the caller)."""
    data = ckpt.state.get("data") if isinstance(ckpt.state, dict) else None
    recorded = data.get("classes") if isinstance(data, dict) else None
    if not recorded:
        recorded = (ckpt.model_config.get("preprocess") or {}).get("classes")
    recorded, found = [str(c) for c in recorded or []], [str(c) for c in classes]
    if not recorded or not found or recorded == found:
        return
    i = next(i for i, (a, b) in enumerate(zip([*recorded, None], [*found, None])) if a != b)
    there = repr(recorded[i]) if i < len(recorded) else "none"
    here = repr(found[i]) if i < len(found) else "none"
    raise CheckpointError(f"{ckpt.path} was trained on {len(recorded)} classes ({_shown(recorded)}) but {where} has "
                          f"{len(found)} ({_shown(found)}); they differ first at label {i}: {there} in the checkpoint, "
                          f"{here} in the data. Use the data it was trained on")


def _shown(names: list[str], most: int = 8) -> str:
    return ", ".join(names[:most]) + (f", ... ({len(names) - most} more)" if len(names) > most else "")
