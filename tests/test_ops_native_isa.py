"""The native kernels' narrower SIMD paths: the C source is built again with a compiler limited to
SSE2 (16-byte vectors) or AVX2 (32-byte; the AVX-512 host's non-AVX-512 path) through the
wrappers in ``.ci/``, and the native kernels' tests run against that build in a fresh process.
A path this host's own build already takes (its vector width) is left to the rest of the suite.
The builds land in the usual cache, keyed by the wrapper, so only the first run compiles."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from repact import _native

ROOT = Path(__file__).resolve().parents[1]
NATIVE_TESTS = ["tests/test_ops_piecewise.py", "tests/test_repact.py", "tests/test_ops_batchnorm.py",
                "tests/test_ops_acon_kernels.py"]
WIDTHS = {"sse2": 16, "avx2": 32}

CHECK = """
import sys
from repact import _native
got = _native.vector_bytes()
if got != {width}:
    sys.exit(f"the {isa} build has {{got}}-byte vectors, expected {width}")
import pytest
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-k", "test_native or cpu", *{tests}]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("isa", sorted(WIDTHS))
def test_native_kernels_on_a_narrower_simd_build(isa):
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the ISA wrappers are for x86-64 compilers")
    if _native.library() is None:
        pytest.skip(f"native kernels unavailable: {_native.build_error()}")
    width = WIDTHS[isa]
    if _native.vector_bytes() <= width:
        pytest.skip(f"this host's own build already uses {_native.vector_bytes()}-byte vectors (tested by the suite)")
    env = dict(os.environ, CC=str(ROOT / ".ci" / f"cc-{isa}"), REPACT_REQUIRE_NATIVE="1",
               REAL_CC=_native._compiler(), OMP_NUM_THREADS="2",
               PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = CHECK.format(isa=isa, width=width, tests=NATIVE_TESTS)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1200)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in tail and "failed" not in tail, tail
