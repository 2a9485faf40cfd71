"""Figure plumbing shared by every picture: matplotlib on the Agg backend, formats, atomic saves."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["FORMATS", "pyplot", "save_figure", "output_path", "MissingDependency"]

#: file formats every picture can be written in
FORMATS = ("png", "svg", "pdf")


class MissingDependency(ImportError, ValueError):
    """An optional package a picture needs is not installed (the message names the extra). Also a
    ``ValueError``, so the command line reports it in one line instead of a traceback."""


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed), or :class:`MissingDependency`."""
    try:
        import matplotlib
    except ImportError:
        raise MissingDependency("matplotlib is not installed; pip install 'repact[analysis]'") from None
    if matplotlib.get_backend().lower() != "agg":
        matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def output_path(out: str | Path | None, fmt: str | None, default_stem: str, flag: str = "--out"
                ) -> tuple[Path, str]:
    """(path, format) for ``--out``/``--format``: the format comes from ``fmt``, else the path's
    suffix, else png; a path without a suffix gets the format's. A suffix that contradicts
    ``fmt`` is a ``ValueError``."""
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; accepted: {', '.join(FORMATS)}")
    path = Path(out) if out else Path(f"{default_stem}.{fmt or 'png'}")
    suffix = path.suffix.lower().lstrip(".")
    if suffix in FORMATS:
        if fmt is not None and fmt != suffix:
            raise ValueError(f"{flag} {path} ends in .{suffix} but --format is {fmt}; make them agree")
    elif suffix:
        raise ValueError(f"{flag} {path}: unknown picture format .{suffix}; accepted: {', '.join(FORMATS)}")
    else:
        suffix = fmt or "png"
        path = path.with_name(f"{path.name}.{suffix}")
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder; give a picture file name such as {path / default_stem}.{suffix}")
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ValueError(f"{flag} {path}: {blocking} is a file, not a folder; give a picture path in a folder")
    return path, suffix


def save_figure(fig, path: str | Path, fmt: str | None = None, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` atomically (a temporary file moved into place) and close it."""
    plt = pyplot()
    path = Path(path)
    fmt = fmt or (path.suffix.lower().lstrip(".") or "png")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; accepted: {', '.join(FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format=fmt, dpi=dpi)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    return path
