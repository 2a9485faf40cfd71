"""What `repact deploy`, `verify`, `eval` and `bench` refuse or fail on, as a user meets it: earlier
deploys are not replaced without --overwrite, non-finite weights or logits never pass, a model with
nothing to fuse is named, the input shape comes from the model, and the files written are what
the command says (exit 2 for bad input, 1 for a failed check; one message, no traceback)."""

import json
import os
from pathlib import Path

import pytest
import torch

import cli_process

import repact
from repact import PiecewiseQuadratic, RepAct
from repact.checkpoint import build_model, load_checkpoint, save_checkpoint
from repact.cli import main
from repact.deploy import export_onnx
from repact.models import create_model

SRC = Path(__file__).resolve().parents[1] / "src"
SMALL = ["--image-size", "8"]


def _cli(*argv, cwd=None):
    """The real command in a fresh process: (exit code, stdout, stderr)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    env.pop("REPACT_DEBUG", None)
    p = cli_process.run(argv, env=env, cwd=cwd)
    return p.returncode, p.stdout, p.stderr


def _run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _one_message(err: str) -> str:
    """The error as one line: no traceback, one 'repact ...' or 'FAILED' message (wrapped lines joined)."""
    assert "Traceback" not in err, err
    starts = [line for line in err.splitlines() if line.startswith(("repact ", "FAILED"))]
    assert len(starts) == 1, err
    return " ".join(err.split())


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _digits_checkpoint(path: Path, act="repact_bn", poison=None) -> Path:
    """A small_cnn checkpoint for the digits data (8x8, 1 channel) as `repact train` records it."""
    torch.manual_seed(0)
    model = create_model("small_cnn", act=act, num_classes=10)
    model.eval()(torch.zeros(1, 1, 8, 8))
    repact.randomize_batchnorm_(model, seed=1)
    if poison:
        with torch.no_grad():
            poison(model)
    cfg = {"name": "small_cnn", "act": act, "num_classes": 10, "kwargs": {"in_channels": 1}, "input_shape": [1, 8, 8]}
    save_checkpoint(path, model, model_config=cfg, state={"config": {"dataset": "digits", "img_size": 8}})
    return path.with_name(path.name + ".safetensors")


# --- point 6: deploy does not replace an earlier deploy without --overwrite -------------------------


def test_deploy_refuses_to_replace_earlier_files_without_overwrite(tmp_path, capsys):
    out = tmp_path / "d"
    rc, _, err = _run(capsys, "deploy", "small_cnn", "--act", "repact", *SMALL, "--out", str(out))
    assert rc == 0, err
    before = _snapshot(out)
    assert sorted(before) == ["model.onnx", "model_deploy.json", "model_deploy.safetensors", "model_deploy_report.json"]
    rc, out_text, err = _cli("deploy", "small_cnn", "--act", "repact_bn", *SMALL, "--out", str(out))
    msg = _one_message(err)
    assert rc == 2 and "already holds model.onnx, model_deploy.safetensors" in msg and "--overwrite" in msg
    assert _snapshot(out) == before  # nothing replaced
    (out / "model_deploy_report.json").unlink()  # one file of a deploy is enough to refuse
    (out / "other.onnx").write_bytes(b"keep")
    rc, _, err = _run(capsys, "deploy", "small_cnn", "--act", "repact_bn", *SMALL, "--out", str(out))
    assert rc == 2 and "already holds model.onnx" in _one_message(err)
    rc, _, err = _run(capsys, "deploy", "small_cnn", "--act", "repact_bn", *SMALL, "--out", str(out), "--overwrite")
    assert rc == 0, err
    after = _snapshot(out)
    assert after["model.onnx"] != before["model.onnx"] and after["other.onnx"] == b"keep"
    assert json.loads(after["model_deploy_report.json"])["model_config"]["act"] == "repact_bn"


# --- point 8: non-finite weights or logits never pass -----------------------------------------------


def _nan_weight(m):
    m.features[0].weight[0, 0, 0, 0] = float("nan")


def _huge_weights(m):  # finite weights whose logits overflow to inf / NaN
    m.features[3].weight.mul_(1e30)
    m.features[6].weight.mul_(1e30)


def test_verify_deploy_and_eval_refuse_non_finite_weights(tmp_path, capsys):
    # one check as the checkpoint is loaded (repact.checkpoint.build_model): bad input, exit 2, nothing written
    ckpt = _digits_checkpoint(tmp_path / "nan", poison=_nan_weight)
    rc, out, err = _cli("verify", str(ckpt))
    msg = _one_message(err)
    assert rc == 2 and f"{ckpt} holds non-finite weights (NaN/inf): features.0.weight (1 of" in msg and out == ""
    rc, out, err = _run(capsys, "deploy", str(ckpt), "--out", str(tmp_path / "d"))
    assert rc == 2 and "features.0.weight" in _one_message(err)
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())
    rc, out, err = _run(capsys, "eval", str(ckpt), "--reparameterize", "--save-reparameterized", str(tmp_path / "s"))
    assert rc == 2 and "features.0.weight" in _one_message(err) and not list(tmp_path.glob("s.*"))
    bn = _digits_checkpoint(tmp_path / "bn", poison=lambda m: m.features[1].running_var.fill_(float("inf")))
    rc, out, err = _run(capsys, "verify", str(bn), "--keep-bn")
    assert rc == 2 and "features.1.running_var" in _one_message(err)


def test_verify_deploy_and_eval_fail_on_non_finite_logits(tmp_path, capsys):
    ckpt = _digits_checkpoint(tmp_path / "huge", poison=_huge_weights)
    assert not repact.reparam.nonfinite_tensors(build_model(ckpt))  # the weights themselves are finite
    rc, out, err = _run(capsys, "verify", str(ckpt), "--keep-bn")
    msg = _one_message(err)
    assert rc == 1 and "FAILED: not finite: reference output 0 holds" in msg and "OK" not in out.splitlines()
    rc, out, err = _run(capsys, "deploy", str(ckpt), "--out", str(tmp_path / "d"))
    msg = _one_message(err)
    assert rc == 1 and "the logits are not finite: reference output 0 holds" in msg and "nothing was written" in msg
    rc, out, err = _run(capsys, "eval", str(ckpt), "--reparameterize", "--save-reparameterized", str(tmp_path / "s"))
    msg = _one_message(err)
    assert rc == 1 and "the logits of the model hold" in msg and "nothing written" in msg
    assert not list(tmp_path.glob("s.*"))


# --- point 9: nothing to re-parameterize ------------------------------------------------------------


@pytest.mark.parametrize("act,kind", [("acon_c", "AconC"), ("gelu", "GELU")])
def test_deploy_of_a_model_with_nothing_to_fuse_names_its_activations(tmp_path, capsys, act, kind):
    out = tmp_path / "d"
    rc, _, err = _run(capsys, "deploy", "small_cnn", "--act", act, *SMALL, "--out", str(out))
    msg = _one_message(err)
    assert rc == 2 and "nothing to re-parameterize" in msg and f"3 x {kind} (features.2, features.5, features.8)" in msg
    assert "--allow-unfused" in msg and not out.exists()
    rc, text, err = _run(capsys, "deploy", "small_cnn", "--act", act, *SMALL, "--out", str(out), "--allow-unfused")
    assert rc == 0, err
    report = json.loads((out / "model_deploy_report.json").read_text())
    assert report["already_reparameterized"] is False and report["reparameterized_activations"] == 0
    assert report["unfused_activations"] == {kind: 3}
    # a deployed model is "already re-parameterized", and deploys again without --allow-unfused
    rc, _, err = _run(capsys, "deploy", "small_cnn", "--act", "repact", *SMALL, "--out", str(tmp_path / "r"))
    assert rc == 0, err
    first = json.loads((tmp_path / "r" / "model_deploy_report.json").read_text())
    assert first["already_reparameterized"] is False and first["reparameterized_activations"] == 3
    assert first["unfused_activations"] == {}
    rc, _, err = _run(capsys, "deploy", str(tmp_path / "r" / "model_deploy.safetensors"), "--out", str(tmp_path / "r2"))
    assert rc == 0, err
    again = json.loads((tmp_path / "r2" / "model_deploy_report.json").read_text())
    assert again["already_reparameterized"] is True and again["reparameterized_activations"] == 0


# --- point 10: verify against the literal branch sum ------------------------------------------------


def test_verify_cli_reference_branches(capsys):
    rc, out, err = _run(capsys, "verify", "small_cnn", "--act", "repact_bn", *SMALL, "--randomize-acts",
                        "--reference", "branches", "--json")
    res = json.loads(out)
    assert rc == 0 and res["ok"] and res["reference"] == "branches" and res["max_rel"] <= 1e-5
    rc, out, err = _run(capsys, "verify", "small_cnn", "--act", "acon_c", *SMALL, "--reference", "branches")
    assert rc == 2 and "has no RepAct" in _one_message(err)
    rc, out, err = _run(capsys, "verify", "small_cnn", "--act", "acon_c", *SMALL)  # an OK that says what it means
    assert rc == 0 and "note: nothing to re-parameterize; the deploy form is the model itself (3 x AconC" in out


# --- point 11: input shape from the model; files that are not ONNX -----------------------------------


def test_input_shape_comes_from_the_model_or_is_named(tmp_path, capsys):
    rc, out, err = _run(capsys, "verify", "small_cnn", "--act", "repact", "--json")
    assert rc == 0 and json.loads(out)["input_shape"] == [1, 32, 32], err  # small_cnn takes 1 channel
    rc, out, err = _run(capsys, "verify", "small_cnn", "--act", "repact", "--image-size", "12", "--json")
    assert rc == 0 and json.loads(out)["input_shape"] == [1, 12, 12]
    rc, out, err = _run(capsys, "deploy", "small_cnn", "--act", "repact", "--input-shape", "3", "8", "8",
                        "--out", str(tmp_path / "d"))
    msg = _one_message(err)
    assert rc == 2 and "does not run on input shape (3, 8, 8); its first layer takes 1 channel(s)" in msg
    assert "--input-shape 1 8 8" in msg and not (tmp_path / "d").exists()
    rc, out, err = _run(capsys, "verify", "mobilenet_v3_small", "--act", "repact", "--input-shape", "3", "9000", "9000")
    assert rc == 2 and "at most 268,435,456" in _one_message(err)


def test_onnx_file_that_is_not_onnx_is_named(tmp_path, capsys):
    bad = tmp_path / "model.onnx"
    bad.write_text("not a protobuf")
    rc, out, err = _run(capsys, "verify", "small_cnn", "--act", "repact", *SMALL, "--keep-bn", "--onnx", str(bad))
    msg = _one_message(err)
    assert rc == 2 and f"--onnx {bad} is not an ONNX model onnxruntime can load" in msg
    other = export_onnx(create_model("small_cnn", num_classes=10, in_channels=3).eval(), torch.randn(1, 3, 8, 8),
                        tmp_path / "other.onnx")  # a real ONNX file of another model: 3 channels
    rc, out, err = _run(capsys, "verify", "small_cnn", "--act", "repact", *SMALL, "--keep-bn", "--onnx", str(other))
    assert rc == 2 and f"--onnx {other} does not run on input (4, 1, 8, 8)" in _one_message(err)


# --- point 12: eval --save-reparameterized writes what it says -----------------------------------------


def test_eval_save_reparameterized_writes_the_deploy_model_and_it_evaluates_equal(tmp_path, capsys):
    ckpt = _digits_checkpoint(tmp_path / "trained")
    target = tmp_path / "out" / "deployed"
    rc, out, err = _run(capsys, "eval", str(ckpt), "--save-reparameterized", str(target), "--json")
    assert rc == 0, err
    first = json.loads(out)
    assert first["written"] == [str(target) + ".safetensors", str(target) + ".json"]
    loaded = load_checkpoint(target)
    assert loaded.model_config["reparameterized"] is True and loaded.model_config["act"] == "repact_bn"
    model = build_model(loaded)
    assert sum(isinstance(m, PiecewiseQuadratic) for m in model.modules()) == 3
    assert not any(isinstance(m, RepAct) for m in model.modules())
    rc, out, err = _run(capsys, "eval", str(target) + ".safetensors", "--json")
    assert rc == 0, err
    again = json.loads(out)["results"][0]
    deployed_row = first["results"][1]
    assert {k: again[k] for k in ("acc1", "acc5", "loss", "n")} == {k: deployed_row[k] for k in ("acc1", "acc5", "loss", "n")}
    # it never replaces the checkpoint it evaluates, nor an existing file without --overwrite
    src_bytes = ckpt.read_bytes()
    rc, out, err = _run(capsys, "eval", str(ckpt), "--save-reparameterized", str(ckpt))
    assert rc == 2 and "would replace the checkpoint being evaluated" in _one_message(err)
    assert ckpt.read_bytes() == src_bytes
    rc, out, err = _run(capsys, "eval", str(ckpt), "--save-reparameterized", str(target))
    assert rc == 2 and "already exist" in _one_message(err) and "--overwrite" in err
    rc, out, err = _run(capsys, "eval", str(ckpt), "--save-reparameterized", str(target), "--overwrite")
    assert rc == 0, err
    rc, out, err = _run(capsys, "eval", str(ckpt), "--save-reparameterized", str(tmp_path))
    assert rc == 2 and "is a folder" in _one_message(err)


# --- issue 13 point 5: bench --device cuda -----------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU (the sweep runs it "
                    "in a subprocess)")
def test_bench_device_cuda_without_a_gpu_is_one_clear_line(tmp_path, capsys):
    rc, out, err = _run(capsys, "bench", "small_cnn", "--device", "cuda", "--json", str(tmp_path / "b.json"))
    msg = _one_message(err)
    assert rc == 2 and "--device cuda: torch sees no CUDA GPU on this machine" in msg and "--device cpu" in msg
    assert not (tmp_path / "b.json").exists()


# --- issue 24 point 3: bench --cuda-graphs ------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
@pytest.mark.parametrize("flags,words", [
    (["--cuda-graphs"], "--cuda-graphs replays CUDA graphs and needs --device cuda; this run is on cpu"),
    (["--engines", "eager", "reduce-overhead"], "engine 'reduce-overhead' replays CUDA graphs and needs --device cuda"),
    (["--device", "cuda", "--cuda-graphs"], "--device cuda: torch sees no CUDA GPU on this machine"),
])
def test_bench_cuda_graphs_on_a_cpu_only_machine_is_one_clear_line(tmp_path, capsys, flags, words):
    rc, out, err = _run(capsys, "bench", "small_cnn", *flags, "--json", str(tmp_path / "b.json"))
    assert rc == 2 and words in _one_message(err)
    assert not (tmp_path / "b.json").exists()


# --- --onnx-form: the choices are the export forms' one list ------------------------------------------


@pytest.mark.parametrize("command", ["deploy", "bench"])
def test_an_unknown_onnx_form_is_one_line_naming_every_export_form(tmp_path, command):
    from repact.deploy import ONNX_FORMS
    from train_fixtures import run_cli

    argv = [command, "small_cnn", "--onnx-form", "bogus"] + (["--out", str(tmp_path / "d")] if command == "deploy" else [])
    proc = run_cli(*argv, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "--onnx-form: invalid choice: 'bogus'" in lines[0]
    assert "clamp" in ONNX_FORMS and all(f"'{form}'" in lines[0] for form in ONNX_FORMS)
    assert ("'target'" in lines[0]) == (command == "bench")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("command", ["deploy", "bench"])
def test_every_export_form_is_an_onnx_form_choice(command):
    from repact.cli import build_parser
    from repact.deploy import ONNX_FORMS

    for form in ONNX_FORMS:
        argv = [command, "small_cnn", "--onnx-form", form] + (["--out", "d"] if command == "deploy" else [])
        assert build_parser().parse_args(argv).onnx_form == form
