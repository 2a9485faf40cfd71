"""Cost reports: params, FLOPs with pointwise activation work, interleaved latency, the model-level report."""

import json

import pytest
import torch
from torch import nn

import repact
from repact.deploy import count_flops, count_params, cost_report, time_interleaved
from repact.deploy.cost import activation_modules
from repact.models import create_model


CONV = 2 * (8 * 8 * 8) * (3 * 9)  # Conv2d(3, 8, 3, padding=1) on 8x8: 2 FLOPs per multiply-add
FC = 2 * 8 * 10


def _net(act):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), act, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 10))


def test_params_count_shared_tensors_once():
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    assert count_params(model) == 20
    model[0].bias.requires_grad_(False)
    assert count_params(model, trainable_only=True) == 16


@pytest.mark.parametrize("act,train,deploy", [
    (nn.ReLU(), 1, 1), (nn.Hardswish(), 5, 5), (repact.RepAct(), 7, 7), (repact.RepAct(variant="bn"), 9, 7),
])
def test_flops_add_the_activation_pointwise_work(act, train, deploy):
    report = count_flops(_net(act), torch.randn(1, 3, 8, 8))
    assert report.compute == CONV + FC
    assert report.activation == train * 512 and report.activation_deploy == deploy * 512
    assert report.total == CONV + FC + train * 512 and report.sites == 1
    assert report.by_type == {type(act).__name__: train * 512}


def test_conv_inside_an_activation_is_not_counted_twice():
    frelu = repact.create_act("frelu", channels=8)
    report = count_flops(_net(frelu), torch.randn(1, 3, 8, 8))
    assert report.compute == CONV + FC  # FReLU's depthwise conv is in the activation's own count
    assert report.activation == frelu.flops((1, 8, 8, 8)) > 512


def test_reused_modules_count_every_call_and_deploy_form_matches_the_deployed_model():
    relu = nn.ReLU()
    model = nn.Sequential(nn.Conv2d(3, 8, 1), relu, nn.Conv2d(8, 8, 1), relu)
    assert count_flops(model, torch.randn(2, 3, 4, 4)).activation == 2 * (2 * 8 * 16)
    net = create_model("mobilenet_v3_small", act="repact_bn", num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    train = count_flops(net, x)
    deployed = count_flops(repact.reparameterize(net, inplace=False), x)
    assert deployed.activation == train.activation_deploy < train.activation
    assert deployed.compute == train.compute and train.sites == 23 + 2 * 9 + 1  # + SE ReLU, Hardsigmoid; head
    assert set(activation_modules(net)) >= {"features.0.2", "classifier.1"}


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_time_interleaved_medians_and_paired_ratios():
    clock = _Clock()
    calls = []

    def runner(name, cost):
        def run():
            calls.append(name)
            clock.t += cost
        return run

    out = time_interleaved({"base": runner("base", 0.002), "slow": runner("slow", 0.003), "fast": runner("fast", 0.001)},
                           warmup=2, rounds=6, clock=clock)
    assert out["base"].median_ms == pytest.approx(2.0) and out["slow"].median_ms == pytest.approx(3.0)
    assert out["slow"].ratio == pytest.approx(1.5) and out["fast"].ratio == pytest.approx(0.5)
    assert out["base"].ratio == pytest.approx(1.0) and out["base"].rounds == 6
    timed = calls[6:]  # after 2 warm-up calls each
    assert timed[:3] == ["base", "slow", "fast"] and timed[3:6] == ["slow", "fast", "base"]  # rotating order
    with pytest.raises(ValueError, match="baseline 'x' is not one of"):
        time_interleaved({"a": lambda: None}, baseline="x", rounds=1)
    with pytest.raises(ValueError, match="runners is empty"):
        time_interleaved({})


def test_cost_report_table_and_json(tmp_path):
    report = cost_report("small_cnn", "repact", baseline_act="hardswish", input_shape=(3, 16, 16), batch_sizes=(1, 2),
                         engines=("eager", "onnxruntime"), warmup=1, rounds=2, num_classes=4,
                         model_kwargs={"in_channels": 3, "width": 8}, workdir=tmp_path)
    assert set(report.static) == {"baseline", "train", "deploy"}
    assert report.static["baseline"]["params"] == report.static["deploy"]["params"]
    assert report.static["train"]["params"] == report.static["baseline"]["params"] + 3 * 5  # 5 scalars per RepAct
    assert report.static["train"]["activation_flops"] > report.static["baseline"]["activation_flops"]
    rows = {(r["engine"], r["batch"], r["variant"]) for r in report.latency}
    assert rows == {(e, b, v) for e in ("eager", "onnxruntime") for b in (1, 2) for v in ("baseline", "train", "deploy")}
    assert all(r["ratio"] == pytest.approx(1.0) for r in report.latency if r["variant"] == "baseline")
    assert all(r["median_ms"] > 0 for r in report.latency)
    text = report.table()
    assert "x baseline" in text and "onnxruntime" in text and "act MFLOPs" in text
    assert json.loads(json.dumps(report.as_dict()))["model"] == "small_cnn"
    with pytest.raises(ValueError, match="unknown engine 'tvm'"):
        cost_report("small_cnn", engines=("tvm",))


def test_compile_engine_makes_room_for_every_variant_and_fails_instead_of_falling_back():
    # variants of one architecture share a forward code object; past dynamo's limit they would be
    # timed eagerly under the "compile" label
    from repact.deploy.bench import _compile_limits

    cfg = torch._dynamo.config
    before = (cfg.recompile_limit, cfg.fail_on_recompile_limit_hit)
    with _compile_limits("compile", 4 * 5):
        assert cfg.recompile_limit >= 2 * 4 * 5
        assert cfg.fail_on_recompile_limit_hit is True
    assert (cfg.recompile_limit, cfg.fail_on_recompile_limit_hit) == before
    with _compile_limits("reduce-overhead", 4 * 5):
        assert cfg.recompile_limit >= 2 * 4 * 5
    with _compile_limits("eager", 100):
        assert cfg.recompile_limit == before[0]


def test_pick_engines_defaults_graph_engines_and_refusals():
    """The one check of engines against a device: defaults per device, --cuda-graphs adds the two
    graph engines (CUDA only), and each refusal is one line naming the engine and what runs there."""
    from repact.deploy import CPU_ENGINES, CUDA_ENGINES, GRAPH_ENGINES, pick_engines

    assert pick_engines(None, "cpu") == list(CPU_ENGINES) == ["eager", "compile", "onnxruntime"]
    assert pick_engines(None, "cuda") == list(CUDA_ENGINES) == ["eager", "compile"]
    assert pick_engines(None, "cuda:0", cuda_graphs=True) == ["eager", "compile", *GRAPH_ENGINES]
    assert pick_engines(["eager", "reduce-overhead"], "cuda", cuda_graphs=True) == \
        ["eager", "reduce-overhead", "cuda-graphs"]
    refusals = [((None, "cpu", True), "--cuda-graphs replays CUDA graphs and needs --device cuda"),
                ((["cuda-graphs"], "cpu", False), "engine 'cuda-graphs' replays CUDA graphs and needs --device cuda"),
                ((["reduce-overhead"], "cpu", False), "engine 'reduce-overhead' replays CUDA graphs"),
                ((["onnxruntime"], "cuda", False), "--engines onnxruntime runs on the CPU only"),
                ((["tvm"], "cpu", False), "unknown engine 'tvm'")]
    for args, words in refusals:
        with pytest.raises(ValueError, match=words) as info:
            pick_engines(*args)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="replays CUDA graphs"):  # cost_report runs the same check
        cost_report("small_cnn", engines=("cuda-graphs",))


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_steady_malloc_keeps_freed_memory_in_the_process():
    import subprocess
    import sys

    code = (
        "import resource, torch\n"
        "from repact.deploy import steady_malloc\n"
        "assert steady_malloc()\n"
        "for _ in range(3):\n"
        "    t = torch.ones(64 << 20, dtype=torch.uint8); del t\n"  # 64 MB, past any mmap threshold
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(20):\n"
        "    t = torch.ones(64 << 20, dtype=torch.uint8); del t\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    # without it each 64 MB allocation is a fresh mmap: 16384 page faults a time, 327680 in all
    assert int(out.stdout.strip().splitlines()[-1]) < 16384
