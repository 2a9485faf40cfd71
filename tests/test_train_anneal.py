"""repact train --anneal-acts: the lam schedule, its options, a resumed run, and the trained model merged by
repact deploy --merge (real digits runs, the CLI in this process and in a subprocess)."""

from __future__ import annotations

import inspect
import json
import math

import pytest
import torch

from repact.activations.anneal import Annealed
from repact.checkpoint import build_model, load_checkpoint
from repact.models import create_model
from repact.train import ConfigError, config_for_resume, resolve_config, train
from repact.train.anneal import Annealer, anneal_fraction
from train_fixtures import run_cli, run_main

RUN = ["train", "--model", "vanillanet_mini", "--act", "relu", "--batch-size", "32", "--limit-batches", "3",
       "--quiet"]


def test_anneal_fraction_linear_and_cosine():
    assert [anneal_fraction(t, 2, 6) for t in (0, 2, 3, 4, 6, 9)] == [0, 0, 0.25, 0.5, 1, 1]
    cos = [anneal_fraction(t, 2, 6, "cosine") for t in (2, 3, 4, 5, 6)]
    assert cos[0] == 0 and cos[2] == pytest.approx(0.5) and cos[-1] == 1
    assert cos[1] == pytest.approx(0.5 * (1 - math.cos(math.pi / 4))) and all(a < b for a, b in zip(cos, cos[1:]))


def test_by_layer_cuts_the_window_in_order():
    model = create_model("vanillanet_mini", act="relu", num_classes=3)  # 5 annealed activations
    cfg = resolve_config({"model": "vanillanet_mini", "epochs": 4, "anneal_acts": "0:2", "anneal_by": "layer"})
    annealer = Annealer.from_config(cfg, model)
    assert [t for w in annealer.windows for t in w] == pytest.approx([0, 0.4, 0.4, 0.8, 0.8, 1.2, 1.2, 1.6, 1.6, 2])
    mean = annealer.set(1.0)
    assert [m.lam_value for m in annealer.modules] == pytest.approx([1, 1, 0.5, 0, 0])
    assert mean == pytest.approx(0.5)
    assert Annealer.from_config(resolve_config({"model": "vanillanet_mini"}), model) is None


@pytest.mark.parametrize("argv, words", [
    (["--anneal-acts", "3:1"], ["anneal_acts '3:1'", "0 <= START < END"]),
    (["--anneal-acts", "0-4"], ["anneal_acts must be START:END in epochs", "'0-4'"]),
    (["--anneal-acts", "0:20", "--epochs", "10"], ["END (20) must not exceed epochs (10)"]),
    (["--anneal-include", "features"], ["--anneal-include chooses the activations", "--anneal-acts START:END"]),
    (["--anneal-acts", "0:1", "--epochs", "1", "--model", "small_cnn"],
     ["model 'small_cnn' has no annealed activation", "--anneal-include REGEX"]),
    (["--anneal-acts", "0:1", "--epochs", "1", "--model", "small_cnn", "--anneal-include", "nothing"],
     ["--anneal-include: the model has no activation module matching 'nothing'", "features.2"]),
    (["--anneal-acts", "0:1", "--anneal-schedule", "step"], ["--anneal-schedule", "'step'"]),
])
def test_bad_annealing_options_are_one_line_errors(capsys, tmp_path, argv, words):
    rc, _, err = run_main(capsys, "train", *argv, "--out", str(tmp_path / "r"))
    assert rc == 2 and "Traceback" not in err
    flat = " ".join(err.split())
    for w in words:
        assert w in flat, (w, err)
    assert not (tmp_path / "r" / "last.json").exists()


def test_yaml_reads_an_unquoted_window_as_a_number_and_is_told_to_quote_it(tmp_path):
    import yaml

    value = yaml.safe_load("anneal_acts: 1:30")["anneal_acts"]  # YAML 1.1 reads 1:30 as 90 (base 60)
    assert value == 90
    with pytest.raises(ConfigError, match=r"got '90'.*quote it: \"0:8\""):
        resolve_config({"anneal_acts": value, "epochs": 100})
    assert resolve_config({"anneal_acts": yaml.safe_load('a: "1:30"')["a"], "epochs": 100}).anneal_acts == "1:30"


def _lams(run) -> list[dict]:
    rows = [json.loads(line) for line in (run / "act_params.jsonl").read_text().splitlines()]
    return [{k: v["lam"] for k, v in r["layers"].items() if v["type"] == "Annealed"} for r in rows]


def test_annealed_run_deploys_merged_to_half_its_convolutions(tmp_path, capsys):
    run = tmp_path / "run"
    rc, out, err = run_main(capsys, *RUN, "--epochs", "2", "--anneal-acts", "0:2", "--anneal-by", "layer",
                            "--out", str(run))
    assert rc == 0, err
    lams = _lams(run)  # before training, after epoch 1, after epoch 2
    assert list(lams[0].values()) == [0, 0, 0, 0, 0]
    assert list(lams[1].values()) == pytest.approx([1, 1, 0.5, 0, 0])
    assert list(lams[2].values()) == [1, 1, 1, 1, 1]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["anneal_lam"] for r in rows] == pytest.approx([0.5, 1.0])

    out_dir = tmp_path / "deploy"
    rc, out, err = run_main(capsys, "deploy", str(run / "last"), "--merge", "--out", str(out_dir),
                            "--randomize-bn", "--latency-rounds", "3", "--calibrate", "1")
    assert rc == 0, err
    assert "merged stem.0 + stem.3: 1x1 after 3x3" in out and "conv_layers" in out
    report = json.loads((out_dir / "model_deploy_report.json").read_text())
    merge = report["merge"]
    assert merge["before"]["conv_layers"] == 10 and merge["after"]["conv_layers"] == 5
    assert merge["ratios"]["conv_layers"] == 0.5 and merge["after"]["latency_ms"] > 0
    # the block-end ReLUs, measured on a validation batch of digits; each linear or not on its range
    cands = {c["path"]: c for c in merge["candidates"]}
    assert set(cands) == {"stem.5", "stages.0.6", "stages.1.6", "stages.2.6"}
    assert all(c["low"] <= c["high"] and c["linear"] == (c["low"] >= 0 or c["high"] <= 0) for c in cands.values())
    assert report["verify"]["logits"]["max_rel"] <= 1e-5 and report["verify"]["logits_random_bn"]["max_rel"] <= 1e-5
    assert report["onnx"]["parity_max_abs"] <= 1e-4 and report["weights"]["reload_max_abs"] == 0.0
    trained, deployed = build_model(run / "last").eval(), build_model(out_dir / "model_deploy").eval()
    assert sum(isinstance(m, torch.nn.Conv2d) for m in deployed.modules()) == 5
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert (deployed(x) - trained(x)).abs().max() <= 1e-5 * trained(x).abs().max()

    # eval's re-parameterized checkpoint of the annealed model rebuilds too (its identities recorded)
    rc, out, err = run_main(capsys, "eval", str(run / "last"), "--save-reparameterized", str(tmp_path / "rep"),
                            "--limit-batches", "1")
    assert rc == 0, err
    ckpt = load_checkpoint(tmp_path / "rep")
    assert ckpt.model_config["structure"]["stem.2"] == {"module": "Identity"}
    assert isinstance(build_model(ckpt).stem[2], torch.nn.Identity)


def test_resumed_annealing_continues_exactly(tmp_path, monkeypatch):
    import repact.train.engine as engine

    base = {"model": "vanillanet_mini", "act": "repact", "batch_size": 32, "limit_batches": 3, "quiet": True,
            "anneal_acts": "0.5:2", "anneal_schedule": "cosine", "seed": 1, "epochs": 2}
    full = train(resolve_config({**base, "out": str(tmp_path / "full")}), keep_model=False)
    epoch_run = engine._train_epoch

    def stop_in_epoch_two(*args, **kw):  # the interruption: the run stops after the first epoch's checkpoint
        if inspect.signature(epoch_run).bind(*args, **kw).arguments["epoch"] == 1:
            raise KeyboardInterrupt
        return epoch_run(*args, **kw)

    monkeypatch.setattr(engine, "_train_epoch", stop_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(resolve_config({**base, "out": str(tmp_path / "part")}), keep_model=False)
    assert float(load_checkpoint(tmp_path / "part" / "last").model_state["stem.2.lam"]) == pytest.approx(
        anneal_fraction(1, 0.5, 2, "cosine"))
    monkeypatch.setattr(engine, "_train_epoch", epoch_run)
    train(config_for_resume(tmp_path / "part"), resume=tmp_path / "part", keep_model=False)
    a, b = load_checkpoint(full.run_dir / "last"), load_checkpoint(tmp_path / "part" / "last")
    assert a.model_state.keys() == b.model_state.keys()
    for k in a.model_state:
        assert torch.equal(a.model_state[k], b.model_state[k]), k
    assert float(a.model_state["stem.2.lam"]) == 1.0


def test_anneal_include_wraps_and_the_checkpoint_rebuilds_the_wrappers(tmp_path):
    proc = run_cli("train", "--model", "small_cnn", "--act", "relu", "--epochs", "1", "--batch-size", "32",
                   "--limit-batches", "2", "--quiet", "--anneal-acts", "0:1", "--anneal-include", r"features\.(2|5)$",
                   "--out", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr
    ckpt = load_checkpoint(tmp_path / "r" / "last")
    assert ckpt.model_config["anneal"] == {"include": r"features\.(2|5)$"}
    model = build_model(ckpt)
    assert isinstance(model.features[2], Annealed) and isinstance(model.features[5], Annealed)
    assert not isinstance(model.features[8], Annealed) and model.features[2].lam_value == 1.0
