"""The CLI frame: `repact acts`, usage errors exit 2 without a traceback."""

import json
import subprocess
import sys

from repact.cli import main


def test_acts_lists_the_registry(capsys):
    assert main(["acts"]) == 0
    out = capsys.readouterr().out
    assert "repact_bn" in out and "repact3" in out
    assert main(["acts", "--json", "--family", "repact"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["repact", "repact_bn", "repact_softmax"]
    assert all(r["deployable"] for r in rows)


def test_unknown_command_is_a_usage_error():
    proc = subprocess.run([sys.executable, "-m", "repact", "frobnicate"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "invalid choice: 'frobnicate'" in proc.stderr
    assert "Traceback" not in proc.stderr
