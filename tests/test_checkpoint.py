"""Checkpoints: round trips without pickle, atomic replacement, and clear errors."""

import json

import pytest
import torch

from repact.checkpoint import CheckpointError, build_model, checkpoint_paths, load_checkpoint, save_checkpoint
from repact.models import create_model

CFG = {"name": "small_cnn", "act": "repact_bn", "num_classes": 10, "input_shape": [1, 8, 8]}


def _trained_model():
    torch.manual_seed(0)
    m = create_model("small_cnn", act="repact_bn", num_classes=10)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    m(torch.randn(4, 1, 8, 8)).logsumexp(1).sum().backward()
    opt.step()
    return m, opt


def test_round_trip_model_optimizer_and_rng(tmp_path):
    m, opt = _trained_model()
    rng = torch.get_rng_state()
    tpath, jpath = save_checkpoint(tmp_path / "last", m, model_config=CFG,
                                   state={"epoch": 3, "optimizer": opt.state_dict(), "rng": rng, "best": 0.5})
    assert tpath.name == "last.safetensors" and jpath.name == "last.json"
    header = json.loads(jpath.read_text())
    assert header["model_config"] == CFG and header["state"]["epoch"] == 3
    ck = load_checkpoint(tmp_path / "last.json")
    assert ck.state["epoch"] == 3 and ck.state["best"] == 0.5
    assert torch.equal(ck.state["rng"], rng)
    opt2 = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(ck.state["optimizer"])
    for k, v in opt.state_dict()["state"].items():
        assert torch.equal(opt2.state_dict()["state"][k]["momentum_buffer"], v["momentum_buffer"])
    rebuilt = build_model(ck).eval()
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(rebuilt(x), m.eval()(x))


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path):
    m, _ = _trained_model()
    save_checkpoint(tmp_path / "last", m, model_config=CFG, state={"epoch": 1})
    before = checkpoint_paths(tmp_path / "last")[0].read_bytes()
    with pytest.raises(TypeError, match="cannot store a object"):
        save_checkpoint(tmp_path / "last", m, model_config=CFG, state={"epoch": 2, "bad": object()})
    assert checkpoint_paths(tmp_path / "last")[0].read_bytes() == before
    assert load_checkpoint(tmp_path / "last").state["epoch"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_unreadable_and_mismatched_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(bad)
    m, _ = _trained_model()
    save_checkpoint(tmp_path / "ck", m, model_config={**CFG, "act": "repact"})
    with pytest.raises(CheckpointError, match="does not match model 'small_cnn' with act 'repact'"):
        build_model(tmp_path / "ck")
    save_checkpoint(tmp_path / "noname", m)
    with pytest.raises(CheckpointError, match="records no model config"):
        build_model(tmp_path / "noname")


def test_reparameterized_models_rebuild_in_deploy_form(tmp_path):
    import repact

    m, _ = _trained_model()
    m.eval()
    deployed = repact.reparameterize(m, inplace=False)
    save_checkpoint(tmp_path / "deploy", deployed, model_config={**CFG, "reparameterized": True})
    rebuilt = build_model(tmp_path / "deploy").eval()
    assert any(isinstance(mod, repact.PiecewiseQuadratic) for mod in rebuilt.modules())
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(rebuilt(x), m(x), rtol=1e-5, atol=1e-5)


def test_checkpoint_files_get_the_usual_permissions(tmp_path):
    import os

    m, _ = _trained_model()
    mask = os.umask(0)
    os.umask(mask)
    for p in save_checkpoint(tmp_path / "ck", m, model_config=CFG):
        assert (p.stat().st_mode & 0o777) == (0o666 & ~mask)


@pytest.mark.parametrize("change, words", [
    (lambda h: ["not", "a", "mapping"], ["not a repact checkpoint"]),
    (lambda h: {**h, "version": "2"}, ["version '2'"]),
    (lambda h: {**h, "model_config": [1]}, ["'model_config' is a list"]),
    (lambda h: {**h, "state": "x"}, ["'state' is a str"]),
    (lambda h: {**h, "state": {"a": {"__list__": 3}}}, ["state cannot be read"]),
    (lambda h: {**h, "state": {"a": {"__intkeys__": True}}}, ["state cannot be read"]),
])
def test_crafted_headers_are_refused_with_the_file_named(tmp_path, change, words):
    from safetensors.torch import save_file

    m, _ = _trained_model()
    tpath, jpath = save_checkpoint(tmp_path / "ck", m, model_config=CFG, state={"epoch": 1})
    header = json.loads(jpath.read_text())
    jpath.unlink()
    tensors = {k: v for k, v in load_checkpoint(tpath).model_state.items()}
    save_file({f"model.{k}": v for k, v in tensors.items()}, str(tpath), metadata={"repact": json.dumps(change(header))})
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tpath)
    assert str(tpath) in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_crafted_model_config_is_refused_by_build_model(tmp_path):
    m, _ = _trained_model()
    save_checkpoint(tmp_path / "ck", m, model_config={**CFG, "num_classes": "ten"})
    with pytest.raises(CheckpointError, match="num_classes.*'ten'"):
        build_model(tmp_path / "ck")
    save_checkpoint(tmp_path / "ck2", m, model_config={**CFG, "kwargs": {"width": -1}})
    with pytest.raises(CheckpointError, match="cannot be built.*width"):
        build_model(tmp_path / "ck2")

