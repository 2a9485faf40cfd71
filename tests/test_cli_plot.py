"""``repact plot act|layers|evolution|features|grads`` on real runs and torchvision models, every
format; ``repact train`` writes curves.png/activations.png and handles --tensorboard; bad input exits 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from analysis_fixtures import assert_picture, digit_png, rgb_png, shared_run
from train_fixtures import cli_env, run_cli
from repact.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own usage errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, " ".join(err.split())


def test_plot_act_in_a_real_process(tmp_path):
    out = tmp_path / "act.png"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "repact", "plot", "act", "repact", "hardswish", "repact_bn",
                           "--range", "-4", "4", "--out", str(out)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "repact: f(0) = 0.0000, f(1) = 0.9167, knots: -3, 0, 3" in proc.stdout
    assert "hardswish: f(0) = 0.0000, f(1) = 0.6667, knots: -3, 3" in proc.stdout
    assert_picture(out)


def test_plot_act_formats_and_tensor_values(tmp_path, capsys):
    rc, out, _ = _run(capsys, "plot", "act", "repact", "--param", "branch_weight=[0,0,0,1]", "--format", "svg",
                      "--out", tmp_path / "hs")
    assert rc == 0 and "f(1) = 0.6667" in out  # only the HardSwish branch: HardSwish
    assert_picture(tmp_path / "hs.svg")
    rc, _, _ = _run(capsys, "plot", "act", "gelu", "frelu", "--out", tmp_path / "a.pdf")
    assert rc == 0
    assert_picture(tmp_path / "a.pdf")


@pytest.mark.slow
def test_plot_layers_of_a_run_a_checkpoint_and_a_model_name(tmp_path, capsys):
    run = shared_run("small")
    rc, out, _ = _run(capsys, "plot", "layers", run, "--out", tmp_path / "run.png")
    assert rc == 0 and "3 activation layers (RepAct)" in out and "RepAct branch weights" in out
    assert_picture(tmp_path / "run.png")
    rc, out, _ = _run(capsys, "plot", "layers", run / "last.safetensors", "--out", tmp_path / "ckpt.png")
    assert rc == 0 and "3 activation layers (RepAct)" in out
    assert_picture(tmp_path / "ckpt.png")
    rc, out, _ = _run(capsys, "plot", "layers", "mobilenet_v3_small", "--act", "repact_softmax", "--num-classes", "10",
                      "--range", "-3", "3", "--out", tmp_path / "tv.png")
    assert rc == 0 and "identity 0.250, relu 0.250, prelu 0.250, hardswish 0.250" in out
    assert_picture(tmp_path / "tv.png")


def test_plot_evolution_of_runs(tmp_path, capsys):
    rc, out, _ = _run(capsys, "plot", "evolution", shared_run("small"), "--out", tmp_path / "e.png")
    assert rc == 0 and "3 layers x 4 epochs (0..3)" in out and "features.8: +0.396 ->" in out
    assert_picture(tmp_path / "e.png")
    rc, out, _ = _run(capsys, "plot", "evolution", shared_run("mnv3"), "--out", tmp_path / "m.pdf")
    assert rc == 0 and "23 layers x 3 epochs" in out
    assert_picture(tmp_path / "m.pdf")


@pytest.mark.slow
def test_plot_features_of_a_run_and_a_torchvision_model(tmp_path, capsys):
    img, _ = digit_png(tmp_path / "d.png", 5)
    rc, out, _ = _run(capsys, "plot", "features", shared_run("small"), img, "--layer", "features.2", "--top-k", "3",
                      "--out", tmp_path / "f.png")
    assert rc == 0 and "features.2 (RepAct): 512 input values, shape [1, 8, 8, 8]" in out
    assert_picture(tmp_path / "f.png")
    rgb = rgb_png(tmp_path / "rgb.png", 50)
    rc, out, _ = _run(capsys, "plot", "features", "resnet18", rgb, "--image-size", "32", "--layer", "layer1.0.act2",
                      "--out", tmp_path / "r.png")
    assert rc == 0 and "layer1.0.act2 (ReLU): 4096 input values, shape [1, 64, 8, 8]" in out and "[0, inf)" in out
    assert_picture(tmp_path / "r.png")
    rc, out, _ = _run(capsys, "plot", "features", shared_run("mnv3"), img, "--out", tmp_path / "m.png")
    assert rc == 0 and "features.0.2 (RepAct)" in out  # digits repeated to the model's 3 channels
    assert_picture(tmp_path / "m.png")


def test_plot_grads_of_several_runs(tmp_path, capsys):
    rc, out, _ = _run(capsys, "plot", "grads", shared_run("small"), shared_run("mnv3"), "--labels", "cnn,mnv3",
                      "--out", tmp_path / "g.png")
    assert rc == 0 and "cnn (grads.jsonl, 9 points)" in out and "mnv3 (grads.jsonl, 4 points)" in out
    assert_picture(tmp_path / "g.png")


def _has_tensorboard() -> bool:
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def test_train_writes_run_pictures_and_tensorboard_logs(tmp_path, capsys):
    run = shared_run("hardswish")
    assert_picture(run / "curves.png")
    assert_picture(run / "activations.png")
    if not _has_tensorboard():
        pytest.skip("tensorboard is not installed (test_tensorboard_without_the_package_is_refused_before_training "
                    "checks its absence)")
    rc, _, err = _run(capsys, "train", "--act", "repact", "--model-kw", "width=8", "--epochs", "1",
                      "--limit-batches", "2", "--quiet", "--tensorboard", "--out", tmp_path / "tb")
    assert rc == 0, err
    assert_picture(tmp_path / "tb" / "curves.png")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    acc.Reload()
    assert "activations" in acc.Tags()["images"] and {"val_acc1", "train_loss"} <= set(acc.Tags()["scalars"])


def test_tensorboard_without_the_package_is_refused_by_the_command(tmp_path):
    """In a real process where ``import tensorboard`` fails (a package on the path that raises, as a
    missing one does): one line, exit 2, nothing trained."""
    shadow = tmp_path / "shadow" / "tensorboard"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named tensorboard')\n")
    env = {**cli_env(), "PYTHONPATH": os.pathsep.join([str(shadow.parent), str(ROOT / "src")])}
    proc = run_cli("train", "--tensorboard", "--epochs", "1", "--out", str(tmp_path / "run"), env=env)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("repact train: error: --tensorboard needs the tensorboard package"), proc.stderr
    assert not (tmp_path / "run").exists()


def test_tensorboard_without_the_package_is_refused_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as where tensorboard is not installed
    (tmp_path / "tb.yaml").write_text("tensorboard: true\n")
    for argv in (["train", "--tensorboard", "--out", tmp_path / "run"],
                 ["train", "--config", tmp_path / "tb.yaml", "--out", tmp_path / "run"],
                 ["compare", "--acts", "relu", "--seeds", "0", "--tensorboard", "--out", tmp_path / "grid"]):
        rc, _, err = _run(capsys, *argv, "--epochs", "1", "--limit-batches", "1")
        assert rc == 2 and err.startswith(f"repact {argv[0]}: error: --tensorboard needs the tensorboard package"), err
        assert "pip install 'repact[tensorboard]'" in err and err.count("error:") == 1
    assert not (tmp_path / "run").exists() and not (tmp_path / "grid").exists()


@pytest.mark.parametrize("argv,words", [
    (["act", "nosuchact"], ["unknown activation 'nosuchact'"]),
    (["act", "acon_c", "repact", "--param", "beta_init=2"], ["repact:", "'beta_init'", "branch_weight, prelu_weight"]),
    (["act", "repact", "--range", "3", "-3"], ["LO < HI"]),
    (["act", "repact", "--out", "x.jpg"], ["unknown picture format .jpg"]),
    (["act", "repact", "--out", "x.png", "--format", "svg"], ["--format is svg"]),
    (["act", "repact", "--dpi", "5"], ["--dpi must lie in [10, 1200], got 5"]),
    (["act", "repact", "--points", "1000000000"], ["1000000000", "from 2 to 100,000"]),
    (["act", "repact", "--param", "branch_weight=abc"], ["branch_weight='abc'", "a number or a list of numbers"]),
    (["act", "repact", "--out", "/dev/null/x.png"], ["/dev/null is a file, not a folder"]),
    (["layers", "nosuchmodel"], ["neither a checkpoint", "nosuchmodel"]),
    (["evolution", "missing_run"], ["missing_run does not exist"]),
    (["grads", "missing_run"], ["missing_run does not exist"]),
])
def test_bad_input_exits_2_with_one_line(argv, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = _run(capsys, "plot", *argv)
    assert rc == 2 and err.startswith("repact plot: error:") and "Traceback" not in err
    for w in words:
        assert w in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_bad_run_input_exits_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = _run(capsys, "plot", "layers", empty)
    assert rc == 2 and "holds no best or last checkpoint" in err
    rc, _, err = _run(capsys, "plot", "evolution", shared_run("hardswish"), "--out", tmp_path / "e.png")
    assert rc == 2 and "no activation parameters" in err
    img, _ = digit_png(tmp_path / "d.png")
    rc, _, err = _run(capsys, "plot", "features", shared_run("small"), img, "--layer", "features.99",
                      "--out", tmp_path / "f.png")
    assert rc == 2 and "its activation layers are: features.2, features.5, features.8" in err
    rc, _, err = _run(capsys, "plot", "features", shared_run("small"), tmp_path / "nope.png", "--out", tmp_path / "f.png")
    assert rc == 2 and "nope.png does not exist" in err
    (tmp_path / "bad.png").write_text("not an image")
    rc, _, err = _run(capsys, "plot", "features", shared_run("small"), tmp_path / "bad.png", "--out", tmp_path / "f.png")
    assert rc == 2 and "cannot read" in err
    rc, _, err = _run(capsys, "plot", "layers", shared_run("small"), "--act", "relu", "--out", tmp_path / "l.png")
    assert rc == 2 and "records its own model" in err
    assert not (tmp_path / "f.png").exists() and not (tmp_path / "l.png").exists()


_GOOD_ACTS = '{"epoch": 0, "layers": {}}'
_GOOD_GRADS = '{"epochs": 0.5, "first_conv": 0.1}'


@pytest.mark.parametrize("name, content, words", [
    ("act_params.jsonl", bytes(range(256)), ["act_params.jsonl is not a log written by repact train", "UTF-8"]),
    ("act_params.jsonl", '{"epoch": "x", "layers": 5}\n', ["act_params.jsonl line 1", "a number under 'epoch'"]),
    ("act_params.jsonl", '{"epoch": 1, "layers": 5}\n', ["act_params.jsonl: the record of epoch 1", "'layers'"]),
    ("act_params.jsonl", f"{_GOOD_ACTS}\n[1, 2]\n{_GOOD_ACTS}\n", ["act_params.jsonl line 2", "'epoch'"]),
    ("act_params.jsonl", f"{_GOOD_ACTS}\n{{torn\n{_GOOD_ACTS}\n", ["act_params.jsonl line 2 is not JSON"]),
    ("grads.jsonl", "[1, 2, 3]\n", ["grads.jsonl line 1", "a number under 'epochs'"]),
    ("grads.jsonl", '{"step": 3}\n', ["grads.jsonl line 1", "'epochs'"]),
    ("grads.jsonl", f'{_GOOD_GRADS}\n{{"epochs": 1, "first_conv": "big"}}\n', ["grads.jsonl line 2", "'first_conv'"]),
])
def test_logs_no_run_writes_are_one_line_errors_naming_the_file(tmp_path, capsys, name, content, words):
    run = tmp_path / "run"
    shutil.copytree(shared_run("small"), run)
    (run / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    what = "evolution" if name == "act_params.jsonl" else "grads"
    rc, _, err = _run(capsys, "plot", what, run, "--out", tmp_path / "p.png")
    assert rc == 2 and err.startswith("repact plot: error:") and err.count("error:") == 1, err
    assert str(run / name) in err
    for w in words:
        assert w in err, (w, err)
    assert not (tmp_path / "p.png").exists()


def test_bad_logs_are_named_by_the_command_in_a_real_process(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(shared_run("small"), run)
    (run / "act_params.jsonl").write_bytes(bytes(range(256)) * 4)
    (run / "grads.jsonl").write_text('{"step": 3, "first_conv": 0.1}\n')
    for what, words in (("evolution", [f"{run / 'act_params.jsonl'} is not a log written by repact train",
                                       "not UTF-8"]),
                        ("grads", [f"{run / 'grads.jsonl'} line 1", "a number under 'epochs'"])):
        proc = run_cli("plot", what, str(run), "--out", str(tmp_path / "p.png"))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith("repact plot: error:") and proc.stderr.count("\n") == 1, proc.stderr
        for w in words:
            assert w in proc.stderr, (w, proc.stderr)
    assert not (tmp_path / "p.png").exists()


def test_a_torn_last_log_line_is_left_out(tmp_path, capsys):
    """A write cut off by a kill leaves a last line without its newline: the records before it are drawn."""
    run = tmp_path / "run"
    shutil.copytree(shared_run("small"), run)
    lines = (run / "grads.jsonl").read_text().splitlines()
    (run / "grads.jsonl").write_text("\n".join(lines) + '\n{"epochs": 9.5, "first_co')
    rc, out, err = _run(capsys, "plot", "grads", run, "--out", tmp_path / "g.png")
    assert rc == 0, err
    assert f"(grads.jsonl, {len(lines)} points)" in out


def test_non_finite_gradients_of_a_diverged_run_are_drawn(tmp_path, capsys):
    """A run that diverged logs NaN or Infinity gradient magnitudes (json writes them so): not an error."""
    run = tmp_path / "run"
    shutil.copytree(shared_run("small"), run)
    lines = (run / "grads.jsonl").read_text().splitlines()
    last = float(json.loads(lines[-1])["epochs"])
    bad = {"epochs": last + 0.5, **{k: float("nan") for k in json.loads(lines[-1]) if k not in ("epoch", "step",
                                                                                              "global_step", "epochs")}}
    (run / "grads.jsonl").write_text("\n".join(lines) + "\n" + json.dumps(bad) + "\n")
    assert "NaN" in (run / "grads.jsonl").read_text()
    rc, out, err = _run(capsys, "plot", "grads", run, "--out", tmp_path / "g.png")
    assert rc == 0, err
    assert f"(grads.jsonl, {len(lines) + 1} points)" in out
