"""DDP on 2 CPU processes (gloo) through torchrun: the ranks end with identical parameters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from repact.checkpoint import load_checkpoint

WORKER = textwrap.dedent('''
    import os, sys
    from safetensors.torch import save_file
    from repact.train import TrainConfig, train

    out = sys.argv[1]
    res = train(TrainConfig(act="repact", epochs=2, batch_size=16, limit_batches=8, lr=0.05, seed=1,
                            quiet=True, out=out))
    rank = int(os.environ["RANK"])
    params = {k: v.detach().contiguous() for k, v in res.model.named_parameters()}
    save_file(params, os.path.join(out, f"params_rank{rank}.safetensors"))
''')


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
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
