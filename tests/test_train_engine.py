"""The training engine's Python API: config layering, param groups, schedules, run folders, divergence."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import repact
from repact.checkpoint import build_model, load_checkpoint
from repact.models import create_model, list_models
from repact.train import ConfigError, TrainConfig, TrainingDiverged, param_groups, resolve_config, train
from repact.train.evaluate import evaluate
from repact.train.optim import lr_factor
from train_fixtures import tree_digest, write_image_folder


def _tiny(tmp_path, **kw):
    base = dict(epochs=2, batch_size=32, limit_batches=6, quiet=True, out=str(tmp_path / "run"))
    base.update(kw)
    return TrainConfig(**base)


# ------------------------------------------------------------------------------------------------
# config
# ------------------------------------------------------------------------------------------------


def test_config_layers_defaults_recipe_file_flags():
    cfg = resolve_config({"recipe": "repact-paper", "lr": 0.02, "epochs": 3}, {"epochs": 5})
    assert cfg.recipe == "repact-paper"
    assert (cfg.batch_size, cfg.momentum, cfg.weight_decay, cfg.label_smoothing) == (32, 0.9, 4e-4, 0.1)
    assert (cfg.augment, cfg.img_size, cfg.min_lr, cfg.schedule) == ("repact-paper", 224, 1e-6, "cosine")
    assert cfg.lr == 0.02 and cfg.epochs == 5  # the file beats the recipe, the flags beat the file
    assert resolve_config({"weight-decay": "1e-3"}).weight_decay == 1e-3  # hyphenated keys, YAML strings


@pytest.mark.parametrize("values, words", [
    ({"optimizer": "lion"}, ["lion", "sgd, adamw, adam"]),
    ({"schedule": "poly"}, ["poly", "cosine"]),
    ({"epochs": 0}, ["epochs", "at least 1"]),
    ({"label_smoothing": 1.5}, ["label_smoothing", "[0, 1)"]),
    ({"act": "relu7"}, ["relu7", "relu6"]),
    ({"model": "resnet9000"}, ["resnet9000", "small_cnn"]),
    ({"dataset": "svhn"}, ["svhn", "cifar100"]),
    ({"amp": True, "device": "cpu"}, ["--amp", "CUDA"]),
    ({"min_lr": 1.0, "lr": 0.1}, ["min_lr", "lr"]),
    ({"batch_size": "big"}, ["batch_size", "big"]),
    ({"colour": 1}, ["colour", "accepted"]),
    ({"recipe": "timm"}, ["timm", "repact-paper"]),
])
def test_bad_config_values_are_named(values, words):
    with pytest.raises(ConfigError) as e:
        resolve_config(values)
    for w in words:
        assert w in str(e.value)


# ------------------------------------------------------------------------------------------------
# optimizer groups and schedules
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("act", ["repact", "repact_bn", "frelu", "prelu", "acon_c"])
def test_no_weight_decay_on_activations_biases_and_norms(act):
    model = create_model("small_cnn", act=act, num_classes=10, in_channels=1)
    model(torch.zeros(2, 1, 8, 8))
    decay, no_decay = param_groups(model, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    act_ids = {id(p) for m in model.modules() if isinstance(m, (repact.Activation, nn.PReLU)) for p in m.parameters()}
    assert act_ids, "the model should have learnable activation parameters"
    decayed = {id(p) for p in decay["params"]}
    assert not (decayed & act_ids)
    for name, p in model.named_parameters():
        if id(p) in decayed:
            assert p.ndim > 1 and not name.endswith("bias")
    # exactly the three trunk convs and the classifier weight are decayed
    assert sorted(decay["param_names"]) == ["classifier.weight", "features.0.weight", "features.3.weight",
                                            "features.6.weight"]
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_lr_schedules():
    cfg = TrainConfig(lr=0.1, min_lr=0.001, epochs=10, schedule="cosine")
    f = lr_factor(cfg, steps_per_epoch=5)
    assert f(0) == pytest.approx(1.0) and f(50) == pytest.approx(0.01) and f(25) == pytest.approx(0.505)
    f = lr_factor(TrainConfig(lr=0.1, epochs=10, schedule="step", step_size=3, gamma=0.5), 4)
    assert [f(t) for t in (0, 11, 12, 24, 36)] == [1.0, 1.0, 0.5, 0.25, 0.125]
    f = lr_factor(TrainConfig(lr=0.1, epochs=4, schedule="linear", warmup_epochs=1), 10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(25) == pytest.approx(0.5) and f(40) == pytest.approx(0.0)


# ------------------------------------------------------------------------------------------------
# a real run on digits
# ------------------------------------------------------------------------------------------------


def test_train_run_folder_is_complete_and_consistent(tmp_path):
    res = train(_tiny(tmp_path, epochs=3, limit_batches=15, batch_size=64))
    run = res.run_dir
    for name in ("config.yaml", "metrics.csv", "metrics.jsonl", "act_params.jsonl", "summary.json",
                 "last.safetensors", "last.json", "best.safetensors", "best.json"):
        assert (run / name).is_file(), name
    hist = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert hist[-1]["val_acc1"] > 80.0  # digits is learnable in 3 epochs
    csv_lines = (run / "metrics.csv").read_text().splitlines()
    assert len(csv_lines) == 4 and csv_lines[0].startswith("epoch,lr,train_loss")
    for key in ("grad_first_conv", "grad_last_conv", "grad_first_bn", "grad_last_bn"):
        assert all(h[key] > 0 and math.isfinite(h[key]) for h in hist)
    acts = [json.loads(line) for line in (run / "act_params.jsonl").read_text().splitlines()]
    assert [a["epoch"] for a in acts] == [0, 1, 2, 3]
    assert sorted(acts[0]["layers"]) == ["features.2", "features.5", "features.8"]
    assert acts[0]["layers"]["features.2"]["branch_weight"] == [0.25] * 4
    assert acts[3]["layers"]["features.8"]["branch_weight"] != [0.25] * 4  # they learned

    s = res.summary
    best = max(hist, key=lambda h: h["val_acc1"])
    assert s["complete"] and s["last_acc1"] == hist[-1]["val_acc1"] and s["best_acc1"] == best["val_acc1"]
    assert s["best_epoch"] == next(h["epoch"] for h in hist if h["val_acc1"] == best["val_acc1"])
    # the checkpoints hold exactly the models these numbers came from
    from repact.data import build_datasets
    from torch.utils.data import DataLoader

    _, val, _ = build_datasets("digits")
    loader = DataLoader(val, batch_size=128)
    assert evaluate(build_model(run / "last"), loader)["acc1"] == pytest.approx(s["last_acc1"], abs=1e-9)
    assert evaluate(build_model(run / "best"), loader)["acc1"] == pytest.approx(s["best_acc1"], abs=1e-9)
    ck = load_checkpoint(run / "last")
    assert ck.state["epoch"] == 3 and ck.state["config"]["act"] == "repact"
    assert ck.model_config["kwargs"] == {"in_channels": 1}

    # re-parameterizing the trained model leaves accuracy within 0.01 points
    dep = repact.reparameterize(build_model(run / "last"))
    assert abs(evaluate(dep, loader)["acc1"] - s["last_acc1"]) <= 0.01


def test_existing_run_folder_is_refused_and_untouched(tmp_path):
    train(_tiny(tmp_path, epochs=1, limit_batches=2))
    before = tree_digest(tmp_path / "run")
    with pytest.raises(ConfigError, match="already holds a run.*--resume"):
        train(_tiny(tmp_path, epochs=1, act="relu"))
    assert tree_digest(tmp_path / "run") == before


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    # a step schedule that multiplies the lr by 1e20 after epoch 1 makes epoch 2 blow up
    cfg = _tiny(tmp_path, epochs=3, schedule="step", step_size=1, gamma=1e20, limit_batches=8)
    with pytest.raises(TrainingDiverged) as e:
        train(cfg)
    msg = str(e.value)
    assert "epoch 2" in msg and "last good checkpoint" in msg and str(tmp_path / "run" / "last") in msg
    ck = load_checkpoint(tmp_path / "run" / "last")
    assert ck.state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in ck.model_state.values())
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1


def test_label_smoothing_adamw_and_grad_clip_run(tmp_path):
    res = train(_tiny(tmp_path, optimizer="adamw", lr=3e-3, label_smoothing=0.1, grad_clip=1.0, act="acon_c_layer",
                      schedule="linear", warmup_epochs=0.5))
    assert res.summary["complete"] and math.isfinite(res.summary["last_val_loss"])
    ck = load_checkpoint(tmp_path / "run" / "last")
    assert ck.state["optimizer"]["param_groups"][1]["weight_decay"] == 0.0


@pytest.mark.slow
def test_mobilenet_v3_small_on_an_image_folder(tmp_path):
    if "mobilenet_v3_small" not in list_models():
        pytest.skip("mobilenet_v3_small is not registered in this checkout")
    write_image_folder(tmp_path / "data", per_class=8, val_per_class=2, size=32)
    res = train(TrainConfig(model="mobilenet_v3_small", act="repact", dataset="imagefolder",
                            data_dir=str(tmp_path / "data"), epochs=1, batch_size=8, quiet=True,
                            out=str(tmp_path / "run")))
    ck = load_checkpoint(tmp_path / "run" / "last")
    assert ck.model_config["kwargs"] == {"small_input": True} and ck.model_config["num_classes"] == 3
    assert ck.model_config["input_shape"] == [3, 32, 32]
    assert res.summary["epochs_done"] == 1
    model = build_model(tmp_path / "run" / "last")
    assert sum(isinstance(m, repact.RepAct) for m in model.modules()) == 23


def test_overwrite_starts_clean_logs(tmp_path):
    train(_tiny(tmp_path, epochs=2, limit_batches=2))
    res = train(_tiny(tmp_path, epochs=1, limit_batches=2, act="relu"), overwrite=True)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1]
    assert res.summary["act"] == "relu" and load_checkpoint(tmp_path / "run" / "best").state["config"]["act"] == "relu"
