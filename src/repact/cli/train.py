"""``repact train``: train one model (also under ``torchrun --nproc_per_node N -m repact train``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_parser", "add_train_options", "check_tensorboard", "explicit_options", "run"]

S = argparse.SUPPRESS


def _kv(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as a YAML scalar (``width=16``, ``small_input=true``)."""
    import yaml

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    try:
        return k.strip(), yaml.safe_load(v)
    except yaml.YAMLError:
        return k.strip(), v


def add_train_options(p: argparse.ArgumentParser, *, grid: bool = False) -> None:
    """The training options shared by ``train`` and ``compare`` (defaults live in TrainConfig;
    only flags given on the command line override the YAML file and the recipe)."""
    g = p.add_argument_group("what to train" if not grid else "training options for every run")
    g.add_argument("--task", default=S, help="classification (default), detection (--dataset voc) or segmentation "
                   "(--dataset voc_seg); the task sets the default model, loss and metrics")
    if not grid:
        g.add_argument("--model", default=S, help="model name (repact.models.list_models(); default small_cnn)")
        g.add_argument("--act", default=S, help="activation name (repact acts; default repact = RepAct-I; "
                       "'default' keeps the model's own)")
        g.add_argument("--dataset", default=S, help="digits (default), mnist, fashion_mnist, cifar10, cifar100, "
                       "imagefolder, imagenet100; voc (detection), voc_seg (segmentation)")
        g.add_argument("--seed", type=int, default=S, help="random seed (default 0)")
        g.add_argument("--out", default=S, help="run folder (default runs/<dataset>-<model>-<act>-s<seed>)")
    g.add_argument("--model-kw", dest="model_kwargs", action="append", type=_kv, default=S, metavar="KEY=VALUE",
                   help="extra model builder argument (repeatable), e.g. width=16")
    g.add_argument("--data-dir", default=S, help="dataset folder (default ./data; not used by digits; for detection and "
                   "segmentation the VOC-format root, or a VOCdevkit holding VOC2007/VOC2012)")
    t = p.add_argument_group("detection and segmentation")
    t.add_argument("--weights", default=S, metavar="PATH", help="local weights file: a MobileNetV3-Large backbone "
                   "(keys features.*) or the whole task model; nothing is downloaded")
    t.add_argument("--swap-heads", action="store_true", default=S, help="also swap the activations of the task's "
                   "heads (default: the backbone's only)")
    t.add_argument("--classes", default=S, help="voc (the 20 VOC classes, default), auto (detection: the names found "
                   "in the train split's annotations), or names separated by commas (segmentation: in pixel-value "
                   "order, the background first)")
    t.add_argument("--year", default=S, help="VOC2007 / VOC2012 inside a VOCdevkit (default: the one found)")
    t.add_argument("--data-kw", dest="data_kwargs", action="append", type=_kv, default=S, metavar="KEY=VALUE",
                   help="extra data option (repeatable): keep_difficult=true, train_split=trainval, "
                   "val_split=test, resize=short (detection)")
    g.add_argument("--download", action="store_true", default=S, help="download mnist/fashion_mnist/cifar (online)")
    g.add_argument("--img-size", type=int, default=S, help="input size (default: the dataset's own)")
    g.add_argument("--augment", default=S, help="auto (default), none, crop-flip, imagenet, repact-paper")
    g.add_argument("--train-subset", type=int, default=S, help="train on a fixed class-balanced subset of N images")
    g.add_argument("--cache", default=S, choices=("auto", "on", "off"), help="decode image folders once into a "
                   "memory-mapped cache: auto (default: when it fits in half the free memory), on, off")
    g.add_argument("--skip-bad-images", action="store_true", default=S, help="leave unreadable images out (counted) "
                   "instead of stopping on the first")
    h = p.add_argument_group("optimization")
    h.add_argument("--recipe", default=S, help="preset: repact-paper (150 epochs, batch 32, SGD 0.01 cosine, "
                   "wd 4e-4, label smoothing 0.1, 224 px paper augmentation)")
    h.add_argument("--epochs", type=int, default=S, help="epochs (default 10)")
    h.add_argument("--batch-size", type=int, default=S, help="batch size per process (default 64)")
    h.add_argument("--eval-batch-size", type=int, default=S, help="validation batch size (default 2x batch size)")
    h.add_argument("--optimizer", default=S, help="sgd (default), adamw, adam")
    h.add_argument("--lr", type=float, default=S, help="peak learning rate (default 0.05)")
    h.add_argument("--min-lr", type=float, default=S, help="final learning rate of cosine/linear (default 0)")
    h.add_argument("--momentum", type=float, default=S, help="SGD momentum (default 0.9)")
    h.add_argument("--nesterov", action="store_true", default=S, help="Nesterov momentum")
    h.add_argument("--schedule", default=S, help="cosine (default), linear, step, constant; evaluated per step")
    h.add_argument("--warmup-epochs", type=float, default=S, help="linear warmup length in epochs (default 0)")
    h.add_argument("--step-size", type=int, default=S, help="epochs between decays of the step schedule (30)")
    h.add_argument("--gamma", type=float, default=S, help="decay factor of the step schedule (0.1)")
    h.add_argument("--weight-decay", type=float, default=S, help="weight decay of conv/linear weights (default "
                   "5e-4); never applied to activation parameters, biases or norms")
    h.add_argument("--label-smoothing", type=float, default=S, help="label smoothing (default 0)")
    h.add_argument("--bn-momentum", type=float, default=S, help="momentum of every BatchNorm's running statistics, "
                   "e.g. 0.1 for all models alike (default: the model's own; torchvision's MobileNetV3 uses 0.01)")
    h.add_argument("--grad-clip", type=float, default=S, help="clip the gradient norm to this value")
    a = p.add_argument_group("annealing activations into the identity (then repact deploy --merge)")
    a.add_argument("--anneal-acts", default=S, metavar="START:END", help="move every annealed activation "
                   "(1 - lam) act(x) + lam x from lam 0 at epoch START to lam 1 at epoch END (vanillanet_mini has "
                   "them built in; other models: --anneal-include)")
    a.add_argument("--anneal-schedule", default=S, choices=("linear", "cosine"), help="lam's path (default linear)")
    a.add_argument("--anneal-by", default=S, choices=("model", "layer"), help="model: one window for all (default); "
                   "layer: the window cut into one slice per layer, first layer first")
    a.add_argument("--anneal-include", default=S, metavar="REGEX", help="anneal the activation modules whose path "
                   "matches REGEX (re.search), e.g. 'classifier' or '.' for every one")
    r = p.add_argument_group("running")
    r.add_argument("--config", default=None, help="YAML file of options (flags given here override it)")
    r.add_argument("--amp", action="store_true", default=S, help="mixed precision (CUDA only)")
    r.add_argument("--device", default=S, help="auto (default), cpu, cuda, cuda:N")
    r.add_argument("--deterministic", action="store_true", default=S, help="deterministic algorithms (slower)")
    r.add_argument("--workers", type=int, default=S, help="data loader worker processes (default 0)")
    r.add_argument("--limit-batches", type=int, default=S, help="at most this many train (and val) batches per epoch")
    r.add_argument("--limit-val-batches", type=int, default=S, help="at most this many val batches per epoch")
    r.add_argument("--sync-bn", action="store_true", default=S, help="synchronized BatchNorm under DDP")
    r.add_argument("--quiet", action="store_true", default=S, help="no progress bar; one line per epoch")
    r.add_argument("--tensorboard", action="store_true", default=S, help="also log scalars and the activation "
                   "shapes to tensorboard/ in the run folder (needs tensorboard: pip install 'repact[tensorboard]')")


_NOT_CONFIG = {"command", "func", "config", "resume", "overwrite", "acts", "models", "datasets", "seeds", "baseline",
               "metric", "grid", "json"}


def explicit_options(args: argparse.Namespace) -> dict[str, Any]:
    """TrainConfig keys given on the command line (flags left out are absent from the namespace)."""
    out = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}
    for key in ("model_kwargs", "data_kwargs"):
        if key in out:
            out[key] = dict(out[key])
    return out


def check_tensorboard(values: dict[str, Any]) -> None:
    """``--tensorboard`` (a flag, or ``tensorboard: true`` in a config or grid file) asked for logs that
    need the tensorboard package: without it, a one-line error before any training."""
    from . import CLIError

    if not values.get("tensorboard"):
        return
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        raise CLIError("--tensorboard needs the tensorboard package, which is not installed: pip install "
                       "'repact[tensorboard]', or leave out --tensorboard") from None


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train a model (any activation x model x dataset)",
        description="Train a classifier, a detector (--task detection) or a segmenter (--task segmentation). "
                    "Options come from defaults, then --recipe, then --config FILE, then flags. "
                    "The run folder gets config.yaml, metrics.csv/jsonl, act_params.jsonl, last/best checkpoints and "
                    "summary.json. Under torchrun it trains with DDP (batch size per process).")
    add_train_options(p)
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="RUN_OR_CHECKPOINT",
                   help="continue a run from its last checkpoint, in the folder named here (a run folder or "
                        "checkpoint; alone: --out's folder); with --out OTHER, continue a copy of it there")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in --out (kept intact until the new run's first checkpoint)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..train import TrainingDiverged, config_for_resume, load_config_file, resolve_config, train
    from . import CLIError

    overrides = explicit_options(args)
    file_values = load_config_file(args.config) if args.config else {}
    check_tensorboard({**file_values, **overrides})
    if args.resume is not None and args.overwrite and (args.resume == "auto" or "out" not in overrides):
        raise CLIError("--resume continues a run in its folder and --overwrite replaces a run; give one of them "
                       "(--resume RUN --out OTHER --overwrite continues a copy of RUN in OTHER, replacing OTHER)")
    try:
        if args.resume is not None:
            cfg = config_for_resume(args.resume, {**file_values, **overrides}, out=overrides.get("out"))
            result = train(cfg, resume=args.resume, overwrite=args.overwrite, keep_model=False)
        else:
            cfg = resolve_config(file_values, overrides)
            result = train(cfg, overwrite=args.overwrite, keep_model=False)
    except TrainingDiverged as exc:
        print(f"repact train: stopped: {exc}", file=sys.stderr)
        return 1
    s = result.summary
    if s and s.get("task", "classification") != "classification":
        from ..train.objective import METRIC_LABELS

        main, *rest = [k for k in ("map50", "map", "miou", "pixel_acc") if k in s]
        more = f" ({METRIC_LABELS[rest[0]]} {s[rest[0]]:.2f}%)" if rest else ""
        print(f"best epoch {s['best_epoch']}: {METRIC_LABELS[main]} {s[main]:.2f}%{more}  |  last epoch "
              f"{s['last_epoch']}: {METRIC_LABELS[main]} {s['last_' + main]:.2f}%")
    elif s:
        print(f"best epoch {s['best_epoch']}: top-1 {s['best_acc1']:.2f}%  |  last epoch {s['last_epoch']}: "
              f"top-1 {s['last_acc1']:.2f}% (top-5 {s['last_acc5']:.2f}%)")
        print(f"run folder: {result.run_dir} (summary.json, metrics.csv, act_params.jsonl, last/best checkpoints)")
    return 0
