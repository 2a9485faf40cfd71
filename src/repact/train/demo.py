"""``repact demo``: train HardSwish and RepAct-I small CNNs on the embedded digits data, re-parameterize,
verify, export to ONNX when onnxruntime is installed, and report one table plus plots."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..checkpoint import atomic_write_text
from .config import TrainConfig
from .engine import train
from .evaluate import evaluate, evaluate_pair

__all__ = ["run_demo", "DEMO_ACTS"]

DEMO_ACTS = {"hardswish": "HardSwish", "repact": "RepAct-I"}
_MARKER = "demo.json"


def _check_out(out: Path) -> None:
    """Refuse a non-empty folder that is not an earlier demo's output (never overwrite other files)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the demo's output")
    if out.is_dir() and any(out.iterdir()) and not (out / _MARKER).exists():
        raise ValueError(f"--out {out} already holds files that are not an earlier demo's output; give an empty or "
                         "new folder (the demo writes runs/, plots, an ONNX file and demo.json there)")


def _onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401

        from ..deploy import export_onnx, onnx_parity  # noqa: F401
    except ImportError:
        return False
    return True


def _latency_ms(runners: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    from ..deploy import time_interleaved

    with torch.inference_mode():
        timings = time_interleaved(runners, warmup=5, rounds=rounds, inner=5)
    return {k: t.median_ms for k, t in timings.items()}


def run_demo(out: str | Path = "demo_out", *, epochs: int = 12, seed: int = 0, quiet: bool = False,
             latency_rounds: int = 30, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo; returns the report (also written to ``out/demo.json`` and ``out/demo.md``)."""
    from ..deploy import count_params
    from ..reparam import reparameterize, verify

    out = Path(out)
    _check_out(out)
    if epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {epochs}")
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for act in DEMO_ACTS:
        cfg = TrainConfig(model="small_cnn", act=act, dataset="digits", epochs=epochs, batch_size=64, lr=0.05,
                          weight_decay=5e-4, seed=seed, out=str(out / "runs" / act), quiet=quiet)
        say(f"== training small_cnn with {DEMO_ACTS[act]} on digits for {epochs} epochs")
        results[act] = train(cfg, overwrite=True)

    from ..data import build_datasets

    _, val_set, _ = build_datasets("digits")
    loader = DataLoader(val_set, batch_size=512, shuffle=False)
    x_all = torch.cat([x for x, _ in loader])
    y_all = torch.cat([y for _, y in loader])
    hs = results["hardswish"].model.eval()
    rep = results["repact"].model.eval()
    deployed = reparameterize(copy.deepcopy(rep)).eval()
    check = verify(rep, deployed, x_all)
    pair = evaluate_pair(rep, deployed, loader)
    rows = [
        {"model": "HardSwish", "acc1": evaluate(hs, loader)["acc1"], "params": count_params(hs), "max_error": None},
        {"model": "RepAct-I (training form)", "acc1": pair["reference"]["acc1"], "params": count_params(rep),
         "max_error": 0.0},
        {"model": "RepAct-I (re-parameterized)", "acc1": pair["candidate"]["acc1"], "params": count_params(deployed),
         "max_error": check.max_abs},
    ]
    example = x_all[:1]
    runners: dict[str, Callable[[], Any]] = {"HardSwish": lambda: hs(example),
                                             "RepAct-I (training form)": lambda: rep(example),
                                             "RepAct-I (re-parameterized)": lambda: deployed(example)}
    files: dict[str, str] = {}
    if _onnx_available():
        from ..deploy import export_onnx, onnx_parity, ort_session

        path = export_onnx(deployed, example, out / "repact_deployed.onnx", opset=17, dynamic_batch=True)
        files["onnx"] = str(path)
        sess = ort_session(path)
        name = sess.get_inputs()[0].name
        logits = torch.from_numpy(sess.run(None, {name: x_all.numpy()})[0])
        with torch.no_grad():
            err = float((logits.double() - rep(x_all).double()).abs().max())
        parity = onnx_parity(deployed, path, [example, x_all[:3]], session=sess)
        rows.append({"model": "RepAct-I (ONNX Runtime)", "acc1": 100.0 * float((logits.argmax(1) == y_all).float().mean()),
                     "params": count_params(deployed), "max_error": err, "parity_vs_deployed": parity})
        ex_np = example.numpy()
        runners["RepAct-I (ONNX Runtime)"] = lambda: sess.run(None, {name: ex_np})
    else:
        say("onnxruntime (or repact.deploy) is not installed: skipping the ONNX export (pip install 'repact[onnx]')")
    lat = _latency_ms(runners, latency_rounds)
    for r in rows:
        r["latency_ms"] = lat.get(r["model"])
    files.update(_plots(out, results, deployed))
    for act, res in results.items():
        files[f"run_{act}"] = str(res.run_dir)
    report = {"epochs": epochs, "seed": seed, "val_images": int(len(y_all)), "rows": rows,
              "verify": check.as_dict(), "top1_flips_after_reparameterize": pair["top1_flips"], "files": files}
    table = format_table(rows)
    files["report"] = str(out / "demo.md")
    files["json"] = str(out / _MARKER)
    atomic_write_text(out / "demo.md", "# repact demo\n\n" + table + "\n")
    atomic_write_text(out / _MARKER, json.dumps(report, indent=2) + "\n")
    report["table"] = table
    return report


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | val top-1 % | params | latency b=1 (ms, median) | max abs error vs training form |",
             "|---|---|---|---|---|"]
    for r in rows:
        err = "—" if r["max_error"] is None else ("0 (reference)" if r["model"].endswith("training form)")
                                                   else f"{r['max_error']:.2e}")
        lat = "n/a" if r.get("latency_ms") is None else f"{r['latency_ms']:.3f}"
        lines.append(f"| {r['model']} | {r['acc1']:.2f} | {r['params']:,} | {lat} | {err} |")
    return "\n".join(lines)


def _plots(out: Path, results: dict[str, Any], deployed: nn.Module) -> dict[str, str]:
    """Learning curves of both runs and the learned RepAct-I layers (deploy form) against HardSwish."""
    from ..analysis.figures import MissingDependency, save_figure
    from ..analysis.layers import plot_layers
    from ..analysis.runs import plot_compare_curves

    records = [{"dataset": "digits", "model": "small_cnn", "act": DEMO_ACTS[act], "seed": 0, "run_dir": res.run_dir}
               for act, res in results.items()]
    try:
        fig, _ = plot_compare_curves(records)
        files = {"curves_plot": str(save_figure(fig, out / "curves.png"))}
        fig, _ = plot_layers(deployed, title="learned RepAct-I layers (deploy form); HardSwish dashed")
        files["activations_plot"] = str(save_figure(fig, out / "repact_layers.png"))
    except MissingDependency:
        return {}
    return files
