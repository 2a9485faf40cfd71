"""The model-level cost report: baseline vs training form vs deploy form.

``cost_report("mobilenet_v3_small", act="repact")`` builds three models of one architecture (random
weights; no download):

* ``baseline``: the same architecture and convention with ``baseline_act`` (default HardSwish),
* ``train``: with ``act`` (parameters randomized, so the tables are generic),
* ``deploy``: ``reparameterize`` of a copy of ``train`` (absent when ``act`` has no deploy form),

and reports parameters, FLOPs (activations included, see :mod:`repact.deploy.cost`) and latency
per engine and batch size, with every variant timed in the same interleaved rounds and the ratio
to the baseline taken per round. Engines: ``eager``, ``compile`` (``torch.compile``),
``onnxruntime`` (CPU only), the optional CPU runtimes ``openvino`` and ``executorch``
(:data:`OPTIONAL_ENGINES`, each model in its runtime's own export form), and on CUDA the two that replay CUDA graphs (:data:`GRAPH_ENGINES`):
``cuda-graphs`` (the eager model's forward captured whole, :func:`repact.deploy.latency.cuda_graph_replay`)
and ``reduce-overhead`` (``torch.compile(mode="reduce-overhead")``). ``device="cuda"`` runs the
PyTorch engines on the GPU, timed by CUDA events, with each row's peak
``torch.cuda.max_memory_allocated``. :func:`pick_engines` is the one check of an engine list
against a device.
"""

from __future__ import annotations

import contextlib
import copy
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..reparam import randomize_activations_, reparameterize
from .cost import count_flops, count_params
from .latency import cuda_graph_replay, cuda_peak_bytes, time_interleaved

__all__ = ["ENGINES", "CPU_ENGINES", "CUDA_ENGINES", "GRAPH_ENGINES", "OPTIONAL_ENGINES", "ALL_ENGINES",
           "CostReport", "build_variants", "cost_report", "engine_form", "pick_engines"]

ENGINES = ("eager", "compile", "onnxruntime", "cuda-graphs", "reduce-overhead")
#: engines that need an optional package (``repact[openvino]``, ``executorch``); CPU only, asked for by name
OPTIONAL_ENGINES = ("openvino", "executorch")
ALL_ENGINES = ENGINES + OPTIONAL_ENGINES
#: the default engines on the CPU
CPU_ENGINES = ("eager", "compile", "onnxruntime")
#: the default engines on a CUDA device
CUDA_ENGINES = ("eager", "compile")
#: engines that replay CUDA graphs (CUDA only): the eager forward captured, torch.compile's reduce-overhead
GRAPH_ENGINES = ("cuda-graphs", "reduce-overhead")
#: ``onnx_form="target"``: each engine exports the form of its own runtime target
ENGINE_TARGETS = {"onnxruntime": "onnxruntime", "openvino": "openvino", "executorch": "executorch"}


@dataclass
class CostReport:
    model: str
    act: str
    baseline_act: str
    input_shape: list[int]
    static: dict[str, dict[str, Any]] = field(default_factory=dict)  # variant -> params/flops
    latency: list[dict[str, Any]] = field(default_factory=list)  # one row per engine x batch x variant
    notes: list[str] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "act": self.act, "baseline_act": self.baseline_act, "input_shape": self.input_shape,
            "static": self.static, "latency": self.latency, "notes": self.notes, "environment": self.environment,
        }

    def table(self) -> str:
        lines = [f"{self.model}: baseline={self.baseline_act}, act={self.act}, input {tuple(self.input_shape)}"]
        lines.append(f"{'variant':<9} {'params':>12} {'MFLOPs':>10} {'act MFLOPs':>11}")
        for v, s in self.static.items():
            lines.append(f"{v:<9} {s['params']:>12,} {s['flops'] / 1e6:>10.2f} {s['activation_flops'] / 1e6:>11.2f}")
        if self.latency:
            peak = any("peak_bytes" in r for r in self.latency)
            lines.append("")
            lines.append(f"{'engine':<15} {'batch':>5} {'variant':<9} {'median ms':>10} {'p25-p75 ms':>17} {'x baseline':>10}"
                         + (f" {'peak MB':>9}" if peak else ""))
            for r in self.latency:
                band = f"{r['p25_ms']:.2f}-{r['p75_ms']:.2f}"
                ratio = "" if r["ratio"] is None else f"{r['ratio']:.3f}"
                mem = f" {r['peak_bytes'] / 2**20:>9.1f}" if peak and "peak_bytes" in r else (f" {'':>9}" if peak else "")
                lines.append(f"{r['engine']:<15} {r['batch']:>5} {r['variant']:<9} {r['median_ms']:>10.2f} {band:>17} "
                             f"{ratio:>10}{mem}")
        for n in self.notes:
            lines.append(f"note: {n}")
        return "\n".join(lines)


def build_variants(name: str, act: Any, baseline_act: Any, *, num_classes: int = 1000, seed: int = 0,
                   model_kwargs: dict[str, Any] | None = None, example_input: torch.Tensor | None = None,
                   ) -> tuple[dict[str, nn.Module], list[str]]:
    """``{"baseline", "train", "deploy"}`` models in eval mode (``deploy`` missing when act has no deploy form)."""
    from ..activations.base import NotDeployableError
    from ..models import create_model

    kw = dict(model_kwargs or {})
    notes: list[str] = []
    torch.manual_seed(seed)
    baseline = create_model(name, act=baseline_act, num_classes=num_classes, **kw).eval()
    torch.manual_seed(seed)
    train = create_model(name, act=act, num_classes=num_classes, **kw).eval()
    if example_input is not None:
        with torch.no_grad():
            train(example_input[:1])  # builds lazy activations
    randomize_activations_(train, seed=seed, scale=0.1)
    variants = {"baseline": baseline, "train": train}
    try:
        variants["deploy"] = reparameterize(copy.deepcopy(train)).eval()
    except NotDeployableError as exc:
        notes.append(f"no deploy form: {exc}")
    return variants, notes


def pick_engines(engines: Sequence[str] | None, device: str | torch.device, cuda_graphs: bool = False) -> list[str]:
    """The engines a run times on ``device``: ``engines`` (None: the device's defaults,
    :data:`CPU_ENGINES` or :data:`CUDA_ENGINES`), with :data:`GRAPH_ENGINES` added for
    ``cuda_graphs``. ``ValueError`` (one line) for an engine the device cannot run or an optional
    engine whose package is not installed."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    if cuda_graphs and not cuda:
        raise ValueError(f"--cuda-graphs replays CUDA graphs and needs --device cuda; this run is on {device}"
                         + ("" if torch.cuda.is_available() else " (torch sees no CUDA GPU on this machine)"))
    chosen = list(engines) if engines else list(CUDA_ENGINES if cuda else CPU_ENGINES)
    chosen += [e for e in (GRAPH_ENGINES if cuda_graphs else ()) if e not in chosen]
    for e in chosen:
        if e not in ALL_ENGINES:
            raise ValueError(f"unknown engine {e!r}; choose from {', '.join(ALL_ENGINES)}")
        if cuda and e not in CUDA_ENGINES + GRAPH_ENGINES:
            raise ValueError(f"--engines {e} runs on the CPU only; on {device} use "
                             f"{' '.join(CUDA_ENGINES + GRAPH_ENGINES)}")
        if not cuda and e in GRAPH_ENGINES:
            raise ValueError(f"engine {e!r} replays CUDA graphs and needs --device cuda; on {device} use "
                             f"{' '.join(CPU_ENGINES + OPTIONAL_ENGINES)}")
        if e in OPTIONAL_ENGINES:
            from .engines import require_engine

            require_engine(e)  # not installed: one line naming the package, before anything is built
    return chosen


def _compiled_runner(m: nn.Module, x: torch.Tensor, mode: str | None):
    """``torch.compile(m, mode=mode)`` called once on ``x`` (compiling) under inference mode."""
    cm = torch.compile(m, mode=mode, dynamic=False)
    with torch.inference_mode():
        cm(x)
    return lambda: cm(x)


def engine_form(engine: str, variant: str, onnx_form: str, variant_forms: dict[str, str] | None = None) -> str:
    """The export form of ``variant`` under ``engine``: ``variant_forms``' entry, else ``onnx_form``, where
    ``"target"`` means the form of the engine's runtime (:data:`ENGINE_TARGETS`)."""
    from .runtime_forms import form_for_target

    form = (variant_forms or {}).get(variant, onnx_form)
    return form_for_target(ENGINE_TARGETS.get(engine, "generic")) if form == "target" else form


def _engine_runners(engine: str, models: dict[str, nn.Module], x: torch.Tensor, workdir: Path,
                    threads: int, onnx_form: str, ort_spinning: bool = True,
                    variant_forms: dict[str, str] | None = None) -> tuple[dict[str, Any], dict[str, float]]:
    """Callables for one engine, and the setup seconds (compile or export) per variant."""
    setup: dict[str, float] = {}
    runners: dict[str, Any] = {}
    if engine in OPTIONAL_ENGINES:
        from .engines import optional_engine_runners

        return optional_engine_runners(engine, models, x, workdir, threads,
                                       {k: engine_form(engine, k, onnx_form, variant_forms) for k in models})
    if engine == "eager":
        for k, m in models.items():
            runners[k] = (lambda m=m: m(x))
    elif engine in ("compile", "reduce-overhead"):
        for k, m in models.items():
            t0 = time.perf_counter()
            runners[k] = _compiled_runner(m, x, None if engine == "compile" else "reduce-overhead")
            setup[k] = time.perf_counter() - t0
    elif engine == "cuda-graphs":
        for k, m in models.items():
            t0 = time.perf_counter()
            with torch.inference_mode():
                runners[k] = cuda_graph_replay(lambda m=m: m(x), x.device)
            setup[k] = time.perf_counter() - t0
    elif engine == "onnxruntime":
        from .onnx_export import export_onnx, ort_session

        feed = x.detach().numpy()
        for k, m in models.items():
            t0 = time.perf_counter()
            path = export_onnx(m, x, workdir / f"{k}.onnx", form=engine_form(engine, k, onnx_form, variant_forms))
            sess = ort_session(path, threads=threads, spinning=ort_spinning)
            name = sess.get_inputs()[0].name
            setup[k] = time.perf_counter() - t0
            runners[k] = (lambda sess=sess, name=name: sess.run(None, {name: feed}))
    else:
        raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ALL_ENGINES)}")
    return runners, setup


def compile_cache_room(entries: int):
    """A context in which dynamo keeps up to ``entries`` compiled entries per code object and
    fails instead of falling back to eager when that is not enough.

    Compiled variants of one class share their ``forward`` code object (one entry per instance,
    input shape and grad mode), so past dynamo's default recompile limit (8) the later ones would
    silently run eagerly, and a benchmark would time them as compiled. (torch < 2.7 names these
    ``cache_size_limit`` and ``fail_on_cache_limit_hit``; torch < 2.6 cannot fail loudly.)"""
    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    fail = next((f for f in ("fail_on_recompile_limit_hit", "fail_on_cache_limit_hit") if hasattr(cfg, f)), None)
    limit = max(int(getattr(cfg, name)), int(entries) + 8)
    return cfg.patch(**{name: limit, **({fail: True} if fail else {})})


def _compile_limits(engine: str, compiles: int):
    """Room for every variant and batch size under the compiling engines; nothing for the others."""
    return compile_cache_room(2 * compiles) if engine in ("compile", "reduce-overhead") else contextlib.nullcontext()


def cost_report(
    name: str,
    act: Any = "repact",
    *,
    baseline_act: Any = "hardswish",
    input_shape: Sequence[int] = (3, 224, 224),
    batch_sizes: Sequence[int] = (1, 32),
    engines: Sequence[str] | None = None,
    warmup: int = 3,
    rounds: int = 20,
    num_classes: int = 1000,
    threads: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    onnx_form: str = "auto",
    seed: int = 0,
    workdir: str | Path | None = None,
    variants: dict[str, nn.Module] | None = None,
    ort_spinning: bool = True,
    device: str | torch.device = "cpu",
    variant_forms: dict[str, str] | None = None,
) -> CostReport:
    """Params, FLOPs and latency of the baseline, training-form and deploy-form models; see the module docstring.

    ``variants`` replaces the built models (a dict name -> model; the first is the baseline).
    ``ort_spinning=False`` keeps onnxruntime's idle threads from busy-waiting (steadier on a shared machine).
    ``device``: ``"cpu"`` or a CUDA device (the engines :func:`pick_engines` allows there; the models
    are moved there). ``onnx_form="target"`` exports each engine's own runtime form; ``variant_forms``
    (variant -> form) overrides it per variant. ``engines`` may name :data:`OPTIONAL_ENGINES`
    (``openvino``: static shapes, f32; ``executorch``: XNNPACK, a ``.pte`` per batch size) where their
    package is installed.
    """
    device = torch.device(device)
    engines = pick_engines(engines, device)
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise ValueError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    shape = [int(s) for s in input_shape]
    previous_threads = torch.get_num_threads()
    threads = int(threads or previous_threads)
    torch.set_num_threads(threads)
    try:
        return _cost_report(name, act, baseline_act, shape, batch_sizes, engines, warmup, rounds, num_classes,
                            threads, model_kwargs, onnx_form, seed, workdir, variants, ort_spinning, device,
                            variant_forms)
    finally:
        torch.set_num_threads(previous_threads)


def _cost_report(name, act, baseline_act, shape, batch_sizes, engines, warmup, rounds, num_classes, threads,
                 model_kwargs, onnx_form, seed, workdir, variants, ort_spinning, device,
                 variant_forms=None) -> CostReport:
    gen = torch.Generator().manual_seed(seed)
    probe = torch.randn(1, *shape, generator=gen)
    notes: list[str] = []
    if variants is None:
        variants, notes = build_variants(name, act, baseline_act, num_classes=num_classes, seed=seed,
                                         model_kwargs=model_kwargs, example_input=probe)
    report = CostReport(name, str(act), str(baseline_act), shape, notes=notes)
    report.environment = {
        "torch": torch.__version__, "threads": threads, "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
        "ort_spinning": ort_spinning, "warmup": warmup, "rounds": rounds, "onnx_form": onnx_form,
        "device": str(device),
    }
    if device.type == "cuda":
        report.environment["gpu"] = torch.cuda.get_device_name(device)
        report.environment["timing"] = "CUDA events, synchronized"
    for mod in ("onnxruntime", "openvino", "executorch"):
        try:
            report.environment[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):
            pass
    for k, m in variants.items():
        f = count_flops(m, probe)
        report.static[k] = {"params": count_params(m), "flops": f.total, "activation_flops": f.activation,
                            "activation_sites": f.sites, "flops_deploy_form": f.total_deploy}
    baseline = next(iter(variants))
    if device.type == "cuda":
        variants = {k: m.to(device) for k, m in variants.items()}
    tmp = tempfile.TemporaryDirectory(prefix="repact-bench-") if workdir is None else None
    wd = Path(tmp.name if tmp is not None else workdir)
    wd.mkdir(parents=True, exist_ok=True)
    try:
        for engine in engines:
            for b in batch_sizes:
                x = torch.randn(int(b), *shape, generator=gen).to(device)
                peaks: dict[str, int] = {}
                with _compile_limits(engine, len(variants) * len(batch_sizes)):
                    runners, setup = _engine_runners(engine, variants, x, wd, threads, onnx_form, ort_spinning,
                                                     variant_forms)
                    with torch.inference_mode():
                        timings = time_interleaved(runners, baseline=baseline, warmup=warmup, rounds=rounds,
                                                   device=device)
                        if device.type == "cuda":
                            peaks = {k: cuda_peak_bytes(fn, device) for k, fn in runners.items()}
                for k, t in timings.items():
                    row = {"engine": engine, "batch": int(b), "variant": k, **t.as_dict()}
                    if k in setup:
                        row["setup_s"] = setup[k]
                    if k in peaks:
                        row["peak_bytes"] = peaks[k]
                    report.latency.append(row)
    finally:
        if tmp is not None:
            tmp.cleanup()
    if "onnxruntime" in engines and "train" in variants:
        report.notes.append("onnxruntime 'train' exports the training form as the op's where-chain; "
                            f"'deploy' uses export form {onnx_form!r}" + (" (each engine's own)" if onnx_form == "target"
                                                                         else ""))
    return report
