"""The deploy pipeline: reparameterize, verify, export ONNX, check it, compare with onnxruntime, save.

``deploy_model(model, out_dir, ...)`` writes, only after every check has passed:

* ``NAME.onnx``: the deploy model (opset >= 17 by default, dynamic batch), checked by
  ``onnx.checker`` and run by onnxruntime against PyTorch;
* ``NAME_deploy.safetensors`` + ``NAME_deploy.json``: the deploy weights as a repact checkpoint
  whose ``model_config`` records ``"reparameterized": true`` (``repact.checkpoint.build_model``
  rebuilds the deploy architecture and loads them; nothing is unpickled);
* ``NAME_deploy_report.json``: what was checked, with the numbers.

Files are first written to a staging folder inside ``out_dir`` and moved into place at the end,
so a failed check leaves ``out_dir`` as it was. Files of a previous deploy under the same name
are replaced only with ``overwrite=True``. Weights, BatchNorm statistics and outputs that are not
finite fail the checks. A model with nothing to re-parameterize (ACON, GELU ...) and no deploy
form in it is refused unless ``allow_unfused=True``; the report lists the activations that stay
as they are either way.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .._modes import eval_mode, kept_modes
from ..activations.piecewise import PiecewiseQuadratic
from ..checkpoint import atomic_write_text, build_model, save_checkpoint
from ..merge.layers import deploy_model_config
from ..reparam import NonFiniteError, check_finite, deployable_modules, randomize_batchnorm_, reparameterize, verify
from .cost import activation_modules, count_flops, count_params
from .onnx_export import export_onnx, last_export_forms, onnx_parity

__all__ = ["DeployError", "DeployResult", "NothingToFuseError", "deploy_cost", "deploy_model", "deploy_outputs",
           "check_finite_weights", "check_fusible", "describe_activations", "export_checked", "json_ready", "publish", "refuse_existing", "save_deploy_weights", "staging_folder",
           "unfused_activations", "versions"]


class DeployError(ValueError):
    """A deploy check failed (the deploy form differs from the model, onnxruntime differs, or a
    weight or output is not finite)."""


class NothingToFuseError(ValueError):
    """The model has nothing to re-parameterize and was not re-parameterized before."""


def deploy_outputs(out_dir: str | os.PathLike, name: str = "model") -> list[Path]:
    """The files ``deploy_model`` writes into ``out_dir`` for ``name``."""
    out = Path(out_dir)
    return [out / f"{name}.onnx", out / f"{name}_deploy.safetensors", out / f"{name}_deploy.json",
            out / f"{name}_deploy_report.json"]


def refuse_existing(out: Path, name: str) -> None:
    """``FileExistsError`` when ``out`` holds files of an earlier deploy under ``name``."""
    taken = [p.name for p in deploy_outputs(out, name) if p.exists() or p.is_symlink()]
    if taken:
        raise FileExistsError(f"{out} already holds {', '.join(taken)} from an earlier deploy; pass overwrite=True "
                              "(--overwrite) to replace them, or choose another folder or name")


def unfused_activations(model: nn.Module) -> dict[str, list[str]]:
    """``type name -> paths`` of the activation modules that are not deploy forms (they stay as they are)."""
    out: dict[str, list[str]] = {}
    for path, m in activation_modules(model).items():
        if not isinstance(m, PiecewiseQuadratic):
            out.setdefault(type(m).__name__, []).append(path)
    return out


def describe_activations(acts: dict[str, list[str]], limit: int = 3) -> str:
    """``"3 x GELU (features.2, features.5, features.8)"`` for each type in ``acts``."""
    parts = []
    for kind, paths in acts.items():
        shown = ", ".join(paths[:limit]) + (", ..." if len(paths) > limit else "")
        parts.append(f"{len(paths)} x {kind} ({shown})")
    return "; ".join(parts) or "no activation modules"


@dataclass
class DeployResult:
    out_dir: Path
    onnx_path: Path
    weights_path: Path
    config_path: Path
    report_path: Path
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def verify(self) -> dict[str, Any]:
        return self.report["verify"]

    @property
    def onnx_parity(self) -> float:
        return self.report["onnx"]["parity_max_abs"]


def _prime(model: nn.Module, x: torch.Tensor) -> None:
    """One eval forward so lazy activations build their parameters."""
    with eval_mode(model), torch.no_grad():
        model(x[:1])


def json_ready(obj: Any) -> Any:
    """``obj`` as plain JSON values (anything else as its string)."""
    return json.loads(json.dumps(obj, default=lambda o: str(o)))


def deploy_model(
    model: nn.Module,
    out_dir: str | os.PathLike,
    *,
    input_shape: Sequence[int] = (3, 224, 224),
    model_config: dict[str, Any] | None = None,
    name: str = "model",
    rtol: float = 1e-5,
    parity_tol: float = 1e-4,
    opset: int = 17,
    dynamic_batch: bool = True,
    onnx_form: str = "auto",
    randomize_bn: bool = False,
    batch: int = 2,
    seed: int = 0,
    overwrite: bool = False,
    allow_unfused: bool = False,
    merge: str | None = None,
    merge_latency_rounds: int = 0,
    calibration: Sequence[torch.Tensor] | None = None,
    log: Callable[[str], None] | None = None,
) -> DeployResult:
    """Reparameterize ``model``, check it, export and save it under ``out_dir``; see the module docstring.

    Args:
        input_shape: one sample's shape (C, H, W) for the checks and the export.
        model_config: ``create_model`` arguments (``name``, ``act``, ``num_classes``, ``kwargs``)
            recorded with the deploy weights so ``build_model`` can rebuild the deploy model.
        rtol: largest accepted ``max |deploy - model| / max |model|`` of the logits.
        parity_tol: largest accepted max abs difference between PyTorch and onnxruntime.
        randomize_bn: also verify a copy whose BatchNorm statistics are randomized (a stricter
            check of the fold; the saved model keeps its own statistics).
        batch: batch size of the random check inputs (onnxruntime also runs batch 1 and batch+1).
        overwrite: replace the files of an earlier deploy under ``name`` (``FileExistsError`` otherwise).
        allow_unfused: deploy a model with nothing to re-parameterize as it is (``NothingToFuseError``
            otherwise, naming its activations).
        merge: also merge the layers that linear parts leave apart (:func:`repact.merge_linear` with
            ``when=merge``: ``"cheaper"`` or ``"always"``); the report gets its ``merge`` entry.
        merge_latency_rounds: time the deploy form before and after merging (0: not timed).
        calibration: batches on which the merge report measures which activations are linear on
            their input range (merge candidates).
        log: called with one line per step (e.g. ``print``).

    The model's train/eval mode is restored afterwards; its weights are not changed.
    """
    say = log or (lambda s: None)
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ValueError(f"name must be a plain file stem, got {name!r}")
    shape = [int(s) for s in input_shape]
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"input_shape must be positive sizes such as 3 224 224, got {list(input_shape)}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a folder")
    if not overwrite:
        refuse_existing(out, name)
    with kept_modes(model):
        merging = MergeOptions(merge, merge_latency_rounds, calibration) if merge else None
        return _deploy(model, out, shape, model_config, name, rtol, parity_tol, opset, dynamic_batch, onnx_form,
                       randomize_bn, batch, seed, overwrite, allow_unfused, say, merging)


def check_fusible(model: nn.Module, model_config: dict[str, Any] | None, allow_unfused: bool,
                  say: Callable[[str], None]) -> tuple[int, bool]:
    """(number of activations to re-parameterize, whether the model is a deploy form already).
    :class:`NothingToFuseError` for a model with neither, unless ``allow_unfused``."""
    fusible = len({id(m) for _, m in deployable_modules(model)})
    had_deploy_forms = any(isinstance(m, PiecewiseQuadratic) for m in model.modules())
    already = not fusible and (had_deploy_forms or bool((model_config or {}).get("reparameterized")))
    if not fusible and not already:
        unfused = describe_activations(unfused_activations(model))
        if not allow_unfused:
            raise NothingToFuseError(
                f"nothing to re-parameterize: the model has no activation with an exact deploy form (RepAct), so "
                f"its activations stay as they are: {unfused}; pass allow_unfused=True (--allow-unfused) to export "
                "it unchanged")
        say(f"nothing to re-parameterize; exporting as it is: {unfused}")
    return fusible, already


def check_finite_weights(module: nn.Module, what: str) -> None:
    """:class:`DeployError` when a weight, buffer or BatchNorm statistic of ``module`` is not finite."""
    try:
        check_finite(module, what)
    except NonFiniteError as exc:
        raise DeployError(f"{exc}; nothing was written") from None


@dataclass
class MergeOptions:
    """What ``deploy_model(merge=...)`` passes to :func:`repact.merge_linear`."""

    when: str
    latency_rounds: int = 0
    calibration: Sequence[torch.Tensor] | None = None

    def apply(self, deployed: nn.Module, x: torch.Tensor, rtol: float, *, report: bool = True):
        """(merged copy of ``deployed``, its report); :class:`DeployError` when it differs above ``rtol``."""
        from ..merge import MergeError, merge_linear

        try:
            return merge_linear(deployed, x, when=self.when, rtol=rtol,
                                latency_rounds=self.latency_rounds if report else 0,
                                calibration=self.calibration if report else None)
        except MergeError as exc:
            raise DeployError(f"{exc}; nothing was written") from None


def _deploy(model, out, shape, model_config, name, rtol, parity_tol, opset, dynamic_batch, onnx_form, randomize_bn,
            batch, seed, overwrite, allow_unfused, say, merging: MergeOptions | None = None) -> DeployResult:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *shape, generator=gen)
    model.eval()
    _prime(model, x)
    check_finite_weights(model, "the model")

    fusible, already = check_fusible(model, model_config, allow_unfused or merging is not None, say)
    deployed = reparameterize(model, inplace=False).eval() if fusible else model
    unfused = unfused_activations(deployed)
    if fusible:
        say(f"re-parameterized {fusible} activation(s); staying as they are: {describe_activations(unfused)}")
    merge_report = None
    if merging is not None:
        deployed, merge_report = merging.apply(deployed, x, rtol)
        for line in merge_report.lines():
            say(line)
    check_finite_weights(deployed, "the deploy form")
    res = verify(model, deployed, x)
    say(f"verify: {res}")
    checks: dict[str, Any] = {"logits": res.as_dict()}
    if res.nonfinite:
        raise DeployError(f"the logits are not finite: {res.nonfinite}; nothing was written")
    if not res.ok(rtol):
        raise DeployError(f"the deploy form differs from the model: {res}, above the tolerance rtol={rtol:g}; "
                          "nothing was written")
    if randomize_bn:
        probe = randomize_batchnorm_(copy.deepcopy(model), seed)
        probe_deployed = reparameterize(probe, inplace=False)
        if merging is not None:
            probe_deployed = merging.apply(probe_deployed, x, float("inf"), report=False)[0]
        rb = verify(probe, probe_deployed, x)
        say(f"verify with randomized BatchNorm statistics: {rb}")
        checks["logits_random_bn"] = rb.as_dict()
        if not rb.ok(rtol):
            raise DeployError(f"with randomized BatchNorm statistics the deploy form differs: {rb}, above rtol={rtol:g}; "
                              "nothing was written")

    cfg = deploy_model_config(dict(model_config or {}), model, deployed)
    cfg["input_shape"] = shape
    batches = [x, torch.randn(1, *shape, generator=gen), torch.randn(batch + 1, *shape, generator=gen)]
    with staging_folder(out) as stage:
        onnx_report = export_checked(deployed, x, batches, stage / f"{name}.onnx", opset=opset,
                                     dynamic_batch=dynamic_batch, onnx_form=onnx_form, parity_tol=parity_tol, say=say)
        weights = save_deploy_weights(deployed, cfg, stage, name, x, say=say)
        report = {
            "format": "repact-deploy-report",
            "version": 1,
            "model_config": cfg,
            "already_reparameterized": already,
            "reparameterized_activations": fusible,
            "unfused_activations": {k: len(v) for k, v in unfused.items()},
            "tolerances": {"rtol": rtol, "parity_tol": parity_tol},
            "verify": checks,
            "onnx": onnx_report,
            "weights": weights,
            "cost": deploy_cost(model, deployed, model, deployed, x),
            "versions": versions(),
        }
        if merge_report is not None:
            report["merge"] = {k: v for k, v in merge_report.as_dict().items() if k != "structure"}
        return publish(stage, out, name, report, overwrite, say)


@contextmanager
def staging_folder(out: Path):
    """A fresh hidden folder inside ``out`` (created) for a deploy's files; removed with what is left in it."""
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".repact-deploy-", dir=out))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def export_checked(deployed: nn.Module, x: torch.Tensor, batches: Sequence[torch.Tensor], path: Path, *, opset: int,
                   dynamic_batch: bool, onnx_form: str, parity_tol: float, say: Callable[[str], None]) -> dict[str, Any]:
    """Export ``deployed`` (a module of tensor outputs) to ``path``, check it with onnx.checker and run it
    with onnxruntime on ``batches`` (on ``x`` alone for a static batch); the report's ``onnx`` entry.
    :class:`DeployError` when onnxruntime differs by more than ``parity_tol``."""
    onnx_file = export_onnx(deployed, x, path, opset=opset, dynamic_batch=dynamic_batch, form=onnx_form)
    forms = last_export_forms()
    say(f"onnx: exported opset {opset}, checked by onnx.checker ({(forms.counts() if forms else {})})")
    used = list(batches) if dynamic_batch else [x]
    parity = onnx_parity(deployed, onnx_file, used)
    say(f"onnxruntime parity: max abs diff {parity:.3e} (batches {[int(b.shape[0]) for b in used]})")
    if not parity <= parity_tol:
        raise DeployError(f"onnxruntime differs from PyTorch by {parity:.3e}, above the tolerance {parity_tol:g}; "
                          "nothing was written")
    return {"file": path.name, "opset": int(opset), "dynamic_batch": dynamic_batch,
            "export_forms": forms.counts() if forms else {}, "checker": "passed", "parity_max_abs": parity,
            "parity_batches": [int(b.shape[0]) for b in used]}


def save_deploy_weights(deployed: nn.Module, cfg: dict[str, Any], stage: Path, name: str, x: torch.Tensor, *,
                        view: Callable[[nn.Module], nn.Module] = lambda m: m,
                        say: Callable[[str], None]) -> dict[str, Any]:
    """Save ``deployed`` as ``NAME_deploy`` in ``stage`` and, when ``cfg`` names its model, rebuild it with
    ``build_model`` and compare every output on ``x`` (:func:`verify`, so models of several outputs too;
    ``view`` gives the module whose outputs are compared). The report's ``weights`` entry."""
    tpath, jpath = save_checkpoint(stage / f"{name}_deploy", deployed, model_config=cfg)
    reload_err = None
    if "name" in cfg:
        rebuilt = build_model(tpath).eval()
        reload_err = verify(view(deployed), view(rebuilt), x).max_abs
        say(f"reload: build_model({tpath.name}) matches the deploy model (max abs diff {reload_err:.1e})")
        if reload_err != 0.0:
            raise DeployError(f"the saved deploy weights do not rebuild the deploy model (max abs diff {reload_err:.3e})")
    return {"file": tpath.name, "header": jpath.name, "reload_max_abs": reload_err}


def deploy_cost(model: nn.Module, deployed: nn.Module, model_view: nn.Module, deployed_view: nn.Module,
                x: torch.Tensor) -> dict[str, Any]:
    """Parameters of the two forms and FLOPs of their views (the exported modules) on one sample."""
    fl_model, fl_dep = count_flops(model_view, x[:1]), count_flops(deployed_view, x[:1])
    return {"params_train": count_params(model), "params_deploy": count_params(deployed),
            "flops_train": fl_model.total, "flops_deploy": fl_dep.total,
            "activation_flops_train": fl_model.activation, "activation_flops_deploy": fl_dep.activation}


def publish(stage: Path, out: Path, name: str, report: dict[str, Any], overwrite: bool,
            say: Callable[[str], None]) -> DeployResult:
    """Write the report into ``stage`` and move the four files of :func:`deploy_outputs` into ``out``
    (refusing files of an earlier deploy there unless ``overwrite``)."""
    onnx_file, tpath, jpath, rpath = deploy_outputs(stage, name)
    atomic_write_text(rpath, json.dumps(json_ready(report), indent=2, sort_keys=True) + "\n")
    if not overwrite:  # again, right before the move: another process may have written meanwhile
        refuse_existing(out, name)
    final = []
    for p in (onnx_file, tpath, jpath, rpath):
        os.replace(p, out / p.name)
        final.append(out / p.name)
    say(f"wrote {', '.join(str(p) for p in final)}")
    return DeployResult(out, *final, report)


def versions() -> dict[str, str]:
    """The versions of repact, torch, onnx and onnxruntime, for reports."""
    from .. import __version__

    out = {"repact": __version__, "torch": torch.__version__}
    for mod in ("onnx", "onnxruntime"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return out
