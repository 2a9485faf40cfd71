"""``repact cam CHECKPOINT IMAGE...``: class activation maps (grad-cam) of one or more models on image files."""

from __future__ import annotations

from pathlib import Path

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    from ..analysis.cam import CAM_METHODS
    from ._model_arg import add_model_flags
    from .plot import add_output_flags

    p = sub.add_parser(
        "cam", help="class activation maps (GradCAM and friends) of checkpoints on image files",
        description="CAMs through the grad-cam package: a grid of images x models with each model's explained "
                    "class and score. Each checkpoint knows its preprocessing (size, channels, normalization, val "
                    "resize and crop), so plain image files are enough; a model given by name uses ImageNet's. The "
                    "target layer is the last conv stage unless --layer names one; in-place activations are "
                    "switched off on a copy of the model.")
    p.add_argument("target", metavar="RUN_OR_CHECKPOINT_OR_MODEL")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--compare", nargs="+", default=[], metavar="RUN_OR_CHECKPOINT",
                   help="more models, one column each (e.g. the HardSwish run next to the RepAct run)")
    p.add_argument("--method", default="gradcam", help=f"CAM method: {', '.join(CAM_METHODS)} (default gradcam)")
    p.add_argument("--layer", default=None, metavar="PATH", help="target module path (default: the last conv stage)")
    p.add_argument("--class", dest="target_class", type=int, default=None, metavar="N",
                   help="explain class N (default: each model's predicted class)")
    p.add_argument("--image-size", type=int, default=None, help="input size, 1 to 4096 (default: the checkpoint's, "
                   "or 224)")
    add_model_flags(p)
    add_output_flags(p, "cam")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..analysis.cam import cam_grid, cam_method
    from ..analysis.preprocess import preprocess_from
    from .plot import _check_output, load_model_arg, refuse_task_model, write_figure

    _check_output(args, "cam")
    cam_method(args.method)
    models = []
    for target in [args.target, *args.compare]:
        model, mc, state, label = load_model_arg(target, args)
        refuse_task_model(target, mc, "repact cam", ("classification",))
        models.append([label, model, preprocess_from(mc, state, args.image_size), target])
    labels = [m[0] for m in models]
    for m in models:
        if labels.count(m[0]) > 1:
            m[0] = f"{m[0]} ({Path(m[3]).name})"
    fig, data = cam_grid([tuple(m[:3]) for m in models], args.images, args.method, args.layer, args.target_class)
    path = write_figure(fig, args, "cam")
    for row in data.cells:
        for cell in row:
            print(f"{Path(cell.image).name} | {cell.model}: {cell.target_name} (class {cell.target}) "
                  f"p={cell.score:.3f}, peak at {_peak(cell.cam)}, layer {cell.layer}")
    print(f"wrote {path}")
    return 0


def _peak(cam) -> str:
    import numpy as np

    r, c = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return f"row {r / cam.shape[0]:.2f}, col {c / cam.shape[1]:.2f} of the image"
