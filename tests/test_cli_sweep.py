"""The fast subset of ``tests/cli_sweep.py`` (bad inputs, each in its own ``python -m repact``
process): no traceback, the expected exit code, one line, nothing changed. Run the script itself
for the whole sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_sweep_of_bad_inputs(tmp_path):
    out = tmp_path / "sweep.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "cli_sweep.py"), "--quick", "--jobs", "2",
                           "--json", str(out)], env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
                          capture_output=True, text=True, timeout=1800)  # a hang guard (11 min seen under load)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    counts = json.loads(out.read_text())["counts"]
    assert counts["cases"] >= 3 and counts["ok"] == counts["cases"]
    assert counts["tracebacks"] == counts["lost_or_changed"] == counts["mixed_runs"] == 0
