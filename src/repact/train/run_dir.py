"""Run folders that one process owns at a time, replaced or copied without ever mixing two runs.

* **Lock.** While a process trains into a folder it holds an OS-level lock on the folder itself
  (``flock`` on its directory descriptor; the ``filelock`` package on systems without ``fcntl``).
  The kernel drops the lock when the process ends, however it ends, so no stale marker is left
  behind, and a second process asking for the folder fails at once with :class:`RunFolderBusy`.
* **What a folder holds.** Only the files ``repact train`` writes (:data:`RUN_FILES`) count as a
  run's; a folder with anything else in it is never written into or deleted.
* **Aside builds.** A run that replaces another (``--overwrite``) or copies one (``--resume A --out
  B``) is built in a hidden sibling folder ``.NAME.repact-new-*`` and swapped into place in one
  step (``renameat2(RENAME_EXCHANGE)`` on Linux) once it holds a checkpoint; a process killed
  before that leaves the old folder exactly as it was, and the next run into it removes the
  abandoned sibling.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoint import checkpoint_paths, current_umask
from .config import ConfigError
from .pictures import ACTIVATIONS_FILE, CURVES_FILE, GRADS_FILE

__all__ = ["RunFolder", "RunFolderBusy", "FolderState", "RUN_FILES", "inspect_folder", "refuse_if_busy",
           "same_folder", "foreign_names", "refuse_foreign", "run_folder_of"]

#: every file and folder ``repact train`` writes into a run folder
RUN_FILES = frozenset({"config.yaml", "metrics.csv", "metrics.jsonl", "act_params.jsonl", "summary.json",
                       "last.safetensors", "last.json", "best.safetensors", "best.json", "tensorboard",
                       GRADS_FILE, CURVES_FILE, ACTIVATIONS_FILE})
#: what a copied run takes along (the checkpoints are chosen separately)
_COPIED = ("config.yaml", "metrics.jsonl", "metrics.csv", "act_params.jsonl", "summary.json", "tensorboard",
           GRADS_FILE)
_NEW, _OLD = "repact-new", "repact-old"

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


class RunFolderBusy(RuntimeError):
    """Another process holds the run folder's lock (it is training into it)."""


def foreign_names(path: Path, owned: frozenset[str] = RUN_FILES) -> list[str]:
    """The entries of the folder ``path`` that are neither in ``owned`` nor a hidden ``.NAME.*.tmp``
    file (atomic writes go through those; a killed writer may leave one behind), sorted."""
    return sorted(n for p in Path(path).iterdir()
                  if not ((n := p.name) in owned or (n.startswith(".") and n.endswith(".tmp"))))


def refuse_foreign(path: str | Path, owned: frozenset[str] = RUN_FILES, writer: str = "repact train",
                   holds: str = "a run folder holds one run") -> None:
    """:class:`ConfigError` where ``--out path`` is a file, or a folder holding entries ``writer`` did
    not write (``owned`` names what it writes): repact writes into no such folder and deletes nothing in it."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise ConfigError(f"--out {path} is a file, not a folder; give a folder")
    foreign = foreign_names(path, owned)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ConfigError(f"--out {path} holds files {writer} did not write ({shown}); {holds} and nothing else, "
                          "and repact never deletes other files: give an empty or new folder")


def run_folder_of(path: str | Path) -> Path | None:
    """The run folder of ``repact train`` that ``path`` is or lies in (a ``config.yaml`` with the run's
    log, checkpoint or summary beside it), or None."""
    p = Path(os.path.abspath(path))
    for q in (p, *p.parents):
        if (q / "config.yaml").is_file() and any((q / n).exists() for n in ("metrics.jsonl", "last.safetensors",
                                                                            "summary.json")):
            return q
    return None


@dataclass
class FolderState:
    """What a folder holds: ``kind`` is ``missing``, ``empty``, ``unfinished`` (run files but no
    checkpoint: a run that failed before its first epoch), ``run`` or ``foreign``."""

    kind: str
    foreign: list[str] = field(default_factory=list)
    epoch: int | None = None

    def describe(self) -> str:
        if self.kind == "run":
            return f"a run (last checkpoint after epoch {self.epoch})" if self.epoch is not None else "a run"
        return {"unfinished": "a run that never finished an epoch", "foreign": "files repact did not write",
                "empty": "nothing", "missing": "nothing"}[self.kind]


def inspect_folder(path: Path) -> FolderState:
    path = Path(path)
    if not path.exists():
        return FolderState("missing")
    if not path.is_dir():
        raise ConfigError(f"--out {path} is a file, not a folder; give a folder for the run")
    names = sorted(p.name for p in path.iterdir())
    foreign = foreign_names(path)
    if foreign:
        return FolderState("foreign", foreign)
    if not names:
        return FolderState("empty")
    last = checkpoint_paths(path / "last")[0]
    if not last.exists():
        return FolderState("unfinished")
    epoch = None
    try:
        epoch = int(json.loads(checkpoint_paths(path / "last")[1].read_text(encoding="utf-8"))["state"]["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return FolderState("run", epoch=epoch)


def same_folder(a: Path, b: Path) -> bool:
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


# ------------------------------------------------------------------------------------------------
# OS-level locks on folders
# ------------------------------------------------------------------------------------------------


class _Lock:
    """An exclusive, non-blocking lock on a folder that the OS releases when the process ends."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._filelock = None

    def try_acquire(self) -> bool:
        if fcntl is None:  # pragma: no cover - Windows: a lock file beside the folder
            from filelock import FileLock, Timeout

            lock = FileLock(str(self.path.parent / f".{self.path.name}.lock"))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                return False
            self._filelock = lock
            return True
        for _ in range(20):  # the folder may be swapped between open and flock: check, retry
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            try:
                now = os.stat(self.path)
            except FileNotFoundError:
                now = None
            st = os.fstat(fd)
            if now is not None and (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev):
                self._fd = fd
                return True
            os.close(fd)
        return False

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
        if self._filelock is not None:  # pragma: no cover
            self._filelock.release()
            self._filelock = None


def _lock_or_busy(path: Path, what: str) -> _Lock:
    lock = _Lock(path)
    if not lock.try_acquire():
        raise RunFolderBusy(f"{what} {path} is in use by another process (it holds the folder's lock); wait for "
                            "it to finish, or choose another --out")
    return lock


def refuse_if_busy(path: str | Path) -> None:
    """:class:`RunFolderBusy` where another process holds the lock of the run folder ``path`` (a run
    in progress, whose files it is still writing); nothing where the folder is free or absent."""
    path = Path(path)
    if path.is_dir():
        _lock_or_busy(path, "run folder").release()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one step (Linux ``renameat2``); False where the system cannot."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this filesystem cannot exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


# ------------------------------------------------------------------------------------------------
# the run folder
# ------------------------------------------------------------------------------------------------


class RunFolder:
    """The folder ``target`` a run belongs to, locked for this process.

    ``path`` is where the run's files are written now: ``target`` itself, or the aside folder
    while a replacing or copied run has not been swapped in (:meth:`commit`). Always
    :meth:`close` it (it is a context manager): an uncommitted aside folder is removed and the
    locks are dropped.
    """

    def __init__(self, target: str | Path) -> None:
        self.target = Path(target)
        self.path = self.target
        self.replaces: str | None = None  # what an aside build will replace, for messages
        self._lock: _Lock | None = None
        self._aside_lock: _Lock | None = None
        self._created: list[Path] = []

    # -- locking -----------------------------------------------------------------------------
    def lock(self) -> "RunFolder":
        self._restore_half_swap()
        missing = [p for p in (self.target, *self.target.parents) if not p.exists()]
        blocking = next((p for p in (self.target, *self.target.parents) if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            raise ConfigError(f"--out {self.target}: {blocking} is a file, not a folder; give a folder for the run")
        self.target.mkdir(parents=True, exist_ok=True)
        self._created = missing  # removed again by close() while still empty
        self._lock = _lock_or_busy(self.target, "run folder")
        self._remove_abandoned()
        return self

    def _siblings(self, kind: str) -> list[Path]:
        parent = self.target.parent
        prefix = f".{self.target.name}.{kind}-"
        return sorted(p for p in parent.iterdir() if p.name.startswith(prefix) and p.is_dir()) \
            if parent.is_dir() else []

    def _restore_half_swap(self) -> None:
        """Where a swap without ``renameat2`` was killed between its two renames, put the old run back."""
        if self.target.exists():
            return
        for old in self._siblings(_OLD):
            lock = _Lock(old)
            if lock.try_acquire():
                lock.release()
                os.rename(old, self.target)
                return

    def _remove_abandoned(self) -> None:
        """Aside folders of processes that died before their swap (nothing in them is anyone's run)."""
        for p in self._siblings(_NEW) + self._siblings(_OLD):
            lock = _Lock(p)
            try:
                free = lock.try_acquire()
            except FileNotFoundError:  # removed meanwhile
                continue
            if free:
                lock.release()
                shutil.rmtree(p, ignore_errors=True)

    # -- starting a run ----------------------------------------------------------------------
    def start_fresh(self, overwrite: bool) -> str | None:
        """Make the folder ready for a new run; returns a note for the user, or None."""
        state = inspect_folder(self.target)
        if state.kind == "foreign":
            refuse_foreign(self.target)
        if state.kind == "run":
            if not overwrite:
                raise ConfigError(f"run folder {self.target} already holds {state.describe()}; continue it with "
                                  f"--resume {self.target}, replace it with --overwrite, or choose another --out")
            self._begin_aside()
            self.replaces = state.describe()
            return None
        if state.kind == "unfinished":
            self._clear_own_files()
            return f"{self.target} held a run that never finished an epoch (nothing to keep); starting afresh"
        return None

    def start_copy(self, source: Path, checkpoint: Path, overwrite: bool) -> None:
        """Copy the run in ``source`` (resumed from ``checkpoint``) into this folder, then swap it in."""
        state = inspect_folder(self.target)
        if state.kind == "foreign":
            refuse_foreign(self.target)
        if state.kind in ("run", "unfinished") and not overwrite:
            raise ConfigError(f"--out {self.target} already holds {state.describe()}, not the run resumed from "
                              f"{source}; a folder holds one run: give an empty or new --out, or --overwrite to "
                              "replace it with a copy of the resumed run")
        src_lock = _lock_or_busy(Path(source), "the resumed run's folder")
        try:
            self._begin_aside()
            for name in _COPIED:
                p = Path(source) / name
                if p.is_dir():
                    shutil.copytree(p, self.path / name)
                elif p.is_file():
                    shutil.copy2(p, self.path / name)
            ck_t, ck_j = checkpoint_paths(checkpoint)
            src_last = checkpoint_paths(Path(source) / "last")[0]
            if same_folder(ck_t, src_last) and checkpoint_paths(Path(source) / "best")[0].exists():
                for a, b in zip(checkpoint_paths(Path(source) / "best"), checkpoint_paths(self.path / "best")):
                    if a.exists():
                        shutil.copy2(a, b)
            if ck_j.exists():
                shutil.copy2(ck_j, checkpoint_paths(self.path / "last")[1])
            shutil.copy2(ck_t, checkpoint_paths(self.path / "last")[0])
        finally:
            src_lock.release()
        self.commit()

    def _clear_own_files(self) -> None:
        foreign = set(foreign_names(self.target))
        for p in self.target.iterdir():
            if p.name not in foreign:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()

    def _begin_aside(self) -> None:
        parent = self.target.parent
        aside = Path(tempfile.mkdtemp(dir=parent, prefix=f".{self.target.name}.{_NEW}-"))
        os.chmod(aside, 0o777 & ~current_umask())
        self._aside_lock = _Lock(aside)
        if not self._aside_lock.try_acquire():  # pragma: no cover - a folder nobody else knows of
            raise RunFolderBusy(f"cannot lock {aside}")
        self.path = aside

    @property
    def pending(self) -> bool:
        """Whether the run is still being built aside (the target holds the previous run)."""
        return self._aside_lock is not None

    def commit(self) -> None:
        """Swap the aside build into ``target``; the previous content is removed."""
        if self._aside_lock is None:
            return
        aside = self.path
        if _exchange(aside, self.target):
            old = aside  # the aside name now holds the previous content
        else:  # two renames; a process killed between them is repaired by the next lock()
            old = Path(tempfile.mkdtemp(dir=self.target.parent, prefix=f".{self.target.name}.{_OLD}-"))
            os.rmdir(old)
            os.rename(self.target, old)
            os.rename(aside, self.target)
        self._lock, self._aside_lock, old_lock = self._aside_lock, None, self._lock
        self._lock.path = self.target
        self.path = self.target
        shutil.rmtree(old, ignore_errors=True)
        if old_lock is not None:
            old_lock.release()

    def close(self) -> None:
        if self._aside_lock is not None:  # never swapped in: the previous run stays as it was
            shutil.rmtree(self.path, ignore_errors=True)
            self._aside_lock.release()
            self._aside_lock = None
            self.path = self.target
        for p in self._created:  # a run that failed before writing anything leaves no folder behind
            try:
                p.rmdir()
            except OSError:
                break
        self._created = []
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

