"""The optional runtimes of issue 25: OpenVINO (``--target openvino``, ``bench --engines openvino``) and
ExecuTorch with XNNPACK (``--target executorch``, ``bench --engines executorch``). Their tests run
where the package is installed (``pip install 'repact[openvino]'`` / ``'repact[executorch]'``) and
skip with a message otherwise; without them, asking for one is a one-line error (exit 2)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import repact
from repact.cli import main
from repact.deploy.bench import engine_form
from repact.deploy.executorch_export import executorch_available
from repact.deploy.openvino_run import openvino_available
from repact.models import create_model

SMALL = ["small_cnn", "--act", "repact", "--num-classes", "3", "--image-size", "8",
         "--model-arg", "in_channels=3", "--model-arg", "width=8"]
needs_openvino = pytest.mark.skipif(not openvino_available(),
                                    reason="OpenVINO is not installed (pip install 'repact[openvino]')")
needs_executorch = pytest.mark.skipif(not executorch_available(),
                                      reason="ExecuTorch is not installed (pip install 'repact[executorch]')")


def _run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, " ".join(err.split())


def _deployed(seed=0):
    model = create_model("small_cnn", act="repact", num_classes=3, in_channels=3, width=8).eval()
    repact.randomize_batchnorm_(model, seed)
    repact.randomize_activations_(model, seed)
    return repact.reparameterize(model, inplace=False).eval()


def test_each_engine_exports_its_own_form():
    assert [engine_form(e, "deploy", "target") for e in ("onnxruntime", "openvino", "executorch", "eager")] == \
        ["conv", "clamp", "basis", "auto"]
    assert engine_form("openvino", "deploy_generic", "target", {"deploy_generic": "auto"}) == "auto"
    assert engine_form("onnxruntime", "deploy", "where") == "where"


def test_bench_models_times_each_other_form_beside_the_runtimes_own():
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_models.py"
    spec = importlib.util.spec_from_file_location("bench_models", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    forms = bench.EXTRA_FORMS
    assert bench.form_variants("onnxruntime", forms, "target") == {"deploy_generic": "auto", "deploy_basis": "basis",
                                                                   "deploy_clamp": "clamp"}
    assert bench.form_variants("openvino", forms, "target") == {"deploy_generic": "auto", "deploy_conv": "conv",
                                                                "deploy_basis": "basis"}
    assert bench.form_variants("openvino", ["auto"], "conv") == {"deploy_generic": "auto"}
    assert bench.form_variants("onnxruntime", [], "target") == {}


@pytest.mark.skipif(openvino_available() and executorch_available(), reason="both optional runtimes are installed")
def test_a_missing_runtime_is_one_line_before_anything_is_built(tmp_path, capsys):
    missing = [e for e, ok in (("openvino", openvino_available()), ("executorch", executorch_available())) if not ok]
    for engine in missing:
        rc, out, err = _run(capsys, "bench", "small_cnn", "--engines", "onnxruntime", engine,
                            "--json", str(tmp_path / "b.json"))
        assert rc == 2 and "Traceback" not in err, err
        assert f"engine '{engine}' needs a package that is not installed: pip install 'repact[{engine}]'" in err
        assert not (tmp_path / "b.json").exists()
    if "executorch" in missing:
        rc, out, err = _run(capsys, "deploy", *SMALL, "--target", "executorch", "--out", str(tmp_path / "d"))
        assert rc == 2 and "--target executorch needs ExecuTorch" in err and not (tmp_path / "d").exists()
    if "openvino" in missing:  # the ONNX file is still the deliverable: written, with a note that OV was not run
        rc, out, err = _run(capsys, "deploy", *SMALL, "--target", "openvino", "--out", str(tmp_path / "o"))
        assert rc == 0 and "openvino: not installed, so not checked" in out, err
        report = json.loads((tmp_path / "o" / "model_deploy_report.json").read_text())
        assert report["onnx"]["openvino"] == {"checked": False, "reason": "openvino is not installed"}


@needs_openvino
def test_target_openvino_checks_openvinos_outputs(tmp_path, capsys):
    rc, out, err = _run(capsys, "deploy", *SMALL, "--target", "openvino", "--randomize-bn", "--out", str(tmp_path))
    assert rc == 0, err
    report = json.loads((tmp_path / "model_deploy_report.json").read_text())
    assert report["onnx"]["export_forms"] == {"clamp_abs": 3}
    ov = report["onnx"]["openvino"]
    assert ov["checked"] and ov["parity_max_abs"] <= 1e-4 and "openvino" in report["versions"]


@needs_openvino
@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_openvino_runs_the_clamp_form_exactly(tmp_path, granularity):
    from repact.deploy import export_onnx, last_export_forms
    from repact.deploy.openvino_run import ov_parity

    act = (lambda channels=None: repact.create_act("repact", channels=channels, granularity=granularity))
    model = create_model("small_cnn", act=act, num_classes=3, in_channels=3, width=8).eval()
    repact.randomize_batchnorm_(model, 3)
    repact.randomize_activations_(model, 3, scale=1.0)
    dep = repact.reparameterize(model, inplace=False).eval()
    x = torch.randn(2, 3, 8, 8) * 4
    path = export_onnx(dep, x, tmp_path / "m.onnx", form="clamp")
    assert last_export_forms().counts() == {"clamp_abs": 3}
    with torch.no_grad():
        scale = float(dep(x).abs().max())
    assert ov_parity(dep, path, [x, torch.randn(1, 3, 8, 8) * 4]) <= 1e-4 * scale


@needs_openvino
def test_openvino_parity_sees_a_different_model(tmp_path):
    from repact.deploy import export_onnx
    from repact.deploy.openvino_run import ov_parity

    dep, other = _deployed(0), _deployed(5)
    x = torch.randn(2, 3, 8, 8)
    path = export_onnx(dep, x, tmp_path / "m.onnx", form="basis")
    with torch.no_grad():
        scale = float(dep(x).abs().max())
    assert ov_parity(dep, path, [x, torch.randn(1, 3, 8, 8)]) <= 1e-4 * scale
    assert ov_parity(other, path, [x]) > 1e-3 * scale


@needs_openvino
def test_bench_runs_openvino_beside_onnxruntime_in_each_ones_form(tmp_path, capsys):
    path = tmp_path / "b.json"
    rc, out, err = _run(capsys, "bench", *SMALL, "--batch-sizes", "1", "2", "--engines", "onnxruntime", "openvino",
                        "--rounds", "2", "--warmup", "1", "--threads", "1", "--json", str(path))
    assert rc == 0, err
    data = json.loads(path.read_text())
    rows = {(r["engine"], r["batch"], r["variant"]) for r in data["latency"]}
    assert rows == {(e, b, v) for e in ("onnxruntime", "openvino") for b in (1, 2) for v in ("baseline", "train", "deploy")}
    assert "openvino" in data["environment"]


@needs_executorch
def test_target_executorch_writes_a_checked_pte_file(tmp_path, capsys):
    from repact.checkpoint import build_model
    from repact.deploy.executorch_export import executorch_method

    rc, out, err = _run(capsys, "deploy", *SMALL, "--target", "executorch", "--out", str(tmp_path))
    assert rc == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.pte", "model_deploy.json",
                                                         "model_deploy.safetensors", "model_deploy_report.json"]
    report = json.loads((tmp_path / "model_deploy_report.json").read_text())
    et = report["executorch"]
    assert et["file"] == "model.pte" and et["input_shape"] == [1, 3, 8, 8] and et["delegate"] == "xnnpack"
    assert et["parity_max_abs"] <= 1e-4 and et["undelegated_ops"] == {}  # XNNPACK took the whole graph
    deployed = build_model(tmp_path / "model_deploy").eval()
    x = torch.randn(1, 3, 8, 8)
    got = executorch_method(tmp_path / "model.pte").execute([x])[0]
    with torch.no_grad():
        ref = deployed(x)
    assert float((got - ref).abs().max()) <= 1e-4 * float(ref.abs().max())
