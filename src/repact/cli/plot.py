"""``repact plot act|layers|evolution|features|grads``: the pictures of ``repact.analysis``, one command each."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["add_parser", "add_output_flags", "load_model_arg", "write_figure"]


def add_output_flags(p: argparse.ArgumentParser, stem: str) -> None:
    p.add_argument("--out", default=None, metavar="F", help=f"picture file (default {stem}.png); its suffix or "
                   "--format chooses png, svg or pdf")
    p.add_argument("--format", default=None, choices=("png", "svg", "pdf"), help="picture format (default: --out's "
                   "suffix, else png)")
    p.add_argument("--dpi", type=int, default=110, help="resolution of a png (default 110)")


def _range_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--range", nargs=2, type=float, default=(-6.0, 6.0), metavar=("LO", "HI"),
                   help="x range of the curves (default -6 6)")


def add_parser(sub) -> None:
    from ._model_arg import add_model_flags
    from .train import _kv

    p = sub.add_parser(
        "plot", help="draw activations, a model's layers, their evolution, feature maps, gradient magnitudes",
        description="Pictures of activations and runs (matplotlib, Agg backend, CPU). Each is also a Python "
                    "function in repact.analysis returning the figure and the numbers behind it.")
    kinds = p.add_subparsers(dest="what", metavar="WHAT", parser_class=type(p))
    kinds.required = True

    a = kinds.add_parser("act", help="curve and derivative of registered activations, overlaid",
                         description="f(x) and f'(x) (autograd) of each named activation, overlaid; knots of "
                                     "piecewise forms marked. --param sets a constructor option (variant=bn, "
                                     "beta_init=2) or a tensor's values (branch_weight=[1,0,0,0]).")
    a.add_argument("names", nargs="+", metavar="NAME", help="activation names (repact acts lists them)")
    a.add_argument("--param", action="append", type=_kv, default=[], metavar="KEY=VALUE",
                   help="option or tensor value for every NAME (repeatable)")
    _range_flag(a)
    a.add_argument("--points", type=int, default=1201, help="grid points, 2 to 100,000 (default 1201, plus the "
                   "knots)")
    add_output_flags(a, "act")
    a.set_defaults(func=_act)

    ly = kinds.add_parser("layers", help="every activation layer's learned function, and RepAct branch weights",
                          description="Every activation layer of a run's model (its best checkpoint, else last), a "
                                      "checkpoint, or a model built by name, in network order: f and f' per layer "
                                      "with HardSwish dashed, and a heatmap of RepAct's branch weights (softmaxed "
                                      "for RepAct-II).")
    ly.add_argument("target", metavar="RUN_OR_CHECKPOINT_OR_MODEL")
    add_model_flags(ly)
    _range_flag(ly)
    add_output_flags(ly, "layers")
    ly.set_defaults(func=_layers)

    ev = kinds.add_parser("evolution", help="the learned shapes over epochs, from a run's recorded parameters",
                          description="Per layer the curve of every epoch (colour ramp), from act_params.jsonl, and a "
                                      "depth x epoch heatmap of the slope left of 0, f(0) - f(-1).")
    ev.add_argument("run", metavar="RUN")
    _range_flag(ev)
    add_output_flags(ev, "evolution")
    ev.set_defaults(func=_evolution)

    fe = kinds.add_parser("features", help="feature maps before/after an activation and its input histogram",
                          description="The top-k channels (by energy of the activation's input) before and after "
                                      "the layer, for one image preprocessed as the checkpoint records, and the "
                                      "histogram of the layer's inputs with its knots and the share per segment.")
    fe.add_argument("target", metavar="RUN_OR_CHECKPOINT_OR_MODEL")
    fe.add_argument("image", metavar="IMAGE")
    fe.add_argument("--layer", default=None, metavar="PATH", help="module path of the activation (default: the first)")
    fe.add_argument("--top-k", type=int, default=8, help="channels shown (default 8)")
    fe.add_argument("--image-size", type=int, default=None, help="input size, 1 to 4096 (default: the checkpoint's, "
                    "or 224)")
    add_model_flags(fe)
    add_output_flags(fe, "features")
    fe.set_defaults(func=_features)

    gr = kinds.add_parser("grads", help="mean |gradient| of the first/last conv and BN weights, runs overlaid",
                          description="Gradient magnitudes over training from each run's grads.jsonl (every few "
                                      "steps) or, for older runs, the per-epoch means in metrics.jsonl.")
    gr.add_argument("runs", nargs="+", metavar="RUN")
    gr.add_argument("--labels", default=None, help="comma-separated legend labels, one per run (default: folder names)")
    add_output_flags(gr, "grads")
    gr.set_defaults(func=_grads)


def write_figure(fig, args, stem: str) -> Path:
    from ..analysis.figures import output_path, save_figure

    path, fmt = output_path(args.out, args.format, stem)
    return save_figure(fig, path, fmt, dpi=args.dpi)


def _check_output(args, stem: str) -> None:
    """The flags of a picture command that fail before any work: --out, --dpi, --image-size, the image files."""
    from ..analysis.figures import output_path
    from ..analysis.preprocess import check_image_file
    from ..train.config import img_size_problem

    output_path(args.out, args.format, stem)  # a bad --out fails before any work
    if not 10 <= args.dpi <= 1200:
        raise ValueError(f"--dpi must lie in [10, 1200], got {args.dpi}")
    if img_size_problem(getattr(args, "image_size", None)):
        raise ValueError(f"--image-size {img_size_problem(args.image_size)}")
    images = getattr(args, "images", None) or ([args.image] if getattr(args, "image", None) else [])
    for image in images:
        check_image_file(image)


def refuse_task_model(target: str, model_config: dict[str, Any], command: str, takes: tuple[str, ...]) -> None:
    """A one-line error where ``target`` is a detection or segmentation model that ``command`` does
    not take (``takes``: the kinds it does, e.g. ``("classification",)``)."""
    from . import CLIError
    from ._eval_task import checkpoint_task

    task = checkpoint_task(model_config) or "classification"
    if task not in takes:
        raise CLIError(f"{command} takes {' and '.join(takes)} models; {target} is a {task} model "
                       f"({model_config.get('name')}): repact plot layers draws its activations")


def load_model_arg(target: str, args) -> tuple[Any, dict[str, Any], dict[str, Any], str]:
    """(model, model_config, training state, label) for a run folder, a checkpoint or a model name."""
    from ..checkpoint import build_model, load_checkpoint
    from . import CLIError
    from ._model_arg import _is_checkpoint, load_target, run_checkpoint

    p = run_checkpoint(target)  # a run folder's best (else last) checkpoint, or the path itself
    if _is_checkpoint(str(p)):
        if getattr(args, "act", None) is not None or getattr(args, "model_arg", None):
            raise CLIError(f"{target} is a checkpoint, which records its own model and activation; "
                           "--act and --model-arg apply to model names only")
        ckpt = load_checkpoint(p)
        mc = dict(ckpt.model_config)
        return build_model(ckpt), mc, dict(ckpt.state), str(mc.get("act") or mc.get("name") or p.stem)
    ns = argparse.Namespace(target=target, act=getattr(args, "act", None), model_arg=getattr(args, "model_arg", []),
                            num_classes=getattr(args, "num_classes", 1000))
    model, cfg, _ = load_target(ns)
    return model, cfg, {}, f"{target} {cfg.get('act') or ''}".strip()


def _act(args) -> int:
    from ..analysis.curves import plot_acts

    _check_output(args, "act")
    fig, data = plot_acts(args.names, dict(args.param), args.range[0], args.range[1], args.points)
    path = write_figure(fig, args, "act")
    for c in data.curves:
        knots = ", ".join(f"{k:g}" for k in c.knots) or "none"
        print(f"{c.label}: f(0) = {c.value_at(0.0):.4f}, f(1) = {c.value_at(1.0):.4f}, knots: {knots}")
    print(f"wrote {path}")
    return 0


def _layers(args) -> int:
    from ..analysis.layers import plot_layers

    _check_output(args, "layers")
    model, _, _, label = load_model_arg(args.target, args)
    fig, data = plot_layers(model, args.range[0], args.range[1],
                            title=f"activation layers of {Path(args.target).name} ({label}): f (blue), f' (red), "
                                  "HardSwish (dashed)")
    path = write_figure(fig, args, "layers")
    print(f"{len(data.curves)} activation layers ({', '.join(sorted({c.kind for c in data.curves}))})")
    if data.branch_weights is not None:
        means = np.nanmean(data.branch_weights, axis=1)
        print("RepAct branch weights, mean over layers: "
              + ", ".join(f"{b} {v:.3f}" for b, v in zip(data.branches, means)))
    print(f"wrote {path}")
    return 0


def _evolution(args) -> int:
    from ..analysis.evolution import plot_evolution

    _check_output(args, "evolution")
    if not Path(args.run).is_dir():
        raise FileNotFoundError(f"run folder {args.run} does not exist (give a folder written by repact train)")
    fig, data = plot_evolution(args.run, lo=args.range[0], hi=args.range[1])
    path = write_figure(fig, args, "evolution")
    print(f"{len(data.layers)} layers x {len(data.epochs)} epochs (0..{data.epochs[-1]}); {data.statistic}:")
    for name, row in zip(data.layers, data.stats):
        print(f"  {name}: {row[0]:+.3f} -> {row[-1]:+.3f}")
    for name, why in data.skipped.items():
        print(f"  skipped {name}: {why}")
    print(f"wrote {path}")
    return 0


def _features(args) -> int:
    from ..analysis.features import plot_features
    from ..analysis.preprocess import load_image, preprocess_from

    _check_output(args, "features")
    model, mc, state, label = load_model_arg(args.target, args)
    refuse_task_model(args.target, mc, "repact plot features", ("classification", "segmentation"))
    img = load_image(args.image, preprocess_from(mc, state, args.image_size))
    fig, data = plot_features(model, img.tensor, args.layer, args.top_k, display=img.display,
                              title=f"{Path(args.target).name} ({label}): {Path(args.image).name}")
    path = write_figure(fig, args, "features")
    print(f"{data.layer} ({data.kind}): {data.n_inputs} input values, shape {list(data.input_shape)}")
    if data.knots:
        print("share per segment: " + ", ".join(f"{s} {100 * v:.1f}%" for s, v in zip(data.segments,
                                                                                       data.segment_shares)))
    print(f"wrote {path}")
    return 0


def _grads(args) -> int:
    from ..analysis.grads import plot_grads

    _check_output(args, "grads")
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    for r in args.runs:
        if not Path(r).is_dir():
            raise FileNotFoundError(f"run folder {r} does not exist (give folders written by repact train)")
    fig, data = plot_grads(args.runs, labels)
    path = write_figure(fig, args, "grads")
    for s in data.runs:
        vals = ", ".join(f"{k} {v[0]:.3g} -> {v[-1]:.3g}" for k, v in s.values.items())
        print(f"{s.label} ({Path(s.source).name}, {len(s.x)} points): {vals}")
    print(f"wrote {path}")
    return 0
