"""repact deploy --merge: the merged model exported, checked, rebuilt; a wrong merge writes nothing; bad flags."""

import json
import re

import pytest
import torch
from torch import nn

import repact
from repact.checkpoint import build_model
from repact.deploy import DeployError, deploy_model, ort_session
from train_fixtures import run_cli, run_main


def test_deploy_merge_of_a_model_name_in_a_subprocess(tmp_path):
    out_dir = tmp_path / "d"
    proc = run_cli("deploy", "vanillanet_mini", "--act", "repact", "--num-classes", "7", "--image-size", "16",
                   "--model-arg", "small_input=true", "--merge", "--merge-when", "always", "--latency-rounds", "0", "--out", str(out_dir))
    assert proc.returncode == 0, proc.stderr
    assert "folded 9 affine module(s)" in proc.stdout and "batchnorms" in proc.stdout
    report = json.loads((out_dir / "model_deploy_report.json").read_text())
    merge = report["merge"]
    # nothing annealed: no pair merges (a RepAct stands between every two convolutions), the BatchNorms fold
    assert merge["merged"] == [] and merge["before"]["batchnorms"] == 9 and merge["after"]["batchnorms"] == 0
    assert merge["before"]["conv_layers"] == merge["after"]["conv_layers"] == 10
    assert "latency_ms" not in merge["after"] and report["onnx"]["parity_max_abs"] <= 1e-4
    deployed = build_model(out_dir / "model_deploy")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())
    sess = ort_session(out_dir / "model.onnx")
    assert sess.run(None, {"input": torch.randn(4, 3, 16, 16).numpy()})[0].shape == (4, 7)


class _NotItsSequential(nn.Module):
    """Calls its Sequential's modules one by one with a scaling between: merging them changes the model."""

    def __init__(self):
        super().__init__()
        self.seq = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), repact.anneal(nn.ReLU(), 1.0),
                                 nn.Conv2d(4, 2, 1))

    def forward(self, x):
        return self.seq[3](self.seq[2](self.seq[1](self.seq[0](x))) * 2).mean((2, 3))


def test_a_merge_that_changes_the_model_writes_nothing(tmp_path):
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("x")
    with pytest.raises(DeployError, match="the merged model differs from the model.*nothing was written"):
        deploy_model(_NotItsSequential(), out_dir, input_shape=(3, 8, 8), merge="cheaper")
    assert sorted(p.name for p in out_dir.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("argv, words", [
    (["--calibrate", "2"], ["--calibrate measures merge candidates; add --merge"]),
    (["--merge", "--latency-rounds", "-1"], ["--latency-rounds and --calibrate must be 0 or more"]),
    (["--merge", "--calibrate", "1"], ["--calibrate measures on the dataset a checkpoint was trained on",
                                       "vanillanet_mini records none"]),
    (["--merge", "--merge-when", "sometimes"], ["--merge-when: invalid choice: 'sometimes'"]),
])
def test_bad_merge_flags(capsys, tmp_path, argv, words):
    rc, _, err = run_main(capsys, "deploy", "vanillanet_mini", "--image-size", "8", *argv, "--out", str(tmp_path / "o"))
    assert rc == 2 and "Traceback" not in err
    flat = " ".join(err.split())
    for w in words:
        assert w in flat, (w, err)
    assert not (tmp_path / "o").exists()


def test_merge_is_refused_for_task_models(capsys, tmp_path):
    rc, _, err = run_main(capsys, "deploy", "lraspp_mobilenet_v3_large", "--merge", "--out", str(tmp_path / "o"))
    assert rc == 2 and "--merge applies to classification models" in " ".join(err.split())


def test_a_tampered_structure_record_is_refused_before_anything_is_built(tmp_path):
    from repact.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), repact.anneal(nn.ReLU(), 1.0), nn.Conv2d(4, 2, 1))
    res = deploy_model(model.eval(), tmp_path / "d", input_shape=(3, 8, 8), merge="cheaper", name="m")
    ckpt = load_checkpoint(res.weights_path)
    structure = ckpt.model_config["structure"]  # no registered name: what build_model would apply
    assert structure["0"]["module"] == "Conv2d" and structure["3"] == {"module": "Identity"}
    cfg = {"name": "small_cnn", "num_classes": 2}
    huge = {"0": {**structure["0"], "in_channels": 1 << 20, "out_channels": 1 << 20}}
    bad = [({"0": {"module": "os.system"}}, "names module 'os.system'"),
           ({"0": {**structure["0"], "groups": 3}}, "groups (3) do not divide its channels"),
           ({"0": {**structure["0"], "kernel_size": [1, -1]}}, "'kernel_size' is [1, -1]"),
           ({"": {"module": "Identity"}}, "not a module path"),
           (huge, "GiB to load, more than the")]
    for record, words in bad:
        save_checkpoint(tmp_path / "t", nn.Linear(1, 1), model_config={**cfg, "reparameterized": True,
                                                                      "structure": record})
        with pytest.raises(CheckpointError, match=re.escape(words)):
            build_model(tmp_path / "t")
    save_checkpoint(tmp_path / "a", nn.Linear(1, 1), model_config={**cfg, "anneal": {"include": 3}})
    with pytest.raises(CheckpointError, match="anneal record is"):
        build_model(tmp_path / "a")


def test_a_padded_border_merge_exports_to_onnx_exactly(tmp_path):
    model = nn.Sequential(nn.Conv2d(12, 8, 1), nn.BatchNorm2d(8), repact.anneal(nn.ReLU(), 1.0),
                          nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(1))
    repact.randomize_batchnorm_(model)
    res = deploy_model(model.eval(), tmp_path / "d", input_shape=(12, 9, 7), merge="always", randomize_bn=True)
    assert [m["form"] for m in res.report["merge"]["merged"]] == ["3x3 after 1x1 (padded border)"]
    assert res.onnx_parity <= 1e-5 and res.verify["logits"]["max_rel"] <= 1e-5
    assert res.verify["logits_random_bn"]["max_rel"] <= 1e-5
