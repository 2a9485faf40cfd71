"""The Triton kernels' checks (``tests/ops_triton_cases.py``, the launch and op counts of
``tests/ops_triton_counts.py``, and the ``triton`` cases of ``tests/test_ops_dtypes.py``) in a fresh
process: on CPU tensors with Triton's interpreter, which
must be switched on before Triton is first imported."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

CASES = Path(__file__).with_name("ops_triton_cases.py")
COUNTS = Path(__file__).with_name("ops_triton_counts.py")
DTYPES = Path(__file__).with_name("test_ops_dtypes.py")


def test_triton_kernels_match_the_reference():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    # (-k keeps every test of ops_triton_cases.py and ops_triton_counts.py, whose module names
    # match, and the dtype grid's triton cases; its reference and cpu cases run in this process)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-rsp",
                           "-k", "triton", str(CASES), str(COUNTS), str(DTYPES)], env=env, capture_output=True, text=True,
                          timeout=1200)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert " passed" in summary and "failed" not in summary, summary
    passed = [line for line in proc.stdout.splitlines() if line.startswith("PASSED")]
    assert any("test_ops_dtypes.py::" in line and "[triton-" in line for line in passed), summary
    assert any("ops_triton_counts.py::" in line for line in passed), summary
    skips = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
    assert all("needs a CUDA device" in line for line in skips), skips  # only the GPU-only checks skip
