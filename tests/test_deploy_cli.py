"""`repact deploy`, `repact verify`, `repact bench`: real models, real files, onnxruntime, exit codes."""

import json

import onnx
import pytest
import torch
from torch import nn

import repact
from repact import PiecewiseQuadratic
from repact.activations.base import Activation
from repact.checkpoint import build_model, load_checkpoint, save_checkpoint
from repact.cli import main
from repact.deploy import DeployError, deploy_model, ort_session
from repact.models import create_model, list_models, register_model


def _run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    # the CLI wraps long messages (long tmp paths) to the terminal width; compare words, not lines
    return rc, out, " ".join(err.split())


def test_deploy_model_name_end_to_end(tmp_path, capsys):
    out_dir = tmp_path / "out"
    rc, out, err = _run(capsys, "deploy", "mobilenet_v3_small", "--act", "repact", "--num-classes", "10",
                        "--image-size", "32", "--out", str(out_dir), "--randomize-bn")
    assert rc == 0, err
    assert "max rel error" in out and "onnxruntime parity" in out
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["model.onnx", "model_deploy.json", "model_deploy.safetensors", "model_deploy_report.json"]
    report = json.loads((out_dir / "model_deploy_report.json").read_text())
    assert report["verify"]["logits"]["max_rel"] <= 1e-5 and report["verify"]["logits_random_bn"]["max_rel"] <= 1e-5
    assert report["onnx"]["opset"] == 17 and report["onnx"]["parity_max_abs"] <= 1e-4
    assert report["onnx"]["export_forms"] == {"hardswish_basis": 23} and report["weights"]["reload_max_abs"] == 0.0
    onnx.checker.check_model(str(out_dir / "model.onnx"))
    sess = ort_session(out_dir / "model.onnx")
    assert sess.run(None, {"input": torch.randn(5, 3, 32, 32).numpy()})[0].shape == (5, 10)  # dynamic batch
    ckpt = load_checkpoint(out_dir / "model_deploy")
    assert ckpt.model_config["reparameterized"] is True and ckpt.model_config["input_shape"] == [3, 32, 32]
    deployed = build_model(ckpt)
    assert sum(isinstance(m, PiecewiseQuadratic) for m in deployed.modules()) == 23


def test_deploy_training_checkpoint_and_verify_it(tmp_path, capsys):
    model = create_model("mobilenet_v3_small", act="repact_bn", num_classes=7, convention="standard").eval()
    repact.randomize_batchnorm_(model)
    repact.randomize_activations_(model)
    cfg = {"name": "mobilenet_v3_small", "act": "repact_bn", "num_classes": 7, "kwargs": {"convention": "standard"},
           "input_shape": [3, 32, 32]}
    save_checkpoint(tmp_path / "trained", model, model_config=cfg)
    rc, out, err = _run(capsys, "verify", str(tmp_path / "trained.safetensors"))
    assert rc == 0 and "OK" in out and "randomized BatchNorm" in out, err
    rc, out, err = _run(capsys, "deploy", str(tmp_path / "trained.safetensors"), "--out", str(tmp_path / "d"),
                        "--name", "r18")
    assert rc == 0, err
    onnx_path = tmp_path / "d" / "r18.onnx"
    rc, out, err = _run(capsys, "verify", str(tmp_path / "d" / "r18_deploy.safetensors"), "--keep-bn",
                        "--onnx", str(onnx_path), "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["ok"] and res["onnx_parity"] <= 1e-4 and res["input_shape"] == [3, 32, 32]
    deployed = build_model(tmp_path / "d" / "r18_deploy").eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert (deployed(x) - model(x)).abs().max() <= 1e-5 * model(x).abs().max()


class _Drifting(Activation):
    """An activation whose 'deploy form' is off by 1e-3: the pipeline must refuse it."""

    deployable = True

    def forward(self, x):
        return torch.relu(x)

    def to_deploy(self):
        return _Shifted()


class _Shifted(nn.Module):
    def forward(self, x):
        return torch.relu(x) + 1e-3


def _drifting_net(act=None, num_classes=3, **kwargs):
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), _Drifting(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))


if "_test_drifting_net" not in list_models():
    register_model("_test_drifting_net", family="test")(_drifting_net)


def test_failed_check_writes_nothing(tmp_path):
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    (out_dir / "model.onnx").write_bytes(b"old")
    model = nn.Sequential(nn.Conv2d(3, 4, 3), _Drifting(), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(DeployError, match="differs from the model.*nothing was written"):
        deploy_model(model, out_dir, input_shape=(3, 8, 8), overwrite=True)
    assert sorted(p.name for p in out_dir.iterdir()) == ["model.onnx"]
    assert (out_dir / "model.onnx").read_bytes() == b"old"


def test_deploy_cli_exit_codes_for_bad_input(tmp_path, capsys):
    rc, out, err = _run(capsys, "deploy", "mobilenet_v9", "--out", str(tmp_path))
    assert rc == 2 and "neither a checkpoint" in err and "mobilenet_v3_small" in err and "Traceback" not in err
    rc, out, err = _run(capsys, "deploy", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path))
    assert rc == 2 and "does not exist" in err
    rc, out, err = _run(capsys, "deploy", "resnet18", "--act", "repact", "--opset", "16", "--out", str(tmp_path))
    assert rc == 2 and "--opset 16 is not accepted: 17 to" in err
    rc, out, err = _run(capsys, "deploy", "resnet18", "--act", "nope", "--out", str(tmp_path))
    assert rc == 2 and "unknown activation 'nope'" in err
    rc, out, err = _run(capsys, "deploy", "resnet18", "--model-arg", "small_input", "--out", str(tmp_path))
    assert rc == 2 and "KEY=VALUE" in err
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    rc, out, err = _run(capsys, "deploy", "small_cnn", "--act", "repact", "--image-size", "8",
                        "--model-arg", "in_channels=3", "--out", str(a_file))
    assert rc == 2 and "not a folder" in err and a_file.read_text() == "x"
    save_checkpoint(tmp_path / "c", create_model("small_cnn", num_classes=3), model_config={"name": "small_cnn",
                                                                                           "num_classes": 3})
    rc, out, err = _run(capsys, "verify", str(tmp_path / "c.safetensors"), "--act", "repact")
    assert rc == 2 and "records its own model" in err


def test_verify_cli_model_name_and_failure_exit_code(capsys):
    rc, out, err = _run(capsys, "verify", "shufflenet_v2_x0_5", "--act", "repact_softmax", "--image-size", "32",
                        "--randomize-acts", "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["ok"] and res["max_rel"] <= 1e-5 and res["randomized_bn"]
    rc, out, err = _run(capsys, "verify", "_test_drifting_net", "--image-size", "8")
    assert rc == 1 and "FAILED: above the tolerance" in err
    rc, out, err = _run(capsys, "verify", "small_cnn", "--rtol", "-1")
    assert rc == 2 and "--rtol must be positive" in err


def test_deploy_cli_refuses_a_model_whose_deploy_form_differs(tmp_path, capsys):
    rc, out, err = _run(capsys, "deploy", "_test_drifting_net", "--image-size", "8", "--out", str(tmp_path / "o"))
    assert rc == 1 and "check failed" in err and "nothing was written" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_bench_cli_writes_table_and_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    rc, out, err = _run(capsys, "bench", "small_cnn", "--act", "repact", "--image-size", "16", "--batch-sizes", "1",
                        "--engines", "eager", "onnxruntime", "--rounds", "2", "--warmup", "1", "--num-classes", "4",
                        "--model-arg", "in_channels=3", "--model-arg", "width=8", "--json", str(path))
    assert rc == 0, err
    assert "x baseline" in out and "deploy" in out
    data = json.loads(path.read_text())
    assert {r["engine"] for r in data["latency"]} == {"eager", "onnxruntime"}
    assert data["static"]["deploy"]["params"] == data["static"]["baseline"]["params"]
    rc, out, err = _run(capsys, "bench", "nosuchnet")
    assert rc == 2 and "unknown model 'nosuchnet'" in err
    rc, out, err = _run(capsys, "bench", "small_cnn", "--rounds", "0")
    assert rc == 2 and "--rounds" in err
