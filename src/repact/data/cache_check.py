"""The decoded-image cache's content key and checksums (:mod:`repact.data.cache`): a split is keyed by
a hash of its files' bytes, and a cache folder is trusted only when its files match the checksums
written with them."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import zlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .common import DataError

__all__ = ["FORMAT", "CHUNK", "DamagedCache", "file_digest", "split_key", "verify", "extend_crcs", "index_digest",
           "meta_digest"]

FORMAT = 2
CHUNK = 64 * 2**20  # pixels.u8 is checksummed (crc32) per this many bytes


def file_digest(path: str | os.PathLike) -> bytes:
    """blake2b (16 bytes) of a file's bytes; of its OS error instead when it cannot be read (decoding
    will name that file as unreadable)."""
    h = hashlib.blake2b(digest_size=16)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        h.update(f"unreadable: {exc.errno}".encode())
        return h.digest()
    try:
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
    except OSError as exc:
        h.update(f"unreadable: {exc.errno}".encode())
    finally:
        os.close(fd)
    return h.digest()


#: hashing the files for the key says how long it took when it takes at least this many seconds
SLOW_KEY_S = 10.0


def split_key(split: Path, samples: Sequence[tuple[str, int]], classes: Sequence[str],
              say: Callable[[str], None] | None = None) -> str:
    """Hash of the split's contents: each image's path relative to the split, its label and a hash of
    its bytes (:func:`file_digest`), and the class list. Sizes and times are not trusted: a file
    replaced by other bytes of the same size and modification time gives another key."""
    t0 = time.perf_counter()
    h = hashlib.sha256(f"repact-decoded-v{FORMAT}\n".encode())
    h.update(json.dumps(list(classes)).encode())
    split = Path(split)
    prefix = f"{split}{os.sep}"
    for path, label in samples:
        rel = path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, split)  # relpath: 12 us
        h.update(f"\n{rel}\0{label}\0".encode())
        h.update(file_digest(path))
    took = time.perf_counter() - t0
    if say is not None and took >= SLOW_KEY_S:
        say(f"read the {len(samples):,} images of {split} in {took:.0f} s to find their decoded-image cache")
    return h.hexdigest()[:32]


class DamagedCache(DataError):
    """A decoded-image cache folder whose files do not match the checksums written with them."""


def _pixel_crcs(path: Path, nbytes: int, chunk: int) -> list[int]:
    """crc32 of each ``chunk`` bytes of the file (the last one shorter), read by a few threads."""
    starts = range(0, nbytes, chunk)

    def crc(start: int) -> int:
        fd = os.open(path, os.O_RDONLY)
        try:
            value, pos, end = 0, start, min(start + chunk, nbytes)
            while pos < end:
                data = os.pread(fd, min(1 << 24, end - pos), pos)
                if not data:
                    raise DamagedCache(f"pixels.u8 ends at byte {pos:,}, before the {nbytes:,} it was written with")
                value, pos = zlib.crc32(data, value), pos + len(data)
            return value
        finally:
            os.close(fd)

    if len(starts) <= 1:
        return [crc(st) for st in starts]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(len(starts), 4)) as pool:  # zlib and pread release the GIL
        return list(pool.map(crc, starts))


def index_digest(raw: bytes) -> str:
    """The checksum of ``index.npy``'s bytes."""
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def meta_digest(meta: dict) -> str:
    """The checksum of ``meta.json``'s content (every entry but ``digest``, which holds it)."""
    body = {k: v for k, v in meta.items() if k != "digest"}
    return hashlib.blake2b(json.dumps(body, sort_keys=True).encode(), digest_size=16).hexdigest()


def verify(folder: Path, n: int | None = None) -> tuple[dict, np.ndarray]:
    """(meta, index) of a cache folder whose files all match the checksums in its ``meta.json``
    (itself checksummed); :class:`DamagedCache` naming the folder and what is wrong otherwise."""
    folder = Path(folder)

    def damaged(why: str) -> DamagedCache:
        return DamagedCache(f"the decoded-image cache {folder} is damaged: {why}")

    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise damaged(f"meta.json cannot be read ({type(exc).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise damaged(f"meta.json is not of format {FORMAT}")
    if meta.get("digest") != meta_digest(meta):
        raise damaged("meta.json does not match its checksum")
    try:
        return meta, _verify_files(folder, meta, n)
    except DamagedCache as exc:
        raise damaged(str(exc)) from None


def _verify_files(folder: Path, meta: dict, n: int | None) -> np.ndarray:
    """The index of a folder whose ``meta.json`` is sound, once index.npy and pixels.u8 match it;
    :class:`DamagedCache` saying what is wrong otherwise."""
    if n is not None and meta["n"] != n:
        raise DamagedCache(f"it holds {meta['n']} images, the split {n}")
    try:
        raw = (folder / "index.npy").read_bytes()
    except OSError as exc:
        raise DamagedCache(f"index.npy cannot be read ({exc.strerror or exc})") from None
    if index_digest(raw) != meta["index_blake2b"]:
        raise DamagedCache("index.npy does not match its checksum")
    index = np.load(io.BytesIO(raw), allow_pickle=False)
    if index.shape != (meta["n"], 4) or index.dtype != np.int64:
        raise DamagedCache(f"index.npy holds a {index.dtype} array of shape {index.shape}")
    pixels = folder / "pixels.u8"
    try:
        size = pixels.stat().st_size
        if size != meta["bytes"]:
            raise DamagedCache(f"pixels.u8 holds {size:,} bytes, not the {meta['bytes']:,} it was written with")
        crcs = _pixel_crcs(pixels, size, meta["chunk"])
    except OSError as exc:
        raise DamagedCache(f"pixels.u8 cannot be read ({exc.strerror or exc})") from None
    bad = [i for i, (a, b) in enumerate(zip(crcs, meta["pixels_crc32"])) if a != b]
    if bad or len(crcs) != len(meta["pixels_crc32"]):
        at = bad[0] * meta["chunk"] if bad else 0
        raise DamagedCache(f"pixels.u8 does not match its checksum (bytes {at:,} to "
                           f"{min(at + meta['chunk'], size):,})")
    return index


def extend_crcs(crcs: list[int], offset: int, data: bytes) -> None:
    """Fold ``data``, written at byte ``offset``, into the running crc32 of each ``CHUNK`` bytes."""
    view = memoryview(data)
    while view:
        within = offset % CHUNK
        if within == 0:
            crcs.append(0)
        take = min(len(view), CHUNK - within)
        crcs[-1] = zlib.crc32(view[:take], crcs[-1])
        view, offset = view[take:], offset + take
