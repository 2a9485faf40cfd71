"""Decode once, train fast: a memory-mapped uint8 copy of an image folder's decoded pixels.

A split (``train/`` or ``val/`` of an ImageFolder tree) is decoded once into
``<cache dir>/<key>/pixels.u8`` (every image's (3, H, W) uint8 pixels, one after the other) with an
index of offsets and shapes; later runs map the file and read batches from it.

* Keyed by content (:mod:`repact.data.cache_check`): the key hashes each image's path relative to
  the split, its label and a blake2b hash of its bytes (and the class list). Sizes and modification
  times are not trusted, so adding, removing or changing a file, even for other bytes of the same
  size and time, gives another key and the next run decodes afresh; an identical copy of the
  folder elsewhere shares the cache.
* Checked when opened: ``meta.json`` holds a crc32 per 64 MiB of ``pixels.u8``, a blake2b of
  ``index.npy`` and its own checksum; a cache whose files do not match (bytes written over it,
  truncated, edited) is named (:class:`DamagedCache`) and decoded afresh in its place. What the key
  and the check cost: ``benchmarks/bench_cache_check.py`` (numbers in docs/training.md).
* Where: ``$REPACT_DATA_CACHE``, else ``data/`` under repact's cache dir (``$REPACT_CACHE_DIR`` or
  ``~/.cache/repact``). Delete it at any time; it is rebuilt when needed.
* When (``--cache``): ``off`` never; ``on`` whenever the disk has room; ``auto`` (the default) when
  the decoded split takes at most half the memory available now (so the mapped pages stay in the
  page cache from epoch to epoch) and the disk keeps at least 1 GiB free after writing it. A cache
  that already exists is used under ``auto`` and ``on``.
* Safe: the cache is built in a private temporary folder and renamed into place only when complete
  (a killed build leaves nothing usable behind); a lock file per key (``.locks/``) makes concurrent processes
  (``compare --jobs``, DDP ranks) wait for one build instead of racing.
* Unreadable files are recorded in the cache (no pixels) and handled by the caller: named in an
  error, or left out with ``--skip-bad-images``, exactly as without the cache.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .cache_check import CHUNK, FORMAT, DamagedCache, extend_crcs, index_digest, meta_digest, split_key, verify
from .common import DataError
from .images import decode_files

__all__ = ["CACHE_MODES", "DecodedImages", "DamagedCache", "cache_root", "split_key", "verify", "open_decoded",
           "scan_unreadable", "fits_rule"]

CACHE_MODES = ("auto", "on", "off")
_GIB = 2**30
DISK_RESERVE = _GIB  # the disk keeps at least this much free after a cache is written
RAM_SHARE = 0.5  # auto caches a split up to this share of the memory available now


def cache_root() -> Path:
    env = os.environ.get("REPACT_DATA_CACHE")
    if env:
        return Path(env)
    from .._native import cache_dir

    return cache_dir() / "data"


def _available_memory() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def _free_disk(path: Path) -> int:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def estimate_bytes(paths: Sequence[str], probe: int = 256) -> int:
    """Decoded size of the images (3 bytes per pixel), from the headers of up to ``probe`` of them."""
    from PIL import Image

    if not paths:
        return 0
    step = max(1, len(paths) // probe)
    pixels = []
    for p in paths[::step][:probe]:
        try:
            with Image.open(p) as im:
                pixels.append(im.size[0] * im.size[1])
        except Exception:
            continue
    return int(3 * (sum(pixels) / len(pixels)) * len(paths)) if pixels else 0


def fits_rule(need: int, mode: str, root: Path) -> str | None:
    """None when a cache of ``need`` bytes may be written under ``mode``, else the reason it may not."""
    free = _free_disk(root)
    if need + DISK_RESERVE > free:
        return (f"the decoded images need {need / _GIB:.2f} GiB and {root} has {free / _GIB:.2f} GiB free "
                f"(at least {DISK_RESERVE / _GIB:.0f} GiB must stay free)")
    if mode == "auto":
        avail = _available_memory()
        if need > RAM_SHARE * avail:
            return (f"the decoded images need {need / _GIB:.2f} GiB, more than half the memory available now "
                    f"({avail / _GIB:.2f} GiB); --cache on caches them anyway")
    return None


class DecodedImages:
    """The decoded pixels of one split, memory-mapped. ``bad`` maps sample index -> why it is unreadable.
    Opening checks every file against its checksum (:func:`verify`)."""

    def __init__(self, folder: Path, n: int | None = None) -> None:
        self.dir = Path(folder)
        meta, index = verify(self.dir, n)
        self.meta = meta
        self.index = index  # (N, 4): byte offset, C, H, W (C == 0: unreadable)
        self.bad = {int(k): v for k, v in meta["bad"].items()}
        self.shape = tuple(meta["shape"]) if meta.get("shape") else None  # every readable image's shape
        self._map: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self):  # DataLoader workers under spawn map the file themselves
        state = dict(self.__dict__)
        state["_map"] = None
        return state

    @property
    def pixels(self) -> np.ndarray:
        if self._map is None:
            nbytes = int(self.meta["bytes"])
            self._map = (np.memmap(self.dir / "pixels.u8", dtype=np.uint8, mode="r", shape=(nbytes,))
                         if nbytes else np.zeros(0, dtype=np.uint8))
        return self._map

    def image(self, i: int) -> torch.Tensor:
        off, c, h, w = (int(v) for v in self.index[i])
        if c == 0:
            raise DataError(f"image {i} of {self.dir} is unreadable: {self.bad.get(i)}")
        return torch.from_numpy(np.array(self.pixels[off:off + c * h * w]).reshape(c, h, w))

    def batch(self, indices: Sequence[int]) -> torch.Tensor | list[torch.Tensor]:
        """(N, C, H, W) uint8 when every image has one shape (one gather from the map), else a list."""
        if self.shape is None:
            return [self.image(i) for i in indices]
        idx = np.asarray(indices, dtype=np.int64)
        if (self.index[idx, 1] == 0).any():
            bad = int(idx[self.index[idx, 1] == 0][0])
            raise DataError(f"image {bad} of {self.dir} is unreadable: {self.bad.get(bad)}")
        size = int(np.prod(self.shape))
        rows = self.pixels.reshape(-1, *self.shape)
        return torch.from_numpy(rows[self.index[idx, 0] // size])


#: progress lines (decoding, checking) only for splits of at least this many images: smaller ones
#: take about a second, and a line saying so would only stand between the user and an error
ANNOUNCE_FROM = 5000


def _say(msg: str) -> None:
    print(f"repact: {msg}", file=sys.stderr, flush=True)


def scan_unreadable(paths: Sequence[str], say: Callable[[str], None] = _say) -> dict[int, str]:
    """Decode every file once (no cache): index -> why it is unreadable, for ``--skip-bad-images``."""
    t0 = time.perf_counter()
    bad = {i: err for i, _, err in decode_files(paths) if err is not None}
    if len(paths) >= ANNOUNCE_FROM:
        say(f"checked {len(paths):,} images in {time.perf_counter() - t0:.0f} s ({len(bad)} unreadable)")
    return bad


def _build(tmp: Path, paths: Sequence[str], source: str) -> None:
    index = np.zeros((len(paths), 4), dtype=np.int64)
    bad: dict[str, str] = {}
    shapes: set[tuple[int, ...]] = set()
    crcs: list[int] = []
    offset = 0
    t0 = time.perf_counter()
    with open(tmp / "pixels.u8", "wb") as fh:
        for i, arr, err in decode_files(paths):
            if arr is None:
                bad[str(i)] = err
                index[i] = (offset, 0, 0, 0)
                continue
            data = arr.tobytes()
            fh.write(data)
            extend_crcs(crcs, offset, data)
            index[i] = (offset, *arr.shape)
            shapes.add(arr.shape)
            offset += arr.size
        fh.flush()
        os.fsync(fh.fileno())
    buf = io.BytesIO()
    np.save(buf, index)
    (tmp / "index.npy").write_bytes(buf.getvalue())
    meta = {"format": FORMAT, "n": len(paths), "bytes": offset, "bad": bad,
            "shape": list(next(iter(shapes))) if len(shapes) == 1 else None,
            "source": source, "chunk": CHUNK, "pixels_crc32": crcs,
            "index_blake2b": index_digest(buf.getvalue()),
            "decode_s": round(time.perf_counter() - t0, 3), "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    meta["digest"] = meta_digest(meta)
    with open(tmp / "meta.json", "w", encoding="utf-8") as fh:  # written last: the folder is complete
        fh.write(json.dumps(meta, indent=1) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _prune_same_source(root: Path, key: str, source: str | None) -> None:
    """Remove older caches of the same split (its files changed since they were built)."""
    if source is None:
        return
    for other in root.iterdir():
        if other.name == key or other.name.startswith(".") or not other.is_dir():
            continue
        try:
            meta = json.loads((other / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if meta.get("source") == source:
            shutil.rmtree(other, ignore_errors=True)


def _sound(folder: Path, n: int) -> DecodedImages | None:
    try:
        return DecodedImages(folder, n)
    except DamagedCache:
        return None


def open_decoded(split: Path, samples: Sequence[tuple[str, int]], classes: Sequence[str], mode: str,
                 say: Callable[[str], None] = _say) -> DecodedImages | None:
    """The split's decoded-image cache (found and verified, or built now), or None under ``off`` or
    when it does not fit. A damaged one is named and built afresh."""
    if mode not in CACHE_MODES:
        raise DataError(f"unknown cache mode {mode!r}; accepted: {', '.join(CACHE_MODES)}")
    if mode == "off" or not samples:
        return None
    from filelock import FileLock, Timeout

    root = cache_root()
    key = split_key(split, samples, classes, say)
    final = root / key
    if final.exists() and (cache := _sound(final, len(samples))) is not None:
        return cache
    paths = [p for p, _ in samples]
    need = estimate_bytes(paths)
    why = fits_rule(need, mode, root)
    if why is not None:
        if mode == "on":
            raise DataError(f"--cache on: cannot cache {split}: {why}")
        say(f"not caching {split}: {why}")
        return None
    (root / ".locks").mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / ".locks" / f"{key}.lock"))
    try:
        lock.acquire(timeout=1)
    except Timeout:
        say(f"waiting for another process to finish the decoded-image cache of {split}")
        lock.acquire()
    try:
        if final.exists():  # built by another process while we waited, or damaged
            try:
                return DecodedImages(final, len(samples))
            except DamagedCache as exc:
                say(f"{exc}; decoding {split} afresh")
            shutil.rmtree(final)
        for stale in root.glob(f".{key}.tmp-*"):  # left by a killed build (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = root / f".{key}.tmp-{os.getpid()}"
        tmp.mkdir()
        loud = len(paths) >= ANNOUNCE_FROM
        if loud:
            say(f"decoding {len(paths):,} images of {split} into {final} (about {need / 2**20:.0f} MiB), once")
        t0 = time.perf_counter()
        try:
            _build(tmp, paths, str(Path(split).resolve()))
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        cache = DecodedImages(final, len(samples))
        if loud:
            unreadable = f" ({len(cache.bad)} unreadable)" if cache.bad else ""
            say(f"decoded {len(paths):,} images in {time.perf_counter() - t0:.1f} s{unreadable}")
        _prune_same_source(root, key, cache.meta.get("source"))
        return cache
    finally:
        lock.release()
