"""The ``repact`` command line: one module per subcommand under ``repact.cli``.

Each subcommand module defines ``add_parser(subparsers)`` (registering its parser and setting
``func``). User errors raise :class:`CLIError` (or ``ValueError``/``FileNotFoundError`` from the
library) and end as a one-paragraph message on stderr with exit code 2, without a traceback.
Set ``REPACT_DEBUG=1`` to see tracebacks.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap
from typing import Sequence

__all__ = ["CLIError", "main", "SUBCOMMANDS"]

#: subcommand modules, in the order ``repact --help`` lists them
SUBCOMMANDS = ("demo", "acts", "train", "eval", "compare", "deploy", "bench", "verify", "plot", "cam")


class CLIError(Exception):
    """A user error: bad flag, missing file, unknown name. Printed without a traceback, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's usage errors: same exit code, one paragraph
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="repact",
        description="Learnable, re-parameterizable activations: train multi-branch, deploy single-branch.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"repact {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in SUBCOMMANDS:
        try:
            mod = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue
            raise
        mod.add_parser(sub)
    return parser


def _say(command: str, exc: BaseException) -> None:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, KeyError) and text.startswith("'"):
        text = text.strip("'")
    wrapped = textwrap.fill(f"repact {command}: error: {text}", width=100, break_long_words=False,
                            break_on_hyphens=False) if "\n" not in text else f"repact {command}: error: {text}"
    print(wrapped, file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = os.environ.get("REPACT_DEBUG", "") not in ("", "0")
    try:
        rc = args.func(args)
    except CLIError as exc:
        if debug:
            raise
        _say(args.command, exc)
        return 2
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, KeyError) as exc:
        if debug:
            raise
        _say(args.command, exc)
        return 2
    except KeyboardInterrupt:
        print(f"repact {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
