"""Builds and loads repact's native CPU kernels (``piecewise.c``, ``acon.c``) on first use.

The C sources (and ``simd.h``, which both include) ship with the package and are compiled with the
system C compiler into a per-user cache (``$REPACT_CACHE_DIR`` or ``~/.cache/repact``), keyed by the
sources and headers, the compiler and the CPU, and written atomically. Set ``REPACT_NATIVE=0`` to never build or use it. Where no compiler
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
import zlib
from pathlib import Path

__all__ = ["library", "build_error", "cache_dir", "header", "vector_bytes", "ENTRY_POINTS", "ABI_VERSION"]

log = logging.getLogger(__name__)

#: compiled together into one library
_SOURCES = tuple(Path(__file__).with_name(name) for name in ("piecewise.c", "acon.c"))
#: included by the sources (part of the build's cache key with them)
_HEADERS = tuple(Path(__file__).with_name(name) for name in ("simd.h",))
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


# The C entry points, one table: each is defined for float (suffix f32) and double (f64); "T*" is
# that dtype's pointer, a leading "c" makes a pointer const. The ctypes signatures, the C
# prototypes (a header the compiler checks every definition against) and the ABI number (a hash
# of the header, compiled in and checked at load) are all generated from it.
ENTRY_POINTS = {
    "repact_pq_forward": "cT* x, T* y, i64 outer, i64 C, i64 inner, i64 K, cT* t, cT* coef, i64 Cc, int nthreads",
    "repact_pq_backward": "cT* x, cT* g, T* gx, d* gcoef, cd* aff, i64 outer, i64 C, i64 inner, i64 K, cT* t, "
                          "cT* coef, i64 Cc, int nthreads",
    "repact_basis_forward": "cT* x, T* y, i64 outer, i64 C, i64 inner, cT* coef, i64 Cc, int nthreads",
    "repact_train_sums": "cT* x, cT* g, i64 outer, i64 C, i64 inner, i64 K, cT* t, cT* w_raw, cT* slope, cT* base, "
                         "cT* part, i64 nb, int softmax, i64 Cc, d* shift, d* out, int nthreads",
    "repact_train_forward": "cT* x, T* y, i64 outer, i64 C, i64 inner, i64 K, cT* t, cT* w_raw, cT* slope, "
                            "cT* base, cT* part, i64 nb, int softmax, i64 Cc, cT* gamma, cT* beta, double eps, "
                            "int bn, d* mean, d* var, int nthreads",
    "repact_train_backward": "cT* x, cT* g, T* gx, i64 outer, i64 C, i64 inner, i64 K, cT* t, cT* w_raw, "
                             "cT* slope, cT* base, cT* part, i64 nb, int softmax, i64 Cc, cT* gamma, cd* mean, "
                             "cd* var, double eps, int bn, cd* gsums, double count, T* g_w, T* g_slope, "
                             "T* g_gamma, T* g_beta, int nthreads",
    # ACON (acon.c): parameters p1, p2, beta (NULL: 1, 0, 1) read at [(o / od) so + c sc]
    "repact_acon_forward": "cT* x, T* y, i64 outer, i64 C, i64 inner, i64 od, cT* p1, i64 p1_so, i64 p1_sc, "
                           "cT* p2, i64 p2_so, i64 p2_sc, cT* beta, i64 b_so, i64 b_sc, int beta_full, int nthreads",
    "repact_acon_backward": "cT* x, cT* g, T* gx, i64 outer, i64 C, i64 inner, i64 od, cT* p1, i64 p1_so, "
                            "i64 p1_sc, cT* p2, i64 p2_so, i64 p2_sc, cT* beta, i64 b_so, i64 b_sc, int beta_full, "
                            "d* gp1, d* gp2, d* gbeta, T* gbeta_full, i64 np1, i64 np2, i64 nbeta, int nthreads",
}
#: entry points without arguments: the ABI number, the SIMD vector width the library was built for
_PLAIN = ("repact_native_abi_version", "repact_native_vector_bytes")
_SUFFIXES = {"f32": "float", "f64": "double"}
_C_TYPES = {"T*": "{T}*", "cT*": "const {T}*", "d*": "double*", "cd*": "const double*", "i64": "int64_t",
            "int": "int", "double": "double"}
_CTYPES = {"T*": ctypes.c_void_p, "cT*": ctypes.c_void_p, "d*": ctypes.c_void_p, "cd*": ctypes.c_void_p,
           "i64": ctypes.c_int64, "int": ctypes.c_int, "double": ctypes.c_double}


def _args(spec: str) -> list[tuple[str, str]]:
    return [tuple(a.split()) for a in spec.split(",")]  # type: ignore[misc]


def header() -> str:
    """The C prototypes of every entry point, as the compiler sees them (``-include``)."""
    lines = ["#include <stdint.h>"]
    for name, spec in ENTRY_POINTS.items():
        for suffix, ctype in _SUFFIXES.items():
            args = ", ".join(f"{_C_TYPES[t].format(T=ctype)} {a}" for t, a in _args(spec))
            lines.append(f"int {name}_{suffix}({args});")
    lines += [f"int {name}(void);" for name in _PLAIN]
    return "\n".join(lines) + "\n"


#: the table's fingerprint, compiled into the library and checked when it is loaded
ABI_VERSION = zlib.crc32(header().encode()) & 0x7FFFFFFF


def _declare(lib: ctypes.CDLL) -> None:
    for name, spec in ENTRY_POINTS.items():
        for suffix in _SUFFIXES:
            fn = getattr(lib, f"{name}_{suffix}")
            fn.argtypes = [_CTYPES[t] for t, _ in _args(spec)]
            fn.restype = ctypes.c_int
    for name in _PLAIN:
        getattr(lib, name).restype = ctypes.c_int


def _flag_sets() -> list[list[str]]:
    base = ["-O3", "-std=c11", "-fPIC", "-shared", "-fopenmp", "-fno-math-errno", f"-DREPACT_NATIVE_ABI={ABI_VERSION}"]
    if platform.machine().lower() in ("x86_64", "amd64", "aarch64", "arm64"):
        return [base + ["-march=native"], base]
    return [base]


def _build_dir(cc: str) -> Path:
    """The build's cache folder, keyed by the sources, the headers, the compiler and the CPU."""
    src = b"".join(p.name.encode() + p.read_bytes() for p in _SOURCES + _HEADERS)
    key = hashlib.sha256(
        src + header().encode() + cc.encode() + _compiler_version(cc).encode() + _cpu_signature().encode()
        + sys.version.encode()
    ).hexdigest()[:16]
    return cache_dir() / f"native-{key}"


def _build(cc: str) -> Path:
    head = header()
    out_dir = _build_dir(cc)
    target = out_dir / "librepact_native.so"
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    head_path = out_dir / "repact_native.h"
    fd, tmp_head = tempfile.mkstemp(dir=out_dir, suffix=".h.tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(head)
    os.replace(tmp_head, head_path)
    errors = []
    for flags in _flag_sets():
        fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".so.tmp")
        os.close(fd)
        cmd = [cc, *flags, "-include", str(head_path), *map(str, _SOURCES), "-o", tmp, "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode == 0:
            os.replace(tmp, target)
            return target
        os.unlink(tmp)
        errors.append(f"{' '.join(cmd)}\n{proc.stderr.strip()}")
    raise RuntimeError("compiling the native kernel failed:\n" + "\n".join(errors))


def _truthy(name: str, default: str) -> bool:
    return os.environ.get(name, default).strip().lower() not in ("0", "false", "no", "off", "")


def library() -> ctypes.CDLL | None:
    """The loaded kernel library, building it on first call; ``None`` when unavailable.

    With ``REPACT_REQUIRE_NATIVE=1`` (CI) an unavailable library raises instead.
    """
    global _LIB, _TRIED, _ERROR
    if not _TRIED:
        with _LOCK:
            if not _TRIED:
                _LIB, _ERROR = _load()
                _TRIED = True
    if _LIB is None and _truthy("REPACT_REQUIRE_NATIVE", "0"):
        raise RuntimeError(f"REPACT_REQUIRE_NATIVE=1 but the native kernels are unavailable: {_ERROR}")
    return _LIB


def _load() -> tuple[ctypes.CDLL | None, str | None]:
    if not _truthy("REPACT_NATIVE", "1"):
        return None, "disabled by REPACT_NATIVE=0"
    cc = _compiler()
    if cc is None:
        log.info("repact native kernels unavailable: no C compiler found (set CC)")
        return None, "no C compiler found (set CC)"
    try:
        import torch  # noqa: F401  (load torch's OpenMP runtime first so the library shares it)

        lib = ctypes.CDLL(str(_build(cc)))
        _declare(lib)
        if lib.repact_native_abi_version() != ABI_VERSION:
            raise RuntimeError("native kernel ABI mismatch")
        return lib, None
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        log.warning("repact native kernels unavailable, using the PyTorch path: %s", exc)
        return None, str(exc)


def vector_bytes() -> int | None:
    """The SIMD vector width (bytes) the loaded library was built for: 64 (AVX-512), 32 (AVX), 16."""
    lib = library()
    return None if lib is None else lib.repact_native_vector_bytes()


def build_error() -> str | None:
    """Why the native library is unavailable (after ``library()`` returned ``None``)."""
    return _ERROR
