"""Latency measurement: warm-up, interleaved rounds, medians and paired ratios.

Every candidate runs once per round, in an order that rotates from round to round, so slow
drifts of a shared machine hit all candidates alike; the ratio to the baseline is the median of
the per-round ratios (paired), which cancels most of that drift. On a CUDA device each sample is
timed with CUDA events recorded around the calls and waited for (``device=``), so the time is the
GPU's, not the launch's.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

__all__ = ["Timing", "time_interleaved", "steady_malloc", "bench_device", "cuda_peak_bytes", "cuda_graph_replay"]


@dataclass
class Timing:
    """Per-call wall time of one candidate (milliseconds)."""

    name: str
    median_ms: float
    p25_ms: float
    p75_ms: float
    min_ms: float
    rounds: int
    ratio: float | None = None  # median of per-round ratios to the baseline
    ratio_p25: float | None = None
    ratio_p75: float | None = None
    samples_ms: list[float] = field(default_factory=list, repr=False)

    def as_dict(self, samples: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not samples:
            d.pop("samples_ms")
        return d


def steady_malloc() -> bool:
    """Keep freed memory in the process (glibc): no ``mmap`` for large blocks, no trimming.

    A per-op benchmark allocates and frees tensors of tens of MB every call. glibc serves them
    with ``mmap`` or trims the heap depending on its recent history, so which candidate pays
    page faults for fresh memory (often more than the op itself) depends on the order the
    candidates ran in, not on the candidate. With this, every call reuses warm memory. Returns
    whether it applied (False off glibc). It is process-wide and for benchmarks only.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def bench_device(text: str) -> torch.device:
    """The device a benchmark runs on: ``cpu``, ``cuda`` or ``cuda:N``; ``ValueError`` in one line when
    it is not one of those or CUDA is not there."""
    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {text!r} is not a device; use cpu or cuda (cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {text!r}: benchmarks run on cpu or cuda (cuda:N), not {dev.type}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {text}: torch sees no CUDA GPU on this machine "
                             f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def cuda_graph_replay(fn: Callable[[], Any], device: torch.device, warmup: int = 3) -> Callable[[], None]:
    """``fn`` (no arguments; its inputs stay where they are) captured into one CUDA graph; returns
    the graph's replay, which reruns the captured kernels on the same memory.

    ``warmup`` calls run first on a side stream, as capture requires: whatever ``fn`` sets up on
    its first calls (lazily built tables, Triton's compilation, cuDNN's algorithm choice, the
    allocator's pool) happens there and not in the graph. ``fn`` must not synchronize with the
    host (no ``.item()``): capture fails loudly if it does."""
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"CUDA graphs record CUDA work; {device} is not a CUDA device")
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(max(1, int(warmup))):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def cuda_peak_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak ``torch.cuda.max_memory_allocated`` during one call of ``fn`` (after a synchronize)."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device))


def _quantiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


def _clock_sampler(clock: Callable[[], float]) -> Callable[[Callable[[], Any], int], float]:
    def sample(fn, inner):
        t0 = clock()
        for _ in range(inner):
            fn()
        return (clock() - t0) * 1e3
    return sample


def _cuda_sampler(device: torch.device) -> Callable[[Callable[[], Any], int], float]:
    def sample(fn, inner):
        with torch.cuda.device(device):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))
    return sample


def time_interleaved(
    runners: dict[str, Callable[[], Any]],
    *,
    baseline: str | None = None,
    warmup: int = 3,
    rounds: int = 20,
    inner: int = 1,
    clock: Callable[[], float] = time.perf_counter,
    device: torch.device | str | None = None,
) -> dict[str, Timing]:
    """Time each runner ``rounds`` times (``inner`` calls per sample), interleaved; returns per-runner timings.

    ``baseline`` names the runner the ratios are taken against (default: the first). With a CUDA
    ``device`` every sample is measured by CUDA events (synchronized) instead of ``clock``.
    """
    dev = torch.device(device) if device is not None else None
    sample = _cuda_sampler(dev) if dev is not None and dev.type == "cuda" else _clock_sampler(clock)
    if not runners:
        raise ValueError("nothing to time: runners is empty")
    if rounds < 1 or inner < 1 or warmup < 0:
        raise ValueError(f"rounds and inner must be >= 1 and warmup >= 0, got {rounds}, {inner}, {warmup}")
    names = list(runners)
    baseline = baseline or names[0]
    if baseline not in runners:
        raise ValueError(f"baseline {baseline!r} is not one of {', '.join(names)}")
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            samples[name].append(sample(runners[name], inner) / inner)
    out: dict[str, Timing] = {}
    base = samples[baseline]
    for name in names:
        s = samples[name]
        p25, med, p75 = _quantiles(s)
        ratios = [a / b for a, b in zip(s, base) if b > 0]
        r25, rmed, r75 = _quantiles(ratios) if ratios else (None, None, None)
        out[name] = Timing(name, med, p25, p75, min(s), rounds, rmed, r25, r75, s)
    return out
