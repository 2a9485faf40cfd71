"""Shared by ``repact deploy``, ``bench`` and ``verify``: the CHECKPOINT_OR_MODEL argument and shape flags."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from . import CLIError

__all__ = ["add_model_flags", "add_shape_flags", "build_named", "load_target", "input_shape_of", "parse_model_args",
           "probe_input", "run_checkpoint", "MAX_INPUT_ELEMENTS"]

#: most elements the random check inputs of verify/deploy may hold (batch included): 2^28 floats = 1 GiB
MAX_INPUT_ELEMENTS = 2**28


def add_model_flags(p) -> None:
    p.add_argument("--act", default=None, help="activation for a model name (e.g. repact, repact_bn, acon_c); "
                                               "a checkpoint records its own")
    p.add_argument("--num-classes", type=int, default=1000, help="classes of a model built by name (default 1000)")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="builder keyword for a model name, e.g. small_input=true or convention=standard (repeatable)")


def add_shape_flags(p) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--input-shape", type=int, nargs="+", metavar="N", help="one sample's shape, e.g. 3 224 224")
    g.add_argument("--image-size", type=int, metavar="N",
                   help="square N x N input with the model's own channel count (3 for RGB models, 1 for small_cnn)")


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


def run_checkpoint(text: str) -> Path:
    """The checkpoint a path names: a run folder's best checkpoint (else its last), or the path itself."""
    from ..checkpoint import checkpoint_paths

    p = Path(text)
    if p.is_dir():
        for name in ("best", "last"):
            if checkpoint_paths(p / name)[0].exists():
                return p / name
        raise CLIError(f"{p} holds no best or last checkpoint (expected best.safetensors or last.safetensors in a "
                       "run folder written by repact train)")
    return p


def _is_checkpoint(target: str) -> bool:
    from ..checkpoint import checkpoint_paths

    p = Path(target)
    if p.suffix in (".safetensors", ".json") or p.exists():
        return True
    return checkpoint_paths(p)[0].exists()


def load_target(args) -> tuple[Any, dict[str, Any], str]:
    """(model, model_config, description) for CHECKPOINT_OR_MODEL; nothing is unpickled."""
    from ..checkpoint import build_model, load_checkpoint
    from ..models import get_model_spec

    target = args.target
    if _is_checkpoint(target):
        if args.act is not None or args.model_arg:
            raise CLIError(f"{target} is a checkpoint, which records its own model and activation; "
                           "--act and --model-arg apply to model names only")
        ckpt = load_checkpoint(run_checkpoint(target))
        model = build_model(ckpt)
        return model, dict(ckpt.model_config), f"checkpoint {ckpt.path}"
    try:
        get_model_spec(target)
    except ValueError as exc:
        raise CLIError(f"{target!r} is neither a checkpoint file (no {target}.safetensors) nor a registered model "
                       f"name. {exc}") from None
    kwargs = parse_model_args(args.model_arg)
    model = build_named(target, args.act, args.num_classes, kwargs)
    cfg = {"name": target, "act": args.act, "num_classes": args.num_classes, "kwargs": kwargs}
    act = args.act if args.act is not None else "its own activations"
    return model, cfg, f"model {target} with {act} (random weights)"


def _first_layer(model) -> Any:
    """The first convolution or linear layer in registration order (the stem, for the models here)."""
    from torch import nn

    for m in model.modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            return m
    return None


def _default_shape(model, cfg: dict[str, Any]) -> list[int] | None:
    """One sample's shape for a model built by name: channels from its first layer, the size its family uses."""
    from torch import nn

    first = _first_layer(model)
    if first is None:
        return None
    if isinstance(first, nn.Linear):
        return [int(first.in_features)]
    channels = int(first.in_channels)
    size = None
    pcfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)  # timm models
    if isinstance(pcfg, dict) and len(pcfg.get("input_size") or ()) == 3:
        size = int(pcfg["input_size"][-1])
    if size is None:
        from ..models import get_model_spec

        small = cfg.get("name") and get_model_spec(cfg["name"]).family == "small"
        size = 32 if small else 224
    spatial = first.weight.dim() - 2
    return [channels] + [size] * spatial


def build_named(name: str, act: Any, num_classes: int, kwargs: dict[str, Any]):
    """``create_model``, with impossible builder arguments (``width=-5``) as one ``CLIError``, and a model
    whose weights would not fit in memory (counted on the meta device) refused before it is built."""
    import torch

    from ..models import create_model
    from ..models.checks import ModelTooLarge, check_model_fits

    try:
        check_model_fits(name, act, num_classes, kwargs, torch.device("cpu"), bytes_per_param=4,
                         purpose="its weights need about {gib} GiB")
        return create_model(name, act=act, num_classes=num_classes, **kwargs)
    except ModelTooLarge as exc:
        raise CLIError(f"{exc}; choose smaller --model-arg values") from None
    except (RuntimeError, TypeError, OverflowError) as exc:
        given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "its defaults"
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CLIError(f"cannot build {name} with {given} (act={act!r}, num_classes={num_classes}): {line}") from None


def input_shape_of(args, cfg: dict[str, Any], model=None, batch: int | None = None) -> list[int]:
    """One sample's shape: --input-shape, --image-size (with the model's channels), the checkpoint's
    recorded shape, or inferred from the model's first layer."""
    inferred = _default_shape(model, cfg) if model is not None else None
    if getattr(args, "input_shape", None):
        shape = list(args.input_shape)
    elif getattr(args, "image_size", None):
        channels = cfg.get("input_shape", [None])[0] if cfg.get("input_shape") else None
        channels = channels or (inferred[0] if inferred and len(inferred) == 3 else 3)
        shape = [int(channels), args.image_size, args.image_size]
    elif cfg.get("input_shape"):
        shape = [int(s) for s in cfg["input_shape"]]
    elif inferred:
        shape = inferred
    else:
        raise CLIError(f"cannot tell the input shape of model {cfg.get('name', '?')!r} (no convolution or linear "
                       "layer found); pass --input-shape with one sample's shape, e.g. --input-shape 3 224 224")
    if any(s < 1 for s in shape):
        raise CLIError(f"input shape sizes must be positive, got {shape}")
    batch = max(int(batch or getattr(args, "batch", 1) or 1), 1)
    numel = batch * math.prod(shape)
    if numel > MAX_INPUT_ELEMENTS:
        raise CLIError(f"--batch {batch} x input shape {shape} is {numel:,} elements ({numel * 4 / 2**30:.1f} GiB of "
                       f"float32); at most {MAX_INPUT_ELEMENTS:,} are allowed: use a smaller --input-shape or --batch")
    return shape


def probe_input(model, shape: list[int], what: str) -> None:
    """One eval-mode forward of a single random sample (builds lazy activations); ``CLIError`` naming the
    shape and what the model's first layer takes when the model does not run on it."""
    import torch

    from .._modes import eval_mode

    try:
        with eval_mode(model), torch.no_grad():
            model(torch.randn(1, *shape))
    except (RuntimeError, ValueError, IndexError) as exc:
        first = _first_layer(model)
        takes, example = "", "3 224 224"
        if first is not None and hasattr(first, "in_channels"):
            takes = f"; its first layer takes {first.in_channels} channel(s)"
            example = " ".join(str(s) for s in [first.in_channels, *(shape[1:] if len(shape) > 1 else [32, 32])])
        elif first is not None:
            takes, example = f"; its first layer takes {first.in_features} feature(s)", str(first.in_features)
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CLIError(f"{what} does not run on input shape {tuple(shape)}{takes} ({line}); pass --input-shape "
                       f"with one sample's shape, e.g. --input-shape {example}") from None
