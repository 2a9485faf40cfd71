"""``repact cam`` on real runs (plain image files, preprocessed as each checkpoint records) and on a
torchvision model by name; bad input exits 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from analysis_fixtures import assert_picture, digit_png, rgb_png, shared_run
from repact.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, " ".join(err.split())


def test_cam_compares_two_runs_in_a_real_process(tmp_path):
    imgs = [digit_png(tmp_path / f"d{i}.png", i) for i in range(2)]
    out = tmp_path / "cam.png"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "repact", "cam", str(shared_run("small")), *[str(p) for p, _ in imgs],
                           "--compare", str(shared_run("hardswish")), "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if " | " in ln]
    assert len(lines) == 4  # 2 images x 2 checkpoints
    assert lines[0].startswith("d0.png | repact:") and lines[1].startswith("d0.png | hardswish:")
    assert all("layer features" in ln for ln in lines)
    assert_picture(out)


def test_cam_on_a_torchvision_model_and_a_mobilenet_run(tmp_path, capsys):
    rgb = rgb_png(tmp_path / "rgb.png", 48)
    rc, out, _ = _run(capsys, "cam", "mobilenet_v3_small", rgb, "--act", "repact", "--num-classes", "10",
                      "--image-size", "64", "--method", "gradcam++", "--class", "4", "--out", tmp_path / "tv.svg")
    assert rc == 0 and "rgb.png | mobilenet_v3_small repact: class 4 (class 4)" in out and "layer features.12" in out
    assert_picture(tmp_path / "tv.svg")
    img, _ = digit_png(tmp_path / "d.png", 7)
    rc, out, _ = _run(capsys, "cam", shared_run("mnv3"), img, "--method", "eigencam", "--layer", "features.9",
                      "--out", tmp_path / "m.png")
    assert rc == 0 and "layer features.9" in out
    assert_picture(tmp_path / "m.png")


@pytest.mark.parametrize("extra,words", [
    (["--method", "nosuch"], ["unknown CAM method 'nosuch'", "gradcam++"]),
    (["--layer", "features.99"], ["--layer 'features.99' is not a module"]),
    (["--class", "10"], ["class 10 is out of range", "10 classes"]),
    (["--out", "c.gif"], ["unknown picture format .gif"]),
])
def test_bad_input_exits_2(extra, words, tmp_path, capsys, monkeypatch):
    img, _ = digit_png(tmp_path / "d.png")
    monkeypatch.chdir(tmp_path)
    rc, _, err = _run(capsys, "cam", shared_run("small"), img, *extra)
    assert rc == 2 and err.startswith("repact cam: error:") and "Traceback" not in err
    for w in words:
        assert w in err
    assert not list(tmp_path.glob("*.png")) or [p.name for p in tmp_path.glob("*.png")] == ["d.png"]


def test_missing_image_and_checkpoint(tmp_path, capsys):
    rc, _, err = _run(capsys, "cam", shared_run("small"), tmp_path / "nope.png", "--out", tmp_path / "c.png")
    assert rc == 2 and "nope.png does not exist" in err
    img, _ = digit_png(tmp_path / "d.png")
    rc, _, err = _run(capsys, "cam", tmp_path / "nothing.safetensors", img, "--out", tmp_path / "c.png")
    assert rc == 2 and "nothing" in err
    assert not (tmp_path / "c.png").exists()
