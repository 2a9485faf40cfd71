"""An unreadable image in an ImageFolder, as a user meets it on the command line: named, or skipped and counted."""

from __future__ import annotations

import json

import cli_process

from repact.checkpoint import load_checkpoint
from repact.cli import main
from test_data_cache import _add_unreadable
from train_fixtures import write_image_folder

TRAIN = ["train", "--dataset", "imagefolder", "--model", "small_cnn", "--epochs", "1", "--batch-size", "8",
         "--quiet"]


def _repact(*argv: str):
    return cli_process.run(argv)


def _main(capsys, *argv: str):
    rc = main(list(argv))
    return rc, capsys.readouterr().err


def test_unreadable_images_are_named_or_skipped(tmp_path, capsys):
    root = write_image_folder(tmp_path / "imgs", per_class=6, val_per_class=3, size=16)
    bad = _add_unreadable(root)
    # without the cache, read by a loader worker while training: the file is named, no traceback, exit 2
    p = _repact(*TRAIN, "--data-dir", str(root), "--cache", "off", "--workers", "1", "--out", str(tmp_path / "a"))
    assert p.returncode == 2, p.stderr[-3000:]
    assert "Traceback" not in p.stderr and p.stderr.startswith("repact train: error: cannot read image")
    assert any(b in p.stderr for b in bad) and "--skip-bad-images" in p.stderr
    # with the cache: every unreadable file is named before training starts
    rc, err = _main(capsys, *TRAIN, "--data-dir", str(root), "--cache", "on", "--out", str(tmp_path / "b"))
    assert rc == 2 and "repact train: error: cannot read 2 images under" in err and "Traceback" not in err
    assert all(b in err for b in bad)
    # --skip-bad-images: the same two files are left out and counted, with and without the cache
    for cache in ("on", "off"):
        out = tmp_path / f"skip-{cache}"
        rc, err = _main(capsys, *TRAIN, "--data-dir", str(root), "--cache", cache, "--skip-bad-images",
                        "--out", str(out))
        assert rc == 0 and "left out 2 unreadable image(s)" in err
        assert json.loads((out / "summary.json").read_text())["complete"]
        data = load_checkpoint(out / "last").state["data"]  # recorded with the run
        assert data["skipped"] == bad and data["train_size"] == 3 * 6


def test_a_zeroed_jpeg_is_the_same_error_or_skip_with_any_cache_mode(tmp_path, capsys, monkeypatch):
    """A JPEG overwritten with zeros after its folder was cached (same size, same modification time):
    every --cache mode names it in the same one-line error, or leaves it out with --skip-bad-images."""
    import os

    monkeypatch.setenv("REPACT_DATA_CACHE", str(tmp_path / "cache"))
    root = write_image_folder(tmp_path / "imgs", per_class=6, val_per_class=3, size=16, ext=".jpg")
    args = [*TRAIN, "--data-dir", str(root)]
    rc, err = _main(capsys, *args, "--cache", "on", "--out", str(tmp_path / "before"))
    assert rc == 0, err
    zeroed = root / "train" / "dog" / "0002.jpg"
    st = zeroed.stat()
    zeroed.write_bytes(bytes(st.st_size))
    os.utime(zeroed, ns=(st.st_atime_ns, st.st_mtime_ns))
    errors = {}
    for cache in ("on", "auto", "off"):
        rc, err = _main(capsys, *args, "--cache", cache, "--out", str(tmp_path / cache))
        assert rc == 2, err
        errors[cache] = err
    assert errors["on"] == errors["auto"] == errors["off"], errors
    line = errors["on"].strip()
    assert "\n" not in line and line.startswith(f"repact train: error: cannot read image {zeroed} (")
    assert "--skip-bad-images" in line
    for cache in ("on", "auto", "off"):
        out = tmp_path / f"skip-{cache}"
        rc, err = _main(capsys, *args, "--cache", cache, "--skip-bad-images", "--out", str(out))
        assert rc == 0 and "left out 1 unreadable image(s)" in err, err
        data = load_checkpoint(out / "last").state["data"]
        assert data["skipped"] == [str(zeroed)] and data["train_size"] == 3 * 6 - 1
