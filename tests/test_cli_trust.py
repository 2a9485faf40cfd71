"""What a command may trust in a checkpoint, as a user meets it (issue 23, points 3 and 4).

* A checkpoint's header is data, not instructions: a recorded model config that asks for weights
  (torchvision's ``weights=``, timm's ``pretrained``), names a file (``pretrained_cfg_overlay``,
  ``checkpoint_path``, a detector's weights file) or an absurd size (``width: 1048576``) is refused
  by every command that rebuilds a model from a checkpoint, with one line, exit 2, before anything
  is fetched, read or allocated; in a real process with the network and weight reads forbidden.
* A checkpoint whose weights hold NaN/inf is refused by every such command (one shared check).
* ``eval`` never reports metrics of non-finite outputs, and its JSON never holds NaN.
* ``eval`` and ``train --resume`` refuse data whose class names differ from the checkpoint's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import cli_process
import guarded_cli
from analysis_fixtures import digit_png, train_run
from repact.checkpoint import load_checkpoint, save_checkpoint
from repact.train import resolve_config
from train_fixtures import FAST, cli_env, run_main, tree_digest, write_image_folder

TESTS = Path(__file__).resolve().parent


def _one_line(err: str, command: str) -> str:
    assert "Traceback" not in err, err
    assert err.count("\n") == 1 and err.startswith(f"repact {command}: error: "), err
    return err


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A real one-epoch digits run (small_cnn, RepAct-I): last/best checkpoints and act_params.jsonl."""
    return train_run(tmp_path_factory.mktemp("trust") / "run", epochs=1, limit=2)


def _craft(src: Path, dst: Path, model_config: dict | None = None, poison=None) -> Path:
    """A copy of checkpoint ``src`` whose model config is updated with ``model_config`` (its training
    config's model and model_kwargs too, as train --resume builds from those) and whose tensors
    ``poison`` may change; written as repact writes checkpoints (the header in the metadata)."""
    with safe_open(str(src), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        header = json.loads(f.metadata()["repact"])
    header["model_config"].update(model_config or {})
    if model_config:
        header["state"]["config"].update(model=header["model_config"]["name"],
                                         model_kwargs=header["model_config"].get("kwargs", {}))
    if poison:
        poison(tensors)
    save_file(tensors, str(dst), metadata={"repact": json.dumps(header)})
    return dst


def _commands(ck: Path, run: Path, work: Path) -> dict[str, tuple[list[str], Path]]:
    """Every command that rebuilds a model from checkpoint ``ck`` (a run folder holding it as ``last``
    for plot evolution), with outputs under ``work``: name -> (argv, the checkpoint file it reads)."""
    image = work / "digit.png"
    if not image.exists():
        digit_png(image, 3)
    folder = work / f"run-{ck.stem}"
    if not folder.exists():
        shutil.copytree(run, folder)
        shutil.copy(ck, folder / "last.safetensors")
        (folder / "last.json").unlink()
    commands = {
        "verify": ["verify", str(ck)],
        "eval": ["eval", str(ck), "--json"],
        "deploy": ["deploy", str(ck), "--out", str(work / "deployed")],
        "cam": ["cam", str(ck), str(image), "--out", str(work / "cam.png")],
        "plot layers": ["plot", "layers", str(ck), "--out", str(work / "layers.png")],
        "plot features": ["plot", "features", str(ck), str(image), "--out", str(work / "features.png")],
        "plot evolution": ["plot", "evolution", str(folder), "--out", str(work / "evolution.png")],
        "train --resume": ["train", "--resume", str(ck), "--out", str(work / "resumed")],
    }
    return {k: (v, folder / "last.safetensors" if k == "plot evolution" else ck) for k, v in commands.items()}


# crafted model configs, each of which made the commands fetch, read or allocate before they were
# checked ({file} is a real weights file, so a read would happen), and what the refusal says
CRAFTED = {
    "torchvision_weights": ({"name": "mobilenet_v3_small", "num_classes": 1000,
                             "kwargs": {"weights": "IMAGENET1K_V1"}}, "weights='IMAGENET1K_V1' fetches weights"),
    "timm_pretrained": ({"name": "timm", "kwargs": {"model_name": "resnet18", "pretrained": True}},
                        "pretrained=True fetches weights"),
    "timm_cfg_overlay": ({"name": "timm", "kwargs": {"model_name": "resnet18",
                                                     "pretrained_cfg_overlay": {"file": "{file}"}, "pretrained": True}},
                         "'pretrained_cfg_overlay' is not one a checkpoint may record for timm"),
    "timm_checkpoint_path": ({"name": "timm", "kwargs": {"model_name": "resnet18", "checkpoint_path": "{file}"}},
                             "'checkpoint_path' is not one a checkpoint may record for timm"),
    "detector_weights_file": ({"name": "ssdlite320_mobilenet_v3_large", "task": "detection",
                               "kwargs": {"weights": "{file}"}}, "fetches weights"),
    "huge_width": ({"kwargs": {"in_channels": 1, "width": 1048576}}, "has 98,956,112,560,138 parameters:"),
}


def _crafted(run: Path, work: Path, case: str) -> Path:
    weights = work / "weights.pth"
    if not weights.exists():
        torch.save({"features.0.weight": torch.zeros(1)}, weights)
    config = json.loads(json.dumps(CRAFTED[case][0]).replace("{file}", str(weights)))
    return _craft(run / "last.safetensors", work / f"{case}.safetensors", config)


# one real process per command, the crafted headers taken in turn (every command and every header once)
PROCESS_CASES = [("verify", "timm_pretrained"), ("eval", "torchvision_weights"), ("deploy", "timm_cfg_overlay"),
                 ("cam", "timm_checkpoint_path"), ("plot layers", "detector_weights_file"),
                 ("plot features", "huge_width"), ("plot evolution", "timm_pretrained"),
                 ("train --resume", "timm_cfg_overlay")]


@pytest.mark.parametrize("command,case", PROCESS_CASES)
def test_a_crafted_header_is_refused_at_once_in_a_real_process_without_reaching_out(run, tmp_path, command, case):
    ck = _crafted(run, tmp_path, case)
    argv, named = _commands(ck, run, tmp_path)[command]
    log = tmp_path / "guard.jsonl"
    env = cli_env(REPACT_GUARD_LOG=str(log), HF_HUB_OFFLINE="1", TORCH_HOME=str(tmp_path / "torch_home"),
                  HF_HOME=str(tmp_path / "hf_home"), no_proxy="", http_proxy="http://127.0.0.1:9",
                  https_proxy="http://127.0.0.1:9")
    proc = cli_process.run(argv, script=TESTS / "guarded_cli.py", env=env, cwd=tmp_path, timeout=300)
    records = guarded_cli.read_log(log)
    assert [r for r in records if "reached_out" in r] == []  # nothing fetched, connected to or read
    assert proc.returncode == 2, proc.stderr
    err = _one_line(proc.stderr, argv[0])
    assert str(named) in err and CRAFTED[case][1] in err, err
    assert proc.stdout == ""
    elapsed = [r["elapsed_s"] for r in records if "elapsed_s" in r]
    assert len(elapsed) == 1 and elapsed[0] < 15, elapsed  # the command's own time, after its imports
    assert not (tmp_path / "deployed").exists() and not (tmp_path / "resumed").exists()


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_every_command_refuses_every_crafted_header(run, tmp_path, capsys, monkeypatch, case):
    log = tmp_path / "guard.jsonl"
    guarded_cli.forbid(monkeypatch.setattr, log)
    ck = _crafted(run, tmp_path, case)
    for name, (argv, named) in _commands(ck, run, tmp_path).items():
        rc, out, err = run_main(capsys, *argv)
        assert rc == 2, (name, err)
        assert str(named) in _one_line(err, argv[0]) and CRAFTED[case][1] in err, (name, err)
    assert guarded_cli.read_log(log) == []
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".png") == ["digit.png"]


def test_harmless_recorded_values_and_a_real_run_still_load(run, tmp_path, capsys):
    """weights: null and pretrained: false are what the builders default to: no refusal; the run's own
    checkpoint rebuilds and evaluates."""
    ck = _craft(run / "last.safetensors", tmp_path / "ok.safetensors",
                {"kwargs": {"in_channels": 1, "width": 8, "dropout": 0.0}})
    rc, out, err = run_main(capsys, "eval", str(ck), "--json")
    assert rc == 0, err
    assert json.loads(out)["results"][0]["n"] > 0
    tv = _craft(run / "last.safetensors", tmp_path / "tv.safetensors",
                {"name": "mobilenet_v3_small", "act": None, "kwargs": {"weights": None, "small_input": True}})
    rc, _, err = run_main(capsys, "verify", str(tv))  # passes the header checks, then fails to load the tensors
    assert rc == 2 and "does not match model 'mobilenet_v3_small'" in _one_line(err, "verify")


def test_a_run_records_no_fetching_keyword_and_resumes_without_it(tmp_path, monkeypatch):
    """weights= / pretrained= initialize a new run only: the model config (what checkpoints record)
    leaves them out, and a resumed run is built without them (nothing fetched)."""
    from repact.train.setup import build_data, build_model_for

    cfg = resolve_config({}, {"model": "mobilenet_v3_small", "model_kwargs": {"weights": None, "dropout": 0.1}})
    _, _, info = build_data(cfg)
    _, config = build_model_for(cfg, info)
    assert config["kwargs"] == {"dropout": 0.1, "small_input": True}
    assert cfg.model_kwargs == {"weights": None, "dropout": 0.1}  # the training config keeps what was asked
    log = tmp_path / "guard.jsonl"
    guarded_cli.forbid(monkeypatch.setattr, log)
    cfg = resolve_config({}, {"model": "mobilenet_v3_small", "model_kwargs": {"weights": "IMAGENET1K_V1"}})
    model, resumed = build_model_for(cfg, info, saved=config)
    assert "weights" not in resumed["kwargs"] and model.classifier[-1].out_features == 10
    assert guarded_cli.read_log(log) == []


# ------------------------------------------------------------------------------------------------
# non-finite weights: one check for every command
# ------------------------------------------------------------------------------------------------


def _nan_first_conv(tensors):
    tensors["model.features.0.weight"].view(-1)[0] = float("nan")


def test_every_command_refuses_non_finite_weights_naming_the_tensor(run, tmp_path, capsys):
    ck = _craft(run / "last.safetensors", tmp_path / "nan.safetensors", poison=_nan_first_conv)
    for name, (argv, named) in _commands(ck, run, tmp_path).items():
        rc, out, err = run_main(capsys, *argv)
        assert rc == 2, (name, err)
        msg = _one_line(err, argv[0])
        assert f"{named} holds non-finite weights (NaN/inf): features.0.weight (1 of " in msg, (name, msg)
        assert "NaN" not in out
    inf_bn = _craft(run / "last.safetensors", tmp_path / "inf.safetensors",
                    poison=lambda t: t["model.features.1.running_var"].fill_(float("inf")))
    rc, _, err = run_main(capsys, "verify", str(inf_bn), "--keep-bn")
    assert rc == 2 and "features.1.running_var (8 of 8)" in _one_line(err, "verify")


def test_eval_json_of_a_nan_checkpoint_in_a_real_process(run, tmp_path):
    ck = _craft(run / "last.safetensors", tmp_path / "nan.safetensors", poison=_nan_first_conv)
    proc = cli_process.run(["eval", str(ck), "--json"], env=cli_env(), timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "features.0.weight" in _one_line(proc.stderr, "eval")


# ------------------------------------------------------------------------------------------------
# eval of a model whose outputs are not finite: no metrics, no NaN in JSON
# ------------------------------------------------------------------------------------------------


def test_eval_fails_on_non_finite_logits_and_never_prints_nan(run, tmp_path, capsys):
    # finite weights whose logits overflow: the weights check passes, the outputs do not
    ck = _craft(run / "last.safetensors", tmp_path / "huge.safetensors",
                poison=lambda t: [t[k].mul_(1e30) for k in ("model.features.3.weight", "model.features.6.weight")])
    for extra in ([], ["--json"]):
        rc, out, err = run_main(capsys, "eval", str(ck), *extra)
        assert rc == 1 and out == "" and "NaN" not in out
        assert "Traceback" not in err and err.count("\n") == 1
        assert err.startswith("repact eval: FAILED: the logits of the model hold"), err


def test_segmentation_eval_fails_on_a_nan_metric_instead_of_printing_it(tmp_path, capsys):
    from repact.tasks import get_task
    from voc_fixtures import SEG_CLASSES, write_segmentation_set

    root = write_segmentation_set(tmp_path / "voc", n_train=2, n_val=2, size=64)
    task = get_task("segmentation")
    _, _, info = task.build_data("voc_seg", root, img_size=64, classes=SEG_CLASSES)
    model, config = task.build_model("lraspp_mobilenet_v3_large", act="repact", info=info)
    with torch.no_grad():  # finite weights, overflowing outputs
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.mul_(1e12)
    state = {"config": {"dataset": "voc_seg", "data_dir": str(root), "classes": ",".join(SEG_CLASSES)},
             "data": info.as_dict()}
    save_checkpoint(tmp_path / "seg", model, model_config=config, state=state)
    rc, out, err = run_main(capsys, "eval", str(tmp_path / "seg.safetensors"), "--json")
    assert rc == 1 and out == "", out
    assert err.startswith("repact eval: FAILED: ") and "loss is nan" in err and err.count("\n") == 1, err
    assert "its outputs are not finite numbers" in err


# ------------------------------------------------------------------------------------------------
# class names: eval and train --resume on other data
# ------------------------------------------------------------------------------------------------


def test_eval_and_resume_refuse_data_whose_class_names_differ(tmp_path, capsys):
    ours = write_image_folder(tmp_path / "ours", classes=("cat", "dog", "owl"), per_class=4, val_per_class=2,
                              size=16)
    other = write_image_folder(tmp_path / "other", classes=("cat", "dog", "pig"), per_class=4, val_per_class=2,
                               size=16)
    run_dir = tmp_path / "run"
    rc, _, err = run_main(capsys, "train", *FAST, "--dataset", "imagefolder", "--data-dir", str(ours),
                          "--img-size", "16", "--batch-size", "4", "--model-kw", "width=8", "--out", str(run_dir))
    assert rc == 0, err
    assert run_main(capsys, "eval", str(run_dir))[0] == 0  # its own data
    rc, _, err = run_main(capsys, "eval", str(run_dir), "--data-dir", str(other))
    msg = _one_line(err, "eval")
    assert rc == 2 and "was trained on 3 classes (cat, dog, owl)" in msg and "has 3 (cat, dog, pig)" in msg, msg
    assert "differ first at label 2: 'owl' in the checkpoint, 'pig' in the data" in msg
    before = tree_digest(run_dir)
    rc, _, err = run_main(capsys, "train", "--resume", str(run_dir), "--data-dir", str(other), "--epochs", "2")
    msg = _one_line(err, "train")
    assert rc == 2 and "(cat, dog, owl)" in msg and "(cat, dog, pig)" in msg and str(other) in msg, msg
    assert tree_digest(run_dir) == before
    rc, _, err = run_main(capsys, "train", "--resume", str(run_dir), "--epochs", "2")
    assert rc == 0, err
    assert load_checkpoint(run_dir / "last").state["epoch"] == 2


# ------------------------------------------------------------------------------------------------
# the guard itself: it sees what it is meant to see
# ------------------------------------------------------------------------------------------------


def test_the_guard_records_a_weights_read_and_a_connection(tmp_path, monkeypatch):
    import socket

    log = tmp_path / "guard.jsonl"
    guarded_cli.forbid(monkeypatch.setattr, log)
    with pytest.raises(guarded_cli.ReachedOut):
        torch.load(tmp_path / "w.pth")
    with pytest.raises(guarded_cli.ReachedOut):
        socket.create_connection(("example.org", 443), timeout=1)
    assert [r["reached_out"] for r in guarded_cli.read_log(log)] == ["torch.load", "socket.create_connection"]


def test_without_the_header_checks_the_guard_would_see_the_fetch(run, tmp_path, monkeypatch):
    """The crafted timm header does reach out when built as it says (what the checks prevent)."""
    pytest.importorskip("timm")
    from repact.models import create_model

    log = tmp_path / "guard.jsonl"
    weights = tmp_path / "w.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, weights)
    guarded_cli.forbid(monkeypatch.setattr, log)
    with pytest.raises(Exception):
        create_model("timm", model_name="resnet18", num_classes=10, checkpoint_path=str(weights))
    assert any(r["reached_out"] in ("torch.load", "safetensors.torch.load_file") for r in guarded_cli.read_log(log))


def test_counting_a_models_parameters_never_fetches_its_weights(tmp_path, monkeypatch):
    """The meta-device count behind every size check leaves out weights= / pretrained= (they do not
    change the count): a new run asking for weights downloads them once, in the real build, not here."""
    from repact.models.checks import parameter_count

    log = tmp_path / "guard.jsonl"
    guarded_cli.forbid(monkeypatch.setattr, log)
    plain = parameter_count("mobilenet_v3_small", "repact", 10, {})
    assert plain is not None and plain > 1_000_000
    assert parameter_count("mobilenet_v3_small", "repact", 10, {"weights": "IMAGENET1K_V1"}) == plain
    assert guarded_cli.read_log(log) == []
