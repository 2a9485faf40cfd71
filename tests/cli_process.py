"""``repact ARGV`` in a real child process, without each child importing torch again.

Most of a short CLI test's cost is the new interpreter's imports (torch, torchvision and what they
pull in: seconds per process, more than the command's own work). :func:`run` starts each command
as its own process, forked from a server process that imported those third-party libraries once
(:mod:`multiprocessing`'s forkserver with a preload list). The child is a new process with its own
exit code, file descriptors 1 and 2 captured into files, the environment and working folder of
the call, and ``repact`` itself imported fresh from the call's ``PYTHONPATH`` (nothing of repact
is preloaded, so the tested tree and environment variables read at import time are the call's).
The command runs through :mod:`runpy` as ``python -m repact`` does (``__main__``, ``sys.argv``),
and its ``atexit`` handlers run. A handful of tests still start ``python -m repact`` itself, for
what only a new interpreter shows (the entry point, signals, ``torchrun``).

The result is a :class:`subprocess.CompletedProcess` with text output (newlines translated as
``text=True`` does); a command that outlives ``timeout`` is killed and raises
:class:`subprocess.TimeoutExpired`, as :func:`subprocess.run` does.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

#: imported once by the server process; a name that is not installed is skipped
PRELOAD = ("numpy", "torch", "torchvision", "safetensors.torch", "yaml", "PIL.Image", "onnx", "onnxruntime",
           "onnxscript", "torch.onnx", "matplotlib.pyplot")

_context = None


def _server():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(list(PRELOAD))
    return _context


def _child(argv: list[str], env: dict[str, str], cwd: str, out_path: str, err_path: str, script: str | None) -> None:
    """The child's body: become ``python -m repact ARGV`` (or ``python SCRIPT ARGV``) in ``cwd`` with ``env``."""
    import atexit
    import runpy

    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    # the interpreter's own sys.path order: the script's folder (or the working folder for -m), then PYTHONPATH
    first = [str(Path(script).parent) if script else cwd]
    first += [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:0] = first
    threads = env.get("OMP_NUM_THREADS")
    if threads and threads.isdigit() and int(threads) > 0:  # read by the OpenMP runtime when torch loaded it
        import torch

        torch.set_num_threads(int(threads))
    sys.stdout.flush()
    sys.stderr.flush()
    for path, fd in ((out_path, 1), (err_path, 2)):
        opened = os.open(path, os.O_WRONLY | os.O_TRUNC)
        os.dup2(opened, fd)
        os.close(opened)
    try:
        if script:
            sys.argv = [script, *argv]
            runpy.run_path(script, run_name="__main__")
        else:
            sys.argv = ["-m", *argv]
            runpy.run_module("repact", run_name="__main__", alter_sys=True)
    finally:
        atexit._run_exitfuncs()


def _read(path: Path) -> str:
    return path.read_bytes().decode().replace("\r\n", "\n").replace("\r", "\n")


def run(argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None,
        timeout: float | None = 600, script: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """``python -m repact ARGV`` (or ``python SCRIPT ARGV``) in a forked child; see the module's docstring."""
    argv = [str(a) for a in argv]
    env = dict(os.environ if env is None else env)
    cwd = os.path.abspath(cwd if cwd is not None else os.getcwd())
    script = os.path.abspath(script) if script is not None else None
    shown = [sys.executable, *([script] if script else ["-m", "repact"]), *argv]
    with tempfile.TemporaryDirectory(prefix="repact-cli-") as tmp:
        out, err = Path(tmp, "stdout"), Path(tmp, "stderr")
        out.touch()
        err.touch()
        proc = _server().Process(target=_child, name="MainProcess", args=(argv, env, cwd, str(out), str(err), script))
        proc.start()
        proc.join(timeout)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
            raise subprocess.TimeoutExpired(shown, timeout, output=_read(out), stderr=_read(err))
        return subprocess.CompletedProcess(shown, proc.exitcode, _read(out), _read(err))
