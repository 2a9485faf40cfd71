"""Shared by ``repact deploy``, ``bench`` and ``verify``: the CHECKPOINT_OR_MODEL argument and shape flags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import CLIError

__all__ = ["add_model_flags", "add_shape_flags", "load_target", "input_shape_of", "parse_model_args"]


def add_model_flags(p) -> None:
    p.add_argument("--act", default=None, help="activation for a model name (e.g. repact, repact_bn, acon_c); "
                                               "a checkpoint records its own")
    p.add_argument("--num-classes", type=int, default=1000, help="classes of a model built by name (default 1000)")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="builder keyword for a model name, e.g. small_input=true or convention=standard (repeatable)")


def add_shape_flags(p) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--input-shape", type=int, nargs="+", metavar="N", help="one sample's shape, e.g. 3 224 224")
    g.add_argument("--image-size", type=int, metavar="N", help="square RGB input N x N (same as --input-shape 3 N N)")


def parse_model_args(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item or not item.split("=", 1)[0]:
            raise CLIError(f"--model-arg {item!r} must look like KEY=VALUE (e.g. small_input=true)")
        key, raw = item.split("=", 1)
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _is_checkpoint(target: str) -> bool:
    from ..checkpoint import checkpoint_paths

    p = Path(target)
    if p.suffix in (".safetensors", ".json") or p.exists():
        return True
    return checkpoint_paths(p)[0].exists()


def load_target(args) -> tuple[Any, dict[str, Any], str]:
    """(model, model_config, description) for CHECKPOINT_OR_MODEL; nothing is unpickled."""
    from ..checkpoint import build_model, load_checkpoint
    from ..models import create_model, get_model_spec

    target = args.target
    if _is_checkpoint(target):
        if args.act is not None or args.model_arg:
            raise CLIError(f"{target} is a checkpoint, which records its own model and activation; "
                           "--act and --model-arg apply to model names only")
        ckpt = load_checkpoint(target)
        model = build_model(ckpt)
        return model, dict(ckpt.model_config), f"checkpoint {ckpt.path}"
    try:
        get_model_spec(target)
    except ValueError as exc:
        raise CLIError(f"{target!r} is neither a checkpoint file (no {target}.safetensors) nor a registered model "
                       f"name. {exc}") from None
    kwargs = parse_model_args(args.model_arg)
    model = create_model(target, act=args.act, num_classes=args.num_classes, **kwargs)
    cfg = {"name": target, "act": args.act, "num_classes": args.num_classes, "kwargs": kwargs}
    act = args.act if args.act is not None else "its own activations"
    return model, cfg, f"model {target} with {act} (random weights)"


def input_shape_of(args, cfg: dict[str, Any]) -> list[int]:
    if getattr(args, "input_shape", None):
        shape = list(args.input_shape)
    elif getattr(args, "image_size", None):
        shape = [3, args.image_size, args.image_size]
    elif cfg.get("input_shape"):
        shape = [int(s) for s in cfg["input_shape"]]
    else:
        shape = [3, 224, 224]
    if any(s < 1 for s in shape):
        raise CLIError(f"input shape sizes must be positive, got {shape}")
    return shape
