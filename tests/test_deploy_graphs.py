"""What onnxruntime (and OpenVINO, where installed) run after their own optimizations
(``repact.deploy.graphs``, the 'what each runtime did with the graph' of issue 25)."""

import pytest
import torch
from torch import nn

from repact.deploy import export_onnx
from repact.deploy.graphs import ort_node_counts, ov_node_counts
from repact.deploy.openvino_run import openvino_available

from test_deploy_runtime_forms import _table


class _Abs(nn.Module):
    def forward(self, x):
        return torch.abs(x)


class _AbsResidual(nn.Module):
    def forward(self, x):
        return x + torch.abs(x)


def _net(act):
    return nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), act, nn.Conv2d(32, 16, 3, padding=1)).eval()


def test_ort_node_counts_show_fused_and_standalone_activations(tmp_path):
    x = torch.randn(1, 16, 12, 12)
    counts = {k: ort_node_counts(export_onnx(_net(a), x, tmp_path / f"{k}.onnx"))
              for k, a in (("hswish", nn.Hardswish()), ("abs", _Abs()))}
    assert sum(v for k, v in counts["hswish"].items() if k.endswith("[HardSwish]")) == 1  # fused into the conv
    assert not any("Hard" in k for k in counts["hswish"] if not k.endswith("]"))
    assert counts["abs"][":Abs"] == 1  # no conv takes Abs: a pass of its own
    # the onnxruntime form: a 1x1 conv with HardSwish, one with LeakyRelu, one taking the sum
    model = _net(_table(0.2, 0.7, 1.1))
    conv = ort_node_counts(export_onnx(model, x, tmp_path / "conv.onnx", form="conv"))
    assert sum(v for k, v in conv.items() if k.endswith("[HardSwish]")) == 1
    assert sum(v for k, v in conv.items() if k.endswith("[LeakyRelu]")) == 1
    assert not any(k.startswith(":") and k[1:] in ("Add", "Mul", "LeakyRelu", "HardSwish") for k in conv)


@pytest.mark.skipif(not openvino_available(), reason="OpenVINO is not installed (pip install 'repact[openvino]')")
def test_ov_node_counts_list_the_compiled_layers(tmp_path):
    x = torch.randn(1, 16, 12, 12)
    counts = ov_node_counts(export_onnx(_net(nn.Hardswish()), x, tmp_path / "h.onnx"), x.shape)
    assert counts.get("Convolution", 0) == 2 and "Parameter" not in counts and "Result" not in counts
    # the openvino form: the whole activation one JIT kernel, the layers of the one-pass x + |x|
    clamp = ov_node_counts(export_onnx(_net(_table(0.2, 0.7, 1.1)), x, tmp_path / "c.onnx", form="clamp"), x.shape)
    assert clamp.get("Subgraph") == 1 and "Eltwise" not in clamp
    assert clamp == ov_node_counts(export_onnx(_net(_AbsResidual()), x, tmp_path / "r.onnx"), x.shape)
