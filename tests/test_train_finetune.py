"""Activation-only fine-tuning: a pretrained classifier (a local checkpoint or torchvision state dict,
read without unpickling code) gets its activations swapped and fitted, then only those (and optionally
the BatchNorms) train; the report gives trainable parameters and the top-1 change."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import repact
from repact.checkpoint import build_model, load_checkpoint
from repact.models import create_model
from train_fixtures import run_cli, run_main

ACT_KEYS = ("branch_weight", "prelu_weight")


def _pretrain(out):
    proc = run_cli("train", "--act", "relu", "--epochs", "2", "--limit-batches", "6", "--quiet", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out / "last.safetensors"


def _finetune(tmp_path, *args):
    """A ReLU model pretrained under tmp_path, fine-tuned there with its activations swapped for
    RepAct and only those training (plus ``args``): the pretrained weights, the run's folder, its process."""
    weights = _pretrain(tmp_path / "pre")
    out = tmp_path / "ft"
    proc = run_cli("train", "--act", "relu", "--weights", str(weights), "--swap-act", "repact", "--train-only", "acts",
                   *args, "--quiet", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return weights, out, proc


@pytest.mark.slow
def test_a_pretrained_checkpoint_fine_tunes_only_its_swapped_activations(tmp_path):
    weights, out, proc = _finetune(tmp_path, "--init", "approximate", "--epochs", "1", "--limit-batches", "6",
                                   "--lr", "0.01")
    ft = json.loads((out / "finetune.json").read_text())
    assert ft["swapped"] == 3 and ft["fit_max_error"] == 0.0  # RepAct fits ReLU exactly
    assert ft["trainable_params"] == 3 * 5  # 4 branch weights and a PReLU slope per RepAct
    # the exact fit: the swapped model is the pretrained one, to the last logit
    assert ft["start_acc1"] == ft["pretrained_acc1"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finetune"]["trainable_params"] == 15
    change = summary["last_acc1"] - ft["pretrained_acc1"]
    assert f"fine-tuned 15 of {ft['params']:,} parameters (acts, activations swapped for repact)" in proc.stdout
    assert f"({change:+.2f})" in proc.stdout
    # only the activations moved: every other tensor (BatchNorm statistics included) is the pretrained one
    pre, post = load_checkpoint(weights).model_state, load_checkpoint(out / "last").model_state
    moved = {k for k in post if k.endswith(ACT_KEYS)}
    assert len(moved) == 6 and all(k not in pre for k in moved)
    assert pre.keys() == post.keys() - moved
    assert all(torch.equal(pre[k], post[k]) for k in pre)
    assert any(not torch.equal(post[k], torch.tensor([0.0, 1.0, 0.0, 0.0])) for k in moved if "branch" in k)
    # the checkpoint rebuilds with the swapped activations
    model = build_model(out / "last").eval()
    assert sum(isinstance(m, repact.RepAct) for m in model.modules()) == 3
    assert ft["params"] == sum(p.numel() for p in model.parameters())


def test_a_torchvision_state_dict_fine_tunes_activations_and_batchnorms(tmp_path, capsys):
    from torchvision.models import mobilenet_v3_small

    torch.manual_seed(0)
    path = tmp_path / "tv.pth"
    tv = mobilenet_v3_small(num_classes=10)
    torch.save(tv.state_dict(), path)
    out = tmp_path / "ft"
    rc, stdout, err = run_main(capsys, "train", "--model", "mobilenet_v3_small", "--act", "default", "--weights",
                               str(path), "--swap-act", "repact", "--train-only", "acts,bn", "--epochs", "1",
                               "--limit-batches", "2", "--limit-val-batches", "1", "--batch-size", "16", "--quiet",
                               "--out", str(out))
    assert rc == 0, err
    ft = json.loads((out / "finetune.json").read_text())
    assert ft["tensors_loaded"] == len(tv.state_dict())
    model = build_model(out / "last")
    acts = [m for m in model.modules() if isinstance(m, repact.RepAct)]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(acts) == ft["swapped"] > 20
    assert ft["trainable_params"] == sum(p.numel() for m in acts + norms for p in m.parameters())
    post = load_checkpoint(out / "last").model_state
    for k, v in tv.state_dict().items():  # convolutions and the classifier stayed as loaded
        if (k.endswith("weight") or k.endswith("bias")) and v.dim() > 1:
            assert torch.equal(post[k], v), k


@pytest.mark.parametrize("argv, words", [
    (["--swap-act", "repact"], ["--swap-act fine-tune a pretrained model", "--weights FILE"]),
    (["--train-only", "acts"], ["--train-only fine-tune a pretrained model"]),
    (["--weights", "W", "--train-only", "bn"], ["train_only must be acts or acts,bn", "'bn'"]),
    (["--weights", "W", "--swap-act", "repactt"], ["--swap-act: unknown activation 'repactt'"]),
    (["--weights", "missing.pt"], ["does not exist (weights are only read from local files)"]),
    (["--weights", "W", "--swap-act", "repact", "--train-only", "acts", "--anneal-acts", "0:0.5", "--anneal-include", "."],
     ["every parameter it trains is in an annealed activation", "would train nothing", "(0:1)"]),
])
def test_bad_fine_tuning_options_are_one_line_errors(tmp_path, capsys, argv, words):
    good = tmp_path / "w.pth"
    torch.save(create_model("small_cnn", act="relu", num_classes=10, in_channels=1).state_dict(), good)
    argv = [str(good) if a == "W" else (str(tmp_path / a) if a == "missing.pt" else a) for a in argv]
    rc, out, err = run_main(capsys, "train", "--act", "relu", "--epochs", "1", "--limit-batches", "1",
                            "--out", str(tmp_path / "r"), *argv)
    assert rc == 2 and err.count("\n") == 1 and err.startswith("repact train: error:"), err
    for w in words:
        assert w in err, (w, err)


def test_weights_of_another_model_or_with_code_inside_are_refused(tmp_path, capsys):
    other = tmp_path / "other.pth"
    torch.save(create_model("small_cnn", act="relu", num_classes=3, in_channels=1).state_dict(), other)
    rc, _, err = run_main(capsys, "train", "--act", "relu", "--weights", str(other), "--epochs", "1",
                          "--limit-batches", "1", "--out", str(tmp_path / "a"))
    assert rc == 2 and "does not fit the model being trained" in err and "of another shape" in err, err
    pickled = tmp_path / "code.pth"
    torch.save({"model": nn.ReLU()}, pickled)  # a module object: unpickling would run code
    rc, _, err = run_main(capsys, "train", "--act", "relu", "--weights", str(pickled), "--epochs", "1",
                          "--limit-batches", "1", "--out", str(tmp_path / "b"))
    assert rc == 2 and "weights_only=True" in err and err.count("\n") == 1, err
    relu = tmp_path / "relu.pth"
    torch.save(create_model("small_cnn", act="relu", num_classes=10, in_channels=1).state_dict(), relu)
    rc, _, err = run_main(capsys, "train", "--act", "relu", "--weights", str(relu), "--train-only", "acts",
                          "--epochs", "1", "--limit-batches", "1", "--out", str(tmp_path / "c"))
    assert rc == 2 and "no activation parameters to train" in err, err


def test_train_only_in_python_leaves_only_the_activations_and_optionally_the_batchnorms_trainable():
    from repact.train import train_only

    def net():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8),
                              nn.Hardswish(), nn.Flatten(), nn.LazyLinear(4))
        model(torch.randn(2, 3, 6, 6))
        repact.swap_activations(model, "repact", init="approximate", example_input=torch.randn(2, 3, 6, 6))
        return model

    model = net()
    frozen = train_only(model, "acts")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith(("2.", "5."))} and len(trainable) == 4
    assert frozen == [model[1], model[4]]
    model = net()
    assert train_only(model, "bn,acts") == []
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {n for n, _ in model.named_parameters() if n.startswith(("1.", "2.", "4.", "5."))}
    for bad in ("bn", "acts,convs", None):
        with pytest.raises(ValueError, match="train_only must be acts or acts,bn"):
            train_only(net(), bad)
    with pytest.raises(ValueError, match="no activation parameters to train"):
        train_only(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))


@pytest.mark.slow
def test_a_pretrained_model_fine_tunes_while_its_swapped_activations_anneal(tmp_path):
    # the pretrained file holds no annealing wrappers: the run loads it, swaps, then wraps (as build_model rebuilds)
    out = _finetune(tmp_path, "--anneal-acts", "0:2", "--anneal-include", ".", "--epochs", "2",
                    "--limit-batches", "3")[1]
    assert json.loads((out / "finetune.json").read_text())["trainable_params"] == 15
    model = build_model(out / "last").eval()  # strict: the wrappers' lam and the swapped RepActs' weights
    wrapped = [m for m in model.modules() if isinstance(m, repact.Annealed)]
    assert len(wrapped) == 3 and all(isinstance(m.act, repact.RepAct) and float(m.lam) == 1.0 for m in wrapped)
