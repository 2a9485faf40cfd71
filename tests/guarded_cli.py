"""``python tests/guarded_cli.py ARGV...``: the real ``repact ARGV`` (``repact.cli.main``, its exit code
the process's) with every attempt to reach out failing at once and logged: network connections and
name lookups, ``torch.load`` and safetensors file reads of weights, and weight downloads. The log
($REPACT_GUARD_LOG, JSON lines) also gets the command's own wall time, measured after the CLI's
modules are imported (the interpreter's start-up is not what a check of a header costs).

:func:`forbid` is the same guard for a test's own process (with ``monkeypatch.setattr``).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable


class ReachedOut(OSError):
    """Raised in place of a network connection or a weights read."""


def forbid(setattr_: Callable[[Any, str, Any], None], log: Path) -> None:
    """Replace the functions through which a model build could fetch or read weights by ones that log
    the attempt to ``log`` and raise :class:`ReachedOut`."""
    import safetensors.torch
    import torch
    import torch.hub

    def deny(what: str):
        def refuse(*args: Any, **kwargs: Any):
            with open(log, "a") as fh:
                fh.write(json.dumps({"reached_out": what, "args": [repr(a)[:200] for a in args]}) + "\n")
            raise ReachedOut(f"the test forbids {what}")

        return refuse

    setattr_(socket.socket, "connect", deny("socket.connect"))
    setattr_(socket.socket, "connect_ex", deny("socket.connect_ex"))
    setattr_(socket, "getaddrinfo", deny("socket.getaddrinfo"))
    setattr_(socket, "create_connection", deny("socket.create_connection"))
    setattr_(torch, "load", deny("torch.load"))
    setattr_(torch.hub, "load_state_dict_from_url", deny("torch.hub.load_state_dict_from_url"))
    setattr_(torch.hub, "download_url_to_file", deny("torch.hub.download_url_to_file"))
    setattr_(safetensors.torch, "load_file", deny("safetensors.torch.load_file"))


def read_log(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _main(argv: list[str]) -> int:
    log = Path(os.environ["REPACT_GUARD_LOG"])
    forbid(setattr, log)
    from repact.cli import build_parser, main

    build_parser()  # imports every subcommand's module: start-up, not the command's work
    t0 = time.monotonic()
    try:
        return main(argv)
    finally:
        with open(log, "a") as fh:
            fh.write(json.dumps({"elapsed_s": time.monotonic() - t0}) + "\n")


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
