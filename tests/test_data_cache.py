"""The decoded-image cache: hit and miss, invalidation, unreadable files, identical batches, concurrent builders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from repact.data import DataError, UnreadableImage, build_datasets
import repact.data.cache as cache_module
from repact.data.cache import RAM_SHARE, _available_memory, _free_disk, cache_root, fits_rule, split_key
from repact.data.images import read_image
from train_fixtures import write_image_folder


def _folder(tmp_path: Path, **kw) -> Path:
    kw = {"per_class": 8, "val_per_class": 4, "size": 16, **kw}
    return write_image_folder(tmp_path / "imgs", **kw)


def _add_unreadable(root: Path) -> list[str]:
    """A truncated JPEG and a text file named .png; returns their paths."""
    from PIL import Image

    jpg = root / "train" / "dog" / "0100.jpg"
    Image.fromarray(np.full((16, 16, 3), 90, dtype=np.uint8)).save(jpg, quality=90)
    data = jpg.read_bytes()
    jpg.write_bytes(data[: len(data) // 2])
    txt = root / "train" / "owl" / "0101.png"
    txt.write_text("not an image\n")
    return [str(jpg), str(txt)]


@pytest.fixture(autouse=True)
def _announce_every_build(monkeypatch, tmp_path):
    """The fixture folders are tiny; the progress lines (a build's observable here) are kept for them.
    Each test has its own cache folder: the cache is keyed by content, and the tests' folders hold
    the same images."""
    monkeypatch.setattr(cache_module, "ANNOUNCE_FROM", 0)
    monkeypatch.setenv("REPACT_DATA_CACHE", str(tmp_path / "data-cache"))


def _batches(ds, seed: int = 3, batch_size: int = 5, workers: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(seed)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(seed))
    return [(x.clone(), y.clone()) for x, y in loader]


def _same_batches(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


def test_miss_builds_then_hit_reads_the_same_pixels(tmp_path, capsys):
    root = _folder(tmp_path)
    tr, va, _ = build_datasets("imagefolder", root, cache="on")
    err = capsys.readouterr().err
    assert err.count("decoding") == 2 and str(root / "train") in err  # a miss: both splits decoded once
    assert tr.decoded is not None and tr.decoded.dir.parent == cache_root()
    made = (tr.decoded.dir / "pixels.u8").stat().st_mtime_ns
    for mode in ("on", "auto"):
        tr2, va2, _ = build_datasets("imagefolder", root, cache=mode)
        assert "decoding" not in capsys.readouterr().err  # a hit
        assert tr2.decoded.dir == tr.decoded.dir and (tr2.decoded.dir / "pixels.u8").stat().st_mtime_ns == made
    for i in range(len(tr2)):
        assert torch.equal(tr2.pixels([i])[0], read_image(tr2.samples[i][0]))
    off, _, _ = build_datasets("imagefolder", root, cache="off")
    assert off.decoded is None and "decoding" not in capsys.readouterr().err


def test_a_changed_folder_invalidates_the_cache(tmp_path, capsys):
    from PIL import Image

    root = _folder(tmp_path)
    tr, _, _ = build_datasets("imagefolder", root, cache="on")
    old_dir = tr.decoded.dir
    target = Path(tr.samples[4][0])
    new = np.full((16, 16, 3), 7, dtype=np.uint8)
    Image.fromarray(new).save(target)
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a later mtime even on coarse-clock file systems
    capsys.readouterr()
    tr2, _, _ = build_datasets("imagefolder", root, cache="on")
    assert "decoding" in capsys.readouterr().err and tr2.decoded.dir != old_dir
    assert torch.equal(tr2.pixels([4])[0], torch.from_numpy(new).permute(2, 0, 1))
    assert not old_dir.exists()  # the stale copy of this split is removed
    # a new file changes the key too
    Image.fromarray(new).save(root / "train" / "cat" / "9999.png")
    tr3, _, _ = build_datasets("imagefolder", root, cache="on")
    assert tr3.decoded.dir != tr2.decoded.dir and len(tr3) == len(tr2) + 1


def test_unreadable_files_are_named_with_and_without_the_cache(tmp_path):
    root = _folder(tmp_path)
    bad = _add_unreadable(root)
    with pytest.raises(DataError) as e:
        build_datasets("imagefolder", root, cache="on")
    msg = str(e.value)
    assert all(b in msg for b in bad) and "cannot read 2 images under" in msg and "--skip-bad-images" in msg
    # without the cache the folder opens, and the batch that reaches a bad file names it, also from a worker
    tr, _, _ = build_datasets("imagefolder", root, cache="off")
    for workers in (0, 1):
        loader = DataLoader(tr, batch_size=len(tr), num_workers=workers)
        with pytest.raises(UnreadableImage) as e:
            next(iter(loader))
        msg = str(e.value)
        assert msg.startswith("cannot read image ") and bad[0] in msg and "--skip-bad-images" in msg
        assert "Traceback" not in msg and "\n" not in msg


def test_skip_bad_images_leaves_out_the_same_files_with_and_without_the_cache(tmp_path, capsys):
    root = _folder(tmp_path)
    bad = _add_unreadable(root)
    cached, val_c, info_c = build_datasets("imagefolder", root, cache="on", skip_bad_images=True)
    plain, val_p, info_p = build_datasets("imagefolder", root, cache="off", skip_bad_images=True)
    err = capsys.readouterr().err
    assert err.count("left out 2 unreadable image(s)") == 2
    assert info_c.skipped == info_p.skipped == bad
    assert cached.samples == plain.samples and len(cached) == 3 * 8 and info_c.train_size == 24
    assert _same_batches(_batches(cached), _batches(plain))


@pytest.mark.parametrize("augment, sizes, workers", [("crop-flip", None, 0), ("imagenet", (16, 20), 0),
                                                     ("crop-flip", None, 1)])
def test_identical_batches_with_and_without_the_cache(tmp_path, augment, sizes, workers):
    root = _folder(tmp_path)
    if sizes:  # images of two sizes: the cache stores them as they are (no uniform shape)
        other = write_image_folder(tmp_path / "other", per_class=3, val_per_class=2, size=sizes[1], seed=1)
        for p in other.rglob("*.png"):
            p.rename(root / p.relative_to(other).parent / ("b" + p.name))
    kw = {"augment": augment, "img_size": 12}
    cached, val_c, _ = build_datasets("imagefolder", root, cache="on", **kw)
    plain, val_p, _ = build_datasets("imagefolder", root, cache="off", **kw)
    assert cached.decoded is not None and plain.decoded is None
    assert (cached.decoded.shape is None) == bool(sizes)
    a, b = _batches(cached, workers=workers), _batches(plain, workers=workers)
    assert _same_batches(a, b)
    assert a[0][0].shape[1:] == (3, 12, 12) and a[0][0].dtype == torch.float32
    assert not _same_batches(a, _batches(cached, seed=4, workers=workers))  # the seed matters: augmentation is on
    assert _same_batches(_batches(val_c, workers=workers), _batches(val_p, workers=workers))


def test_concurrent_builders_wait_for_one_build(tmp_path):
    import hashlib
    import time

    from filelock import FileLock

    root = _folder(tmp_path, per_class=30, val_per_class=2, size=8)
    plain, _, _ = build_datasets("imagefolder", root, cache="off")
    key = split_key(root / "train", plain.samples, ["cat", "dog", "owl"])
    code = ("import sys, hashlib\n"
            "from repact.data import build_datasets\n"
            "import repact.data.cache as c\n"
            "c.ANNOUNCE_FROM = 0  # its progress lines tell who built\n"
            "tr, va, _ = build_datasets('imagefolder', sys.argv[1], cache='on')\n"
            "print(tr.decoded.dir.name, hashlib.sha256(tr.pixels(list(range(len(tr)))).numpy().tobytes()).hexdigest())\n")
    lock = FileLock(str(cache_root() / ".locks" / f"{key}.lock"))
    (cache_root() / ".locks").mkdir(parents=True, exist_ok=True)
    logs = [tmp_path / f"err{i}.txt" for i in range(2)]
    with lock:  # as if another process were building: both must wait, then one builds and one reads
        procs = [subprocess.Popen([sys.executable, "-c", code, str(root)], stdout=subprocess.PIPE,
                                  stderr=log.open("w"), text=True) for log in logs]
        deadline = time.time() + 240
        while not all("waiting for another process" in log.read_text() for log in logs):
            assert time.time() < deadline and all(p.poll() is None for p in procs), [lg.read_text() for lg in logs]
            time.sleep(0.2)
    outs = [p.communicate(timeout=300)[0] for p in procs]
    errs = [log.read_text() for log in logs]
    assert all(p.returncode == 0 for p in procs), errs
    assert len(set(outs)) == 1 and outs[0].split()[0] == key  # same cache, same pixels
    assert sum(e.count(f"images of {root / 'train'} into") for e in errs) == 1  # built once
    direct = torch.stack(plain.pixels(list(range(len(plain)))))
    assert outs[0].split()[1] == hashlib.sha256(direct.numpy().tobytes()).hexdigest()


def test_an_unfinished_build_is_never_used(tmp_path, capsys):
    root = _folder(tmp_path)
    tr, _, _ = build_datasets("imagefolder", root, cache="on")
    key = tr.decoded.dir.name
    assert key == split_key(root / "train", tr.samples, ["cat", "dog", "owl"])
    stale = cache_root() / f".{key}.tmp-999999"  # what a killed build leaves
    stale.mkdir()
    (stale / "pixels.u8").write_bytes(b"\0" * 10)
    (tr.decoded.dir / "meta.json").unlink()  # a folder without its completion record
    capsys.readouterr()
    tr2, _, _ = build_datasets("imagefolder", root, cache="on")
    assert "decoding" in capsys.readouterr().err and not stale.exists()
    assert json.loads((tr2.decoded.dir / "meta.json").read_text())["n"] == len(tr)
    assert torch.equal(tr2.pixels([0])[0], read_image(tr2.samples[0][0]))


def test_what_fits(tmp_path):
    avail = _available_memory()
    assert avail > 0
    above_ram = int(RAM_SHARE * avail) + 2**20
    why = fits_rule(above_ram, "auto", tmp_path)
    assert why is not None and "half the memory" in why and "--cache on" in why
    assert fits_rule(2**20, "auto", tmp_path) is None
    if _free_disk(tmp_path) > above_ram + 2 * 2**30:
        assert fits_rule(above_ram, "on", tmp_path) is None  # 'on' asks the disk only
    huge = 10**18
    for mode in ("auto", "on"):
        assert "GiB free" in fits_rule(huge, mode, tmp_path)
    with pytest.raises(DataError, match="unknown cache mode 'always'.*auto, on, off"):
        build_datasets("imagefolder", tmp_path, cache="always")


def test_a_small_split_builds_without_progress_lines(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cache_module, "ANNOUNCE_FROM", 5000)
    tr, _, _ = build_datasets("imagefolder", _folder(tmp_path), cache="on")
    assert tr.decoded is not None and capsys.readouterr().err == ""


def test_an_unreadable_image_under_the_cache_is_one_line_at_the_command_line(tmp_path):
    root = _folder(tmp_path)
    (root / "train" / "cat" / "broken.png").write_bytes(b"not an image")
    proc = subprocess.run([sys.executable, "-m", "repact", "train", "--dataset", "imagefolder", "--data-dir",
                           str(root), "--epochs", "1", "--limit-batches", "1", "--cache", "on", "--out",
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src")))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "broken.png" in proc.stderr and "--skip-bad-images" in proc.stderr


def test_build_datasets_draws_no_number_from_the_global_generators(tmp_path):
    """Building the cache (and the --skip-bad-images scan) leaves torch's RNG as it found it, so the
    model initialised after it is the same on the run that builds the cache as on every later one."""
    root = _folder(tmp_path)
    _add_unreadable(root)
    for cache in ("on", "on", "off"):  # a build, a hit, a scan without the cache
        before = torch.get_rng_state()
        build_datasets("imagefolder", root, cache=cache, skip_bad_images=True)
        assert torch.equal(torch.get_rng_state(), before), cache


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from repact.checkpoint import load_checkpoint

    return load_checkpoint(run / "last").model_state


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_the_run_that_builds_the_cache_trains_as_the_runs_that_read_or_skip_it(tmp_path):
    from train_fixtures import cli_env, run_cli

    root = _folder(tmp_path, ext=".jpg")
    env = cli_env(REPACT_DATA_CACHE=str(tmp_path / "fresh-cache"))
    runs = {}
    for name, cache in (("builds", "on"), ("reads", "on"), ("off", "off")):
        proc = run_cli("train", "--dataset", "imagefolder", "--data-dir", str(root), "--epochs", "1", "--batch-size",
                       "8", "--seed", "5", "--cache", cache, "--quiet", "--out", str(tmp_path / name), env=env)
        assert proc.returncode == 0, proc.stderr
        runs[name] = _weights(tmp_path / name)
    assert len(list((tmp_path / "fresh-cache").glob("[0-9a-f]*"))) == 2  # the first run built train and val
    assert _same_weights(runs["builds"], runs["reads"]) and _same_weights(runs["builds"], runs["off"])


def test_a_file_replaced_by_other_bytes_of_the_same_size_and_time_gives_its_new_pixels(tmp_path, capsys):
    """The key hashes each file's bytes: sizes and modification times are not trusted."""
    root = _folder(tmp_path, ext=".bmp")  # uncompressed: every 16 x 16 image file has the same size
    tr, _, _ = build_datasets("imagefolder", root, cache="on")
    target, donor = Path(tr.samples[4][0]), Path(tr.samples[9][0])
    st = target.stat()
    assert donor.stat().st_size == st.st_size and not torch.equal(read_image(target), read_image(donor))
    target.write_bytes(donor.read_bytes())
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    capsys.readouterr()
    tr2, _, _ = build_datasets("imagefolder", root, cache="on")
    assert "decoding" in capsys.readouterr().err and tr2.decoded.dir != tr.decoded.dir
    assert torch.equal(tr2.pixels([4])[0], read_image(donor))


def _damage(folder: Path, how: str) -> None:
    if how == "random bytes over pixels.u8":
        p = folder / "pixels.u8"
        p.write_bytes(np.random.default_rng(0).integers(0, 256, p.stat().st_size, dtype=np.uint8).tobytes())
    elif how == "truncated pixels.u8":
        p = folder / "pixels.u8"
        p.write_bytes(p.read_bytes()[:-100])
    elif how == "edited index.npy":  # an offset past the end of pixels.u8
        index = np.load(folder / "index.npy")
        index[3, 0] = 10**7
        np.save(folder / "index.npy", index)
    elif how == "edited meta.json":  # a readable image marked unreadable
        meta = json.loads((folder / "meta.json").read_text())
        meta["bad"] = {"2": "edited"}
        (folder / "meta.json").write_text(json.dumps(meta))
    elif how == "meta.json cut short":
        p = folder / "meta.json"
        p.write_text(p.read_text()[:40])


DAMAGES = ["random bytes over pixels.u8", "truncated pixels.u8", "edited index.npy", "edited meta.json",
           "meta.json cut short"]


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_cache_is_named_and_built_afresh(tmp_path, capsys, how):
    root = _folder(tmp_path)
    tr, _, _ = build_datasets("imagefolder", root, cache="on")
    folder = tr.decoded.dir
    _damage(folder, how)
    with pytest.raises(cache_module.DamagedCache, match=f"decoded-image cache {folder} is damaged"):
        cache_module.DecodedImages(folder, len(tr))
    capsys.readouterr()
    tr2, _, _ = build_datasets("imagefolder", root, cache="on")
    err = capsys.readouterr().err
    assert f"the decoded-image cache {folder} is damaged" in err and f"decoding {root / 'train'} afresh" in err
    assert tr2.decoded.dir == folder
    assert torch.equal(tr2.pixels(list(range(len(tr2)))), torch.stack([read_image(p) for p, _ in tr2.samples]))
    capsys.readouterr()
    build_datasets("imagefolder", root, cache="on")  # sound again: a hit
    assert "decoding" not in capsys.readouterr().err


@pytest.mark.slow
def test_a_damaged_cache_gives_the_run_of_a_sound_one_at_the_command_line(tmp_path):
    """'repact train' on damaged caches (random bytes over train's pixels.u8; val's cut short, which
    failed with 'mmap length is greater than file size'): each named once, decoded afresh, and the run
    trains the weights of the run on sound caches."""
    from train_fixtures import cli_env, run_cli

    root = _folder(tmp_path, ext=".jpg")
    env = cli_env(REPACT_DATA_CACHE=str(tmp_path / "cache"))
    args = ["train", "--dataset", "imagefolder", "--data-dir", str(root), "--epochs", "1", "--batch-size", "8",
            "--cache", "on", "--quiet"]
    assert run_cli(*args, "--out", str(tmp_path / "sound"), env=env).returncode == 0
    caches = {json.loads((d / "meta.json").read_text())["source"]: d for d in (tmp_path / "cache").iterdir()
              if d.is_dir() and not d.name.startswith(".")}
    train_cache, val_cache = caches[str((root / "train").resolve())], caches[str((root / "val").resolve())]
    _damage(train_cache, "random bytes over pixels.u8")
    _damage(val_cache, "truncated pixels.u8")
    proc = run_cli(*args, "--out", str(tmp_path / "after"), env=env)
    assert proc.returncode == 0, proc.stderr
    for folder in (train_cache, val_cache):
        assert proc.stderr.count(f"decoded-image cache {folder} is damaged") == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "mmap" not in proc.stderr
    assert _same_weights(_weights(tmp_path / "sound"), _weights(tmp_path / "after"))
