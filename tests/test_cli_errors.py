"""Errors at the command line: one line, exit 2 for bad input, 1 for a fault at run time, the full
traceback only with --debug; absurd sizes and impossible model arguments refused before anything is
allocated; crafted checkpoint headers refused with the file named; closed pipes end quietly."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from repact.cli import main
from train_fixtures import FAST, cli_env as _env, run_cli as _cli, run_main as _run

def _one_line(err: str, command: str) -> str:
    assert "Traceback" not in err, err
    assert err.count("\n") == 1 and err.startswith(f"repact {command}: error: "), err
    return err


# ------------------------------------------------------------------------------------------------
# sizes and model arguments
# ------------------------------------------------------------------------------------------------


def test_absurd_image_size_is_refused_before_allocating(tmp_path, capsys):
    t0 = time.perf_counter()
    rc, _, err = _run(capsys, "train", *FAST, "--img-size", "100000", "--out", str(tmp_path / "r"))
    assert rc == 2 and "img_size 100000" in _one_line(err, "train") and "1 to 4096" in err
    assert time.perf_counter() - t0 < 30 and not (tmp_path / "r").exists()


def test_absurd_image_size_is_refused_by_eval_before_loading(tmp_path, capsys):
    # checked before the checkpoint is even read: a missing one is not what the user hears about
    rc, _, err = _run(capsys, "eval", str(tmp_path / "no-such-run"), "--img-size", "100000")
    assert rc == 2 and "--img-size 100000" in _one_line(err, "eval") and "1 to 4096" in err


@pytest.mark.parametrize("model, kw, words", [
    ("small_cnn", "width=-5", ["width", "-5", "from 1"]),
    ("small_cnn", "width=0", ["width", "0"]),
    ("small_cnn", "width=abc", ["width", "'abc'"]),
    ("small_cnn", "width=1.5", ["width", "1.5"]),
    ("small_cnn", "dropout=2", ["dropout", "[0, 1)"]),
    ("small_cnn", "in_channels=-1", ["in_channels", "-1"]),
    ("small_cnn", "colour=1", ["colour", "in_channels, width, dropout"]),
    ("small_cnn", "width=200000", ["parameters", "GiB", "smaller model arguments"]),
    ("mobilenet_v3_small", "small_input=maybe", ["small_input", "true or false", "'maybe'"]),
    ("mobilenet_v3_small", "dropout=-0.1", ["dropout", "-0.1"]),
    ("mobilenet_v2", "width_mult=-1", ["width_mult", "-1"]),
])
def test_impossible_model_arguments_are_refused_before_allocating(tmp_path, capsys, model, kw, words):
    t0 = time.perf_counter()
    rc, _, err = _run(capsys, "train", *FAST, "--model", model, "--model-kw", kw, "--out", str(tmp_path / "r"))
    assert rc == 2
    _one_line(err, "train")
    for w in words:
        assert w in err, (w, err)
    assert time.perf_counter() - t0 < 60 and not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------------
# crafted checkpoint headers
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ck") / "run"
    assert main(["train", *FAST, "--out", str(run)]) == 0
    return run / "last.safetensors"


def _craft(src: Path, dst: Path, change) -> Path:
    with safe_open(str(src), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        header = json.loads(f.metadata()["repact"])
    header = change(header)
    save_file(tensors, str(dst), metadata={"repact": json.dumps(header)})
    return dst


def _set(path: str, value):
    def change(h):
        node = h
        *keys, last = path.split(".")
        for k in keys:
            node = node[k]
        node[last] = value
        return h

    return change


CRAFTED = {
    "header_is_a_list": lambda h: [h],
    "model_config_is_a_list": _set("model_config", ["small_cnn"]),
    "state_is_a_string": _set("state", "x"),
    "version_is_text": _set("version", "one"),
    "name_is_a_number": _set("model_config.name", 5),
    "kwargs_is_a_list": _set("model_config.kwargs", [1, 2]),
    "input_shape_negative": _set("model_config.input_shape", [1, -8, 8]),
    "num_classes_is_text": _set("model_config.num_classes", "ten"),
    "list_tag_is_a_number": _set("state.history", {"__list__": 5}),
    "tensor_tag_is_a_list": _set("state.rng", {"__tensor__": [1]}),
    "epoch_is_text": _set("state.epoch", "abc"),
    "config_is_a_list": _set("state.config", ["lr", 0.1]),
    "optimizer_is_a_number": _set("state.optimizer", 3),
    "config_lr_is_text": _set("state.config.lr", "fast"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_checkpoint_headers_are_refused_with_the_file_named(real_checkpoint, tmp_path, capsys, case):
    bad = _craft(real_checkpoint, tmp_path / f"{case}.safetensors", CRAFTED[case])
    before = bad.read_bytes()
    commands = [["train", "--resume", str(bad), "--out", str(tmp_path / "r")]]
    if case not in ("epoch_is_text", "config_is_a_list", "optimizer_is_a_number", "config_lr_is_text"):
        commands.append(["eval", str(bad)])  # eval reads the weights and model config only
    for argv in commands:
        rc, _, err = _run(capsys, *argv)
        assert rc == 2, (argv, err)
        assert str(bad) in _one_line(err, argv[0]), err
    assert bad.read_bytes() == before and not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------------
# pipes, --debug, run-time faults
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["acts"], ["acts", "--json"], ["--help"], ["train", "--help"]])
def test_output_into_a_closed_pipe_ends_quietly(argv):
    proc = subprocess.Popen([sys.executable, "-m", "repact", *argv], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader went away before a byte was written (as `| head` does)
    err = proc.stderr.read()
    rc = proc.wait(timeout=300)
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err
    assert rc in (0, 141)


@pytest.mark.slow
def test_debug_flag_and_environment_show_the_traceback(tmp_path):
    argv = ["train", "--img-size", "100000", "--out", str(tmp_path / "r")]
    plain = _cli(*argv)
    assert plain.returncode == 2 and "img_size" in _one_line(plain.stderr, "train")
    for proc in (_cli(*argv, "--debug"), _cli("--debug", *argv), _cli(*argv, env=_env(REPACT_DEBUG="1"))):
        assert proc.returncode != 0
        assert "Traceback (most recent call last)" in proc.stderr and "ConfigError: img_size" in proc.stderr


@pytest.mark.slow
def test_a_fault_at_run_time_is_one_line_exit_1_pointing_at_debug(tmp_path):
    """A real out-of-memory: the process may map 6 GiB, the model's weights need more."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

    argv = ["train", *FAST, "--model-kw", "width=4000", "--out", str(tmp_path / "r")]
    proc = _cli(*argv, preexec_fn=limit)
    assert proc.returncode == 1, proc.stderr
    err = _one_line(proc.stderr, "train")
    assert "RuntimeError" in err and "allocate" in err and "--debug" in err
    assert not (tmp_path / "r").exists()
    proc = _cli(*argv, "--debug", preexec_fn=limit)
    assert proc.returncode == 1 and "Traceback (most recent call last)" in proc.stderr


def test_usage_errors_are_one_line(capsys):
    rc, _, err = _run(capsys, "train", "--epochs", "many")
    assert rc == 2 and err.count("\n") == 1 and "'many'" in err and "--help" in err
    rc, _, err = _run(capsys, "acts", "--family", "nope")
    assert rc == 2 and "'nope'" in _one_line(err, "acts") and "repact" in err


# ------------------------------------------------------------------------------------------------
# outputs that would mix into a run folder
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_deploy_refuses_a_run_folder_and_folders_inside_one(real_checkpoint):
    """Deploy files in a run folder (or a folder in it) would make repact train refuse to replace or resume it."""
    from repact.train.run_dir import inspect_folder

    run = real_checkpoint.parent
    before = sorted(p.name for p in run.iterdir())
    for out, words in ((run, ["is the run folder", f"{run}-deploy"]), (run / "deploy", ["lies in the run folder"])):
        proc = _cli("deploy", str(run), "--out", str(out))
        assert proc.returncode == 2 and str(out) in _one_line(proc.stderr, "deploy"), proc.stderr
        for w in words:
            assert w in proc.stderr, (w, proc.stderr)
    assert sorted(p.name for p in run.iterdir()) == before and inspect_folder(run).kind == "run"
    assert main(["train", *FAST, "--out", str(run), "--overwrite"]) == 0  # still a run folder train replaces
