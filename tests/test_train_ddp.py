"""DDP on 2 CPU processes (gloo) through torchrun: the ranks end with identical parameters, and
--sync-bn shares BatchNorm statistics (RepAct-III's included) exactly as one process on the batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from repact.checkpoint import load_checkpoint

WORKER = textwrap.dedent('''
    import os, sys
    from safetensors.torch import save_file
    from repact.train import TrainConfig, train

    out = sys.argv[1]
    res = train(TrainConfig(act="repact_bn", epochs=2, batch_size=16, limit_batches=8, lr=0.05, seed=1,
                            quiet=True, out=out, sync_bn=True))
    rank = int(os.environ["RANK"])
    params = {k: v.detach().contiguous() for k, v in res.model.named_parameters()}
    save_file(params, os.path.join(out, f"params_rank{rank}.safetensors"))
''')


def _torchrun(*args: str, **extra_env: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra_env)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *args], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_cpu_processes_agree(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "run"
    proc = _torchrun(str(script), str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    p0 = load_file(str(out / "params_rank0.safetensors"))
    p1 = load_file(str(out / "params_rank1.safetensors"))
    assert p0.keys() == p1.keys() and len(p0) > 0
    for k in p0:
        assert torch.equal(p0[k], p1[k]), k
    init = load_checkpoint(out / "last")
    for k in p0:  # rank 0 wrote the checkpoint of exactly these parameters
        assert torch.equal(init.model_state[k], p0[k]), k
    hist = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [1, 2]
    assert all(h["train_images"] == 2 * 8 * 16 for h in hist)  # both ranks' batches counted once
    assert all(h["val_images"] == 359 for h in hist)  # every val image seen exactly once over the ranks
    assert init.state["world_size"] == 2 and len(init.state["rng"]) == 2
    # the ranks drew different batches: their RNG streams differ
    assert not torch.equal(init.state["rng"][0]["torch"], init.state["rng"][1]["torch"])


SYNC_WORKER = textwrap.dedent('''
    import sys
    import torch
    import torch.distributed as dist
    from safetensors.torch import save_file
    sys.path.insert(0, sys.argv[3])
    from test_train_ddp import sync_case
    from repact.ops import backend, choose
    from repact.train.dist import convert_sync_batchnorm

    out = sys.argv[1]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    for impl, gran in [(i, gr) for i in sys.argv[2].split(",") for gr in ("layer", "channel")]:
        model, x, g = sync_case(gran)
        model = convert_sync_batchnorm(model).train()
        lo, hi = (0, 3) if rank == 0 else (3, x.shape[0])  # uneven shares: statistics merge count-weighted
        xi = x[lo:hi].clone().requires_grad_(True)
        with backend(impl):
            assert choose(xi) == impl
            for _ in range(2):  # two steps: the running statistics follow both
                y = model(xi)
            y.backward(g[lo:hi])
        res = {"y": y.detach(), "x": xi.grad}
        res.update({"grad." + n: p.grad for n, p in model.named_parameters()})
        res.update({"buf." + n: b.float() for n, b in model.named_buffers()})
        save_file({k: v.contiguous() for k, v in res.items()}, f"{out}/{impl}_{gran}_rank{rank}.safetensors")
''')


def sync_case(gran):
    """A BatchNorm2d then a RepAct-III, random parameters and statistics, a batch of 8 and its gradient."""
    import repact
    from repact import RepAct

    torch.manual_seed(3)
    c = 4
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(c), RepAct(c, variant="bn", granularity=gran))
    repact.randomize_activations_(model, seed=4)
    repact.randomize_batchnorm_(model, seed=5)
    with torch.no_grad():
        model[0].weight.uniform_(0.5, 1.5)
        model[0].bias.normal_()
    x = torch.randn(8, c, 5, 3) * 3 + 1
    g = torch.randn(8, c, 5, 3)
    return model, x, g


@pytest.mark.slow
def test_sync_bn_equals_one_process_on_the_whole_batch(tmp_path):
    """--sync-bn on gloo: outputs, input gradients (every process's sums), parameter gradients
    (summed over the processes, as DDP does) and running statistics of BatchNorm2d and RepAct-III
    (layer- and channel-wise; reference, cpu kernels, and the Triton kernels in Triton's interpreter)
    equal one process on the whole batch."""
    from repact.ops import backend, native_available, triton_available

    impls = ["reference"] + (["cpu"] if native_available() else []) + (["triton"] if triton_available() else [])
    script = tmp_path / "sync_worker.py"
    script.write_text(SYNC_WORKER)
    proc = _torchrun(str(script), str(tmp_path), ",".join(impls), str(Path(__file__).parent), TRITON_INTERPRET="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for impl, gran in [(i, gr) for i in impls for gr in ("layer", "channel")]:
        model, x, g = sync_case(gran)
        model.train()
        xi = x.clone().requires_grad_(True)
        with backend("reference" if impl == "triton" else impl):  # (Triton's interpreter is off here)
            for _ in range(2):
                y = model(xi)
            y.backward(g)
        ranks = [load_file(str(tmp_path / f"{impl}_{gran}_rank{r}.safetensors")) for r in (0, 1)]
        tol = dict(rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y.detach(), **tol)
        torch.testing.assert_close(torch.cat([r["x"] for r in ranks]), xi.grad, **tol)
        for n, p in model.named_parameters():
            torch.testing.assert_close(ranks[0]["grad." + n] + ranks[1]["grad." + n], p.grad, **tol, msg=n)
        for n, b in model.named_buffers():
            for r in ranks:
                torch.testing.assert_close(r["buf." + n], b.float(), **tol, msg=n)


@pytest.mark.slow
def test_torchrun_module_cli(tmp_path):
    out = tmp_path / "cli"
    proc = _torchrun("-m", "repact", "train", "--act", "hardswish", "--epochs", "1", "--batch-size", "16",
                     "--limit-batches", "4", "--quiet", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("training into") == 1  # rank 0 logs alone
    assert "2 process(es) on cpu" in proc.stdout
    ck = load_checkpoint(out / "last")
    assert ck.state["world_size"] == 2 and ck.state["config"]["act"] == "hardswish"


STOCHASTIC_WORKER = textwrap.dedent('''
    import json, os, sys
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file
    from repact.activations.stochastic import Stochastic
    from repact.train import TrainConfig, train
    from repact.train import setup as train_setup

    out = sys.argv[1]
    rank = int(os.environ["RANK"])
    picks = {}
    build = train_setup.build_model_for

    def recording_build(*args, **kw):  # record each stochastic layer's draw (SiLU or ReLU) per training forward
        model, config = build(*args, **kw)
        for name, m in model.named_modules():
            if isinstance(m, Stochastic):
                def hook(mod, inp, outp, name=name):
                    if mod.training and not mod.fixed:
                        picks.setdefault(name, []).append(not torch.equal(outp, F.relu(inp[0])))
                m.register_forward_hook(hook)
        return model, config

    train_setup.build_model_for = recording_build
    import repact.train.engine as engine
    engine.build_model_for = recording_build
    res = train(TrainConfig(act="stochastic", epochs=2, batch_size=16, limit_batches=6, lr=0.05, seed=1, quiet=True,
                            out=out, stochastic_p="0.8:0.2"))
    params = {k: v.detach().contiguous() for k, v in res.model.named_parameters()}
    save_file(params, os.path.join(out, f"params_rank{rank}.safetensors"))
    with open(os.path.join(out, f"picks_rank{rank}.json"), "w") as fh:
        json.dump(picks, fh)
''')


@pytest.mark.slow
def test_stochastic_activations_under_ddp_draw_one_stream_per_process_and_repeat(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(STOCHASTIC_WORKER)
    runs = []
    for name in ("a", "b"):
        proc = _torchrun(str(script), str(tmp_path / name))
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append([load_file(str(tmp_path / name / f"params_rank{r}.safetensors")) for r in (0, 1)])
    (a0, a1), (b0, b1) = runs
    for k in a0:
        assert torch.equal(a0[k], a1[k]) and torch.equal(a0[k], b0[k]) and torch.equal(b0[k], b1[k]), k
    picks = [json.loads((tmp_path / "a" / f"picks_rank{r}.json").read_text()) for r in (0, 1)]
    assert picks[0].keys() == picks[1].keys() and len(picks[0]) == 3
    assert all(len(v) == 12 for v in picks[0].values())  # 2 epochs x 6 steps per layer
    assert picks[0] != picks[1]  # each process draws its own stream
    assert picks[0] == json.loads((tmp_path / "b" / "picks_rank0.json").read_text())
