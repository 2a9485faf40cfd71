"""INT8 post-training quantization of a deployed model (``repact deploy --quantize int8``, issue 25
point 3): the QDQ file onnxruntime writes and the OpenVINO IR NNCF writes (``--target openvino``),
their outputs against FP32, the per-channel activation ranges and the report, on a small model and
a small image folder (real files, real onnxruntime, real OpenVINO and NNCF where installed)."""

import json
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from PIL import Image

from repact import PiecewiseQuadratic
from repact.cli import main
from repact.deploy.quantize import (QuantizeError, activation_ranges, module_path_of_node, nodes_of_modules,
                                    quantize_int8, summarize_ranges)
from repact.deploy.quantize_openvino import openvino_quantize_missing, quantize_int8_openvino
from repact.deploy.runtime_forms import form_for_target

SMALL = ["small_cnn", "--act", "repact", "--num-classes", "3", "--image-size", "16",
         "--model-arg", "in_channels=3", "--model-arg", "width=8"]


def _run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, " ".join(err.split())


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """train/ and val/ with 3 classes of 16x16 RGB images (class k brighter in channel k)."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 5)):
        for k in range(3):
            d = root / split / f"c{k}"
            d.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 120, size=(16, 16, 3), dtype=np.uint8)
                img[..., k] += 120
                Image.fromarray(img).save(d / f"{i}.png")
    return root


def _deploy_int8(tmp_path, capsys, folder, target, int8_files):
    """``repact deploy --quantize int8`` for ``target`` calibrated on 12 images of ``folder``: it
    succeeds, says so and writes the deploy files and ``int8_files``; (folder, stdout, report)."""
    out_dir = tmp_path / "out"
    rc, out, err = _run(capsys, "deploy", *SMALL, "--target", target, "--quantize", "int8",
                        "--calibration-data", str(folder), "--calibration-images", "12", "--out", str(out_dir))
    assert rc == 0, err
    assert "int8: wrote" in out
    assert sorted(p.name for p in out_dir.iterdir()) == ["model.onnx", "model_deploy.json", "model_deploy.safetensors",
                                                         "model_deploy_report.json", *int8_files]
    return out_dir, out, json.loads((out_dir / "model_deploy_report.json").read_text())


def _val_images(folder):
    return np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255
                     for p in sorted((folder / "val").rglob("*.png"))])


def test_deploy_quantize_int8_writes_a_qdq_file_close_to_fp32_and_reports_it(tmp_path, capsys, folder):
    out_dir, out, report = _deploy_int8(tmp_path, capsys, folder, "onnxruntime", ["model_int8.onnx"])
    assert "top-1 FP32" in out
    assert report["onnx"]["target"] == "onnxruntime" and report["onnx"]["export_forms"] == {"conv_fused": 3}
    q = report["int8"]
    assert q["quantized_form"] == "basis"  # quantized from the plain formula, whatever the FP32 file's form
    assert q["file"] == "model_int8.onnx" and q["calibration_images"] == 12 and q["val_images"] == 15
    assert q["top1_loss"] == pytest.approx(q["top1_fp32"] - q["top1_int8"])
    assert {(r["batch"], r["variant"]) for r in q["latency_onnxruntime"]} == \
        {(1, "fp32"), (1, "int8"), (32, "fp32"), (32, "int8")}
    assert len(q["activation_ranges"]["sites"]) == 3

    # the file: QDQ with int8 weights quantized per output channel
    proto = onnx.load(str(out_dir / "model_int8.onnx"))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") >= 3 and "DequantizeLinear" in ops
    assert "LeakyRelu" not in ops and "LeakyRelu" in {n.op_type for n in onnx.load(str(out_dir / "model.onnx")).graph.node}
    inits = {t.name: t for t in proto.graph.initializer}
    per_channel = 0
    for n in proto.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].data_type == onnx.TensorProto.INT8:
            scale = numpy_helper.to_array(inits[n.input[1]])
            per_channel += scale.size > 1
    assert per_channel >= 3  # the three convolutions' weights

    # INT8 follows FP32 (but is not the same file): the logits on val images agree to a few 8-bit steps
    import onnxruntime as ort

    x = _val_images(folder)
    fp32 = ort.InferenceSession(str(out_dir / "model.onnx")).run(None, {"input": x})[0]
    int8 = ort.InferenceSession(str(out_dir / "model_int8.onnx")).run(None, {"input": x})[0]
    err_rel = float(np.abs(int8 - fp32).max() / np.abs(fp32).max())
    assert 0.0 < err_rel <= 0.05, err_rel  # 2% here; a wrong calibration range clips far more


def test_quantize_flags_are_checked_before_anything_is_built(tmp_path, capsys, folder):
    rc, out, err = _run(capsys, "deploy", *SMALL, "--quantize", "int8", "--out", str(tmp_path / "a"))
    assert rc == 2 and "--quantize int8 needs --calibration-data DIR" in err and "Traceback" not in err
    rc, out, err = _run(capsys, "deploy", *SMALL, "--calibration-data", str(folder), "--out", str(tmp_path / "b"))
    assert rc == 2 and "--calibration-data is used by --quantize int8 only" in err
    (tmp_path / "only_train" / "train").mkdir(parents=True)
    rc, out, err = _run(capsys, "deploy", *SMALL, "--quantize", "int8", "--calibration-data", str(tmp_path / "only_train"),
                        "--out", str(tmp_path / "c"))
    assert rc == 2 and "has no val/ folder" in err
    rc, out, err = _run(capsys, "deploy", *SMALL, "--quantize", "int8", "--calibration-data", str(folder),
                        "--calibration-images", "0", "--out", str(tmp_path / "d"))
    assert rc == 2 and "must be positive" in err
    with pytest.raises(SystemExit) as exc:  # argparse's own check: exit 2, one line naming the choices
        main(["deploy", *SMALL, "--target", "tflite", "--out", str(tmp_path / "e")])
    assert exc.value.code == 2 and "invalid choice: 'tflite' (choose from 'generic', 'onnxruntime'" in capsys.readouterr().err
    assert not any((tmp_path / s).exists() and any((tmp_path / s).iterdir()) for s in "abcde")


def test_quantize_int8_needs_calibration_batches(tmp_path):
    with pytest.raises(ValueError, match="no calibration images"):
        quantize_int8(tmp_path / "missing.onnx", tmp_path / "q.onnx", [])
    assert not (tmp_path / "q.onnx").exists()


def test_nodes_of_modules_reads_the_scope_names_of_torchs_onnx_exporter(tmp_path):
    assert module_path_of_node("/features/features.1/block/block.0/block.0.2/Mul_1") == "features.1.block.0.2"
    assert module_path_of_node("/features/features.0/features.0.2/HardSwish") == "features.0.2"
    assert module_path_of_node("/layer1/layer1.0/act/Relu") == "layer1.0.act"
    assert module_path_of_node("Mul_12") is None and module_path_of_node("/Flatten") is None
    names = ["/features/features.1/block/block.0/block.0.2/Mul", "/features/features.1/block/block.0/block.0.0/Conv",
             "/features/features.12/features.12.2/Add", "/features/features.1/block/block.0/block.0.20/Add", "Add_3"]
    assert nodes_of_modules(names, ["features.1.block.0.2", "features.12.2"]) == [names[0], names[2]]
    # and on a real export: the nodes of each activation module of a small model
    from repact import reparameterize
    from repact.models import create_model
    from repact.deploy.onnx_export import export_onnx
    from repact.deploy.quantize import activation_sites

    model = create_model("small_cnn", act="repact", num_classes=3, in_channels=3, width=8).eval()
    x = torch.randn(1, 3, 16, 16)
    model(x)  # lazy activations build their parameters
    deployed = reparameterize(model, inplace=False).eval()
    sites = activation_sites(deployed)
    assert len(sites) == 3
    graph = onnx.load(str(export_onnx(deployed, x, tmp_path / "m.onnx", form="basis"))).graph
    for site in sites:
        found = nodes_of_modules((n.name for n in graph.node), [site])
        ops = {n.op_type for n in graph.node if n.name in found}
        assert {"Mul", "Add", "Relu", "HardSwish"} <= ops and "Conv" not in ops, (site, ops)


def test_activation_ranges_are_per_channel_and_summarized():
    identity = PiecewiseQuadratic([0.0], torch.tensor([[[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]]))
    model = torch.nn.Sequential(torch.nn.Identity(), identity)
    x = torch.zeros(2, 4, 3, 3)
    for c in range(4):  # channel c spans [-1, 2^c - 1]; the tensor spans [-1, 7]
        x[0, c, 0, 0], x[1, c, 2, 2] = -1.0, 2.0 ** c - 1
    ranges = activation_ranges(model, [x[:1], x[1:]])
    assert list(ranges) == ["1"]
    assert ranges["1"]["min"] == [-1.0] * 4 and ranges["1"]["max"] == [0.0, 1.0, 3.0, 7.0]
    site = summarize_ranges(ranges)["sites"]["1"]
    # channel widths 1, 2, 4, 8: median 3; the tensor's 8 leaves the median channel 8 - log2(8 / 3) bits
    assert site["tensor_range"] == 8.0 and site["median_channel_range"] == 3.0 and site["max_channel_range"] == 8.0
    assert site["median_channel_bits"] == pytest.approx(8 - np.log2(8 / 3))


@pytest.mark.skipif(bool(openvino_quantize_missing()),
                    reason=f"OpenVINO INT8 needs {' and '.join(openvino_quantize_missing())}, not installed here "
                           "(pip install 'repact[openvino]')")
def test_deploy_quantize_int8_for_openvino_writes_an_nncf_ir_close_to_fp32_and_reports_it(tmp_path, capsys, folder):
    import openvino as ov

    from repact.deploy.openvino_run import ov_compile

    out_dir, out, report = _deploy_int8(tmp_path, capsys, folder, "openvino", ["model_int8.bin", "model_int8.xml"])
    assert "(openvino)" in out
    assert report["onnx"]["target"] == "openvino" and report["onnx"]["openvino"]["checked"]
    q = report["int8"]
    assert q["runtime"] == "openvino" and q["quantized_form"] == form_for_target("openvino") and "NNCF" in q["format"]
    assert q["file"] == "model_int8.xml" and q["files"] == ["model_int8.xml", "model_int8.bin"]
    assert q["calibration_images"] == 12 and q["val_images"] == 15
    assert q["top1_loss"] == pytest.approx(q["top1_fp32"] - q["top1_int8"])
    assert {(r["batch"], r["variant"]) for r in q["latency_openvino"]} == \
        {(1, "fp32"), (1, "int8"), (32, "fp32"), (32, "int8")}
    assert "latency_onnxruntime" not in q and len(q["activation_ranges"]["sites"]) == 3
    assert q["float_activation_sites"] == 3

    # the IR: quantized activations (FakeQuantize) and int8 weights with one scale per output channel
    model = ov.Core().read_model(str(out_dir / "model_int8.xml"))
    ops = [o.get_type_name() for o in model.get_ordered_ops()]
    assert ops.count("FakeQuantize") >= 3 and "Convolution" in ops
    int8_weights = [o for o in model.get_ordered_ops()
                    if o.get_type_name() == "Constant" and o.get_element_type() == ov.Type.i8]
    assert len(int8_weights) == 4  # the three convolutions' weights and the classifier's
    for w in int8_weights:  # Constant(i8) -> Convert -> Multiply(per-channel scale)
        convert = next(iter(w.output(0).get_target_inputs())).get_node()
        scale_mul = next(iter(convert.output(0).get_target_inputs())).get_node()
        scale = [scale_mul.input_value(i).get_node() for i in range(2)
                 if scale_mul.input_value(i).get_node().get_type_name() == "Constant"][0]
        assert scale_mul.get_type_name() == "Multiply" and scale.get_data().size == w.get_data().shape[0] > 1

    # the activation sites stay float: their nodes are found in the IR and none of them reads a FakeQuantize
    sites = list(q["activation_ranges"]["sites"])
    site_ops = set(nodes_of_modules((o.get_friendly_name() for o in model.get_ops()), sites))
    assert len(site_ops) >= 3 * 4  # at least Mul, Relu, HardSwish, Add per site
    for o in model.get_ops():
        if o.get_friendly_name() in site_ops:
            assert all(o.input_value(i).get_node().get_type_name() != "FakeQuantize" for i in range(o.get_input_size()))

    # INT8 follows FP32 (but is not the same model): OpenVINO's logits on val images agree to a few 8-bit steps
    x = _val_images(folder)
    fp32 = ov_compile(out_dir / "model.onnx", x.shape)(x)[0]
    int8 = ov_compile(out_dir / "model_int8.xml", x.shape)(x)[0]
    err_rel = float(np.abs(int8 - fp32).max() / np.abs(fp32).max())
    assert 0.0 < err_rel <= 0.05, err_rel


def test_openvino_int8_without_openvino_or_nncf_is_a_one_line_error_naming_the_extra(tmp_path, capsys, folder,
                                                                                      monkeypatch):
    for name in [n for n in sys.modules if n.split(".")[0] in ("openvino", "nncf")] + ["openvino", "nncf"]:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules makes the import fail: as if not installed
    assert openvino_quantize_missing() == ["openvino", "nncf"]
    rc, out, err = _run(capsys, "deploy", *SMALL, "--target", "openvino", "--quantize", "int8",
                        "--calibration-data", str(folder), "--out", str(tmp_path / "a"))
    assert rc == 2 and "Traceback" not in err
    assert "--target openvino --quantize int8 needs openvino and nncf, which are not installed: pip install " \
           "'repact[openvino]'" in err
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())
    with pytest.raises(QuantizeError, match=r"needs openvino and nncf.*pip install 'repact\[openvino\]'"):
        quantize_int8_openvino(tmp_path / "missing.onnx", tmp_path / "q.xml", [torch.zeros(1, 3, 16, 16)])
    assert not (tmp_path / "q.xml").exists()
