"""Builds and loads repact's native CPU kernels (``piecewise.c``) on first use.

The C source ships with the package and is compiled with the system C compiler into a per-user
cache (``$REPACT_CACHE_DIR`` or ``~/.cache/repact``), keyed by the source, the compiler and the
CPU, and written atomically. Set ``REPACT_NATIVE=0`` to never build or use it. Where no compiler
works, ``library()`` returns ``None`` and repact falls back to its pure PyTorch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

__all__ = ["library", "build_error", "cache_dir"]

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("piecewise.c")
ABI_VERSION = 5
_LOCK = threading.Lock()
_LIB: ctypes.CDLL | None = None
_TRIED = False
_ERROR: str | None = None


def cache_dir() -> Path:
    root = os.environ.get("REPACT_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "repact"


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiler() -> str | None:
    for cand in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cand and shutil.which(cand):
            return cand
    return None


def _compiler_version(cc: str) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _flag_sets() -> list[list[str]]:
    base = ["-O3", "-std=c11", "-fPIC", "-shared", "-fopenmp", "-fno-math-errno"]
    if platform.machine().lower() in ("x86_64", "amd64", "aarch64", "arm64"):
        return [base + ["-march=native"], base]
    return [base]


def _build(cc: str) -> Path:
    src = _SOURCE.read_bytes()
    key = hashlib.sha256(
        src + _compiler_version(cc).encode() + _cpu_signature().encode() + sys.version.encode()
    ).hexdigest()[:16]
    out_dir = cache_dir() / f"native-{key}"
    target = out_dir / "librepact_native.so"
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    errors = []
    for flags in _flag_sets():
        fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".so.tmp")
        os.close(fd)
        cmd = [cc, *flags, str(_SOURCE), "-o", tmp, "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode == 0:
            os.replace(tmp, target)
            return target
        os.unlink(tmp)
        errors.append(f"{' '.join(cmd)}\n{proc.stderr.strip()}")
    raise RuntimeError("compiling the native kernel failed:\n" + "\n".join(errors))


def _declare(lib: ctypes.CDLL) -> None:
    vp, i64, cint, dbl = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
    for suffix in ("f32", "f64"):
        fwd = getattr(lib, f"repact_pq_forward_{suffix}")
        fwd.argtypes = [vp, vp, i64, i64, i64, i64, vp, vp, i64, cint]
        fwd.restype = cint
        bwd = getattr(lib, f"repact_pq_backward_{suffix}")
        bwd.argtypes = [vp, vp, vp, vp, vp, i64, i64, i64, i64, vp, vp, i64, cint]
        bwd.restype = cint
        basis = getattr(lib, f"repact_basis_forward_{suffix}")
        basis.argtypes = [vp, vp, i64, i64, i64, vp, i64, cint]
        basis.restype = cint
        stats = getattr(lib, f"repact_pq_stats_{suffix}")
        stats.argtypes = [vp, i64, i64, i64, i64, vp, vp, i64, cint, vp]
        stats.restype = cint
        tf = getattr(lib, f"repact_train_forward_{suffix}")
        tf.argtypes = [vp, vp, i64, i64, i64, i64, vp, vp, vp, vp, vp, i64, cint, i64, vp, vp, dbl, vp, vp, cint]
        tf.restype = cint
        tb = getattr(lib, f"repact_train_backward_{suffix}")
        tb.argtypes = [vp, vp, vp, i64, i64, i64, i64, vp, vp, vp, vp, vp, i64, cint, i64, vp, vp, vp, dbl,
                       vp, vp, vp, vp, cint]
        tb.restype = cint
    lib.repact_native_abi_version.restype = cint


def library() -> ctypes.CDLL | None:
    """The loaded kernel library, building it on first call; ``None`` when unavailable."""
    global _LIB, _TRIED, _ERROR
    if _TRIED:
        return _LIB
    with _LOCK:
        if _TRIED:
            return _LIB
        _TRIED = True
        if os.environ.get("REPACT_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
            _ERROR = "disabled by REPACT_NATIVE=0"
            return None
        cc = _compiler()
        if cc is None:
            _ERROR = "no C compiler found (set CC)"
            log.info("repact native kernels unavailable: %s", _ERROR)
            return None
        try:
            import torch  # noqa: F401  (load torch's OpenMP runtime first so the library shares it)

            path = _build(cc)
            lib = ctypes.CDLL(str(path))
            _declare(lib)
            if lib.repact_native_abi_version() != ABI_VERSION:
                raise RuntimeError("native kernel ABI mismatch")
            _LIB = lib
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            _ERROR = str(exc)
            log.warning("repact native kernels unavailable, using the PyTorch path: %s", exc)
            _LIB = None
        return _LIB


def build_error() -> str | None:
    """Why the native library is unavailable (after ``library()`` returned ``None``)."""
    return _ERROR
