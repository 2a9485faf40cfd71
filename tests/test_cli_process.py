"""``cli_process.run`` (the tests' way to start the CLI) gives what ``python -m repact`` gives: the
same exit code and output, the call's environment and working folder, and this tree's sources."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import cli_process
from train_fixtures import cli_env

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.mark.parametrize("argv", [["frobnicate"], ["verify", "nope.safetensors"], ["acts", "--json"]])
def test_a_forked_command_matches_python_m_repact(argv, tmp_path):
    env = cli_env()
    forked = cli_process.run(argv, env=env, cwd=tmp_path)
    real = subprocess.run([sys.executable, "-m", "repact", *argv], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert (forked.returncode, forked.stdout, forked.stderr) == (real.returncode, real.stdout, real.stderr)


def test_the_child_takes_the_calls_environment_folder_and_sources(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text("import os, sys, repact, torch\n"
                      "print(os.environ['PROBE'], os.getcwd(), repact.__file__, torch.get_num_threads())\n"
                      "sys.exit(3)\n")
    proc = cli_process.run([], script=script, env=cli_env(PROBE="x y"), cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    probe, cwd, module, threads = proc.stdout.rsplit(" ", 3)
    assert probe == "x y" and cwd == str(tmp_path) and int(threads) == 1
    assert Path(module).resolve().is_relative_to(SRC), module


def test_a_command_past_its_timeout_is_killed(tmp_path):
    script = tmp_path / "sleep.py"
    script.write_text("import time\nprint('started', flush=True)\ntime.sleep(600)\n")
    with pytest.raises(subprocess.TimeoutExpired) as info:
        cli_process.run([], script=script, env=cli_env(), timeout=5)
    assert info.value.output == "started\n"
