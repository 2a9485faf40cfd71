"""The ``repact`` command line: one module per subcommand under ``repact.cli``.

Each subcommand module defines ``add_parser(subparsers)`` (registering its parser and setting
``func``). Every failure ends as one paragraph on stderr without a traceback:

* exit 2, bad input: :class:`CLIError`, ``ValueError`` (bad options, configs, data, checkpoints)
  and the OS errors of missing or unreadable paths;
* exit 1, a fault at run time: any other error (out of memory, a full disk, a bug), with a
  pointer to ``--debug``;
* exit 130 on Ctrl-C; output piped into a reader that stops early (``| head``) ends quietly.

``--debug`` (anywhere on the command line) or ``REPACT_DEBUG=1`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from typing import Sequence

__all__ = ["CLIError", "main", "SUBCOMMANDS"]

#: subcommand modules, in the order ``repact --help`` lists them
SUBCOMMANDS = ("demo", "acts", "train", "eval", "compare", "deploy", "bench", "verify", "plot", "cam")


class CLIError(Exception):
    """A user error: bad flag, missing file, unknown name. Printed without a traceback, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's usage errors: exit 2, one line
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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
    # --debug is taken out of the command line before parsing (it may stand anywhere); listed for --help
    for p in (parser, *sub.choices.values()):
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an error (or REPACT_DEBUG=1)")
    return parser


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror and type(exc).__str__ is OSError.__str__:
        return f"{exc.filename}: {exc.strerror}"
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, KeyError) and text.startswith("'"):
        text = text.strip("'")
    return text


def _say(command: str, text: str) -> None:
    print(f"repact {command}: error: {' '.join(text.split())}", file=sys.stderr)


#: errors that mean the input was bad (exit 2); every other exception is a fault at run time (exit 1)
BAD_INPUT = (CLIError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, KeyError)


def exit_code(exc: BaseException) -> int:
    """2 for bad input, 1 for a fault at run time (a diverged run is a run-time fault)."""
    from ..train.engine import TrainingDiverged

    return 1 if isinstance(exc, TrainingDiverged) or not isinstance(exc, BAD_INPUT) else 2


def _split_debug(argv: list[str]) -> tuple[list[str], bool]:
    """Remove ``--debug`` wherever it stands (before a ``--`` separator)."""
    end = argv.index("--") if "--" in argv else len(argv)
    head = [a for a in argv[:end] if a != "--debug"]
    return head + argv[end:], len(head) != end


def main(argv: Sequence[str] | None = None) -> int:
    argv, debug_flag = _split_debug(list(sys.argv[1:] if argv is None else argv))
    debug = debug_flag or os.environ.get("REPACT_DEBUG", "") not in ("", "0")
    command = "?"
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        command = args.command
        with warnings.catch_warnings():  # restores the previous showwarning afterwards
            warnings.showwarning = _warning_printer(command, warnings.showwarning)
            rc = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return int(rc or 0)
    except BrokenPipeError:
        _silence_stdout()
        return 141  # as a process ended by SIGPIPE
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"repact {command}: interrupted", file=sys.stderr)
        return 130
    except SystemExit:  # --help, --version and usage errors: their output may meet a closed pipe too
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _silence_stdout()
        raise
    except Exception as exc:  # noqa: BLE001 - the last resort: one line, never a traceback
        if debug:
            raise
        code = exit_code(exc)
        text = _message(exc)
        if code == 1 and not _is_ours(exc):
            text = f"{type(exc).__name__}: {text} (a fault at run time; rerun with --debug for the full traceback)"
        _say(command, text)
        return code


def _warning_printer(command: str, default):
    """Warnings of repact's own kinds (e.g. the VOC loaders' DataWarning: dropped boxes, missing
    images) as one line ``repact CMD: warning: ...``; others as Python prints them."""

    def show(message, category, filename, lineno, file=None, line=None):
        if category.__module__.startswith("repact."):
            print(f"repact {command}: warning: {' '.join(str(message).split())}", file=file or sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    return show


def _silence_stdout() -> None:
    """The reader of stdout (e.g. ``| head``) has gone: send what is left to /dev/null, so that
    exiting does not raise a second BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a descriptor (captured)
        pass


def _is_ours(exc: BaseException) -> bool:
    """Errors whose message is written for the user (no need to point at --debug)."""
    from ..train.engine import RunWriteError, TrainingDiverged
    from ..train.run_dir import RunFolderBusy

    return isinstance(exc, (TrainingDiverged, RunWriteError, RunFolderBusy))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
