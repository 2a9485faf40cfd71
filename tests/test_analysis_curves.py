"""repact.analysis.curves: the plotted f' is the derivative of the plotted f; knots; options and tensors by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from analysis_fixtures import assert_picture
from repact import create_act
from repact.analysis.curves import activation_curve, activation_knots, build_activation, curve_grid, plot_acts
from repact.analysis.figures import output_path, save_figure


def _randomized(name: str) -> nn.Module:
    torch.manual_seed(1)
    if name == "repact_bn_channel":
        m = create_act("repact_bn", channels=3, granularity="channel")
    else:
        m = create_act(name, channels=3) if name == "acon_c" else create_act(name)
    c = 3 if name in ("acon_c", "repact_bn_channel") else 1
    with torch.no_grad():
        m.eval()(torch.zeros(2, c, 1, 1))
        for n, t in [*m.named_parameters(), *m.named_buffers()]:
            if t.is_floating_point() and not n.rsplit(".", 1)[-1].startswith("_"):
                t.copy_(torch.rand_like(t) * 1.5 + 0.1 if "var" in n else torch.randn_like(t) * 0.7)
    return m


@pytest.mark.parametrize("name", ["repact", "repact_softmax", "repact_bn", "repact_bn_channel", "hardswish", "relu6",
                                  "acon_c", "swish", "pau", "gelu", "elu", "prelu", "meta_acon"])
def test_plotted_derivative_equals_a_finite_difference(name):
    m = _randomized(name)
    h = 1e-5
    x = torch.linspace(-5.9, 5.9, 236, dtype=torch.float64)  # no point at 0, where safe PAU has a kink
    c = activation_curve(m, x=x)
    up = activation_curve(m, x=x + h).y
    down = activation_curve(m, x=x - h).y
    fd = (up - down) / (2 * h)
    away = np.ones(x.numel(), dtype=bool)
    for k in c.knots:
        away &= np.abs(x.numpy() - k) > 4 * h
    assert away.sum() > 200
    np.testing.assert_allclose(c.dy[:, away], fd[:, away], rtol=1e-6, atol=1e-6)
    # and f itself is the layer's eval-mode output, one row per channel
    ch = c.y.shape[0]
    with torch.no_grad():
        direct = m.double().eval()(x.reshape(-1, 1, 1, 1).expand(-1, ch, 1, 1).clone()).reshape(-1, ch).T
    np.testing.assert_allclose(c.y, direct.numpy(), rtol=1e-12, atol=1e-12)


def test_knots_of_piecewise_forms_are_found_and_on_the_grid():
    assert activation_knots(create_act("repact")) == (-3.0, 0.0, 3.0)
    assert activation_knots(nn.Hardswish()) == (-3.0, 3.0)
    assert activation_knots(nn.ReLU6()) == (0.0, 6.0)
    assert activation_knots(nn.Hardtanh(-2.0, 0.5)) == (-2.0, 0.5)
    assert activation_knots(create_act("prelu")) == (0.0,)
    assert activation_knots(nn.GELU()) == ()
    from repact import reparameterize

    deployed = reparameterize(create_act("repact_bn"), inplace=False)
    assert activation_knots(deployed) == (-3.0, 0.0, 3.0)
    grid = curve_grid(-6, 6, 10, (-3.0, 0.0, 3.0, 9.0))
    assert {-3.0, 0.0, 3.0} <= set(grid.tolist()) and 9.0 not in grid.tolist()
    with pytest.raises(ValueError, match="LO < HI"):
        curve_grid(2, 1)


def test_build_activation_takes_options_and_tensor_values():
    identity = build_activation("repact", {"branch_weight": [1, 0, 0, 0]})
    c = activation_curve(identity, points=101)
    np.testing.assert_allclose(c.y[0], c.x, atol=1e-12)
    np.testing.assert_allclose(c.dy[0], 1.0, atol=1e-12)
    bn = build_activation("repact_iii", {"bn_eps": 0.01})
    assert bn.variant == "bn" and bn.bn.eps == 0.01
    lazy = build_activation("repact_iii", {"granularity": "channel"})
    assert all(m.training for m in lazy.modules())  # built by an eval-mode forward, handed back training
    with pytest.raises(ValueError, match="branch_weight, prelu_weight"):
        build_activation("repact", {"nope": 1})
    with pytest.raises(ValueError, match="holds 4 value"):
        build_activation("repact", {"branch_weight": [1, 2]})
    with pytest.raises(ValueError, match="unknown activation"):
        build_activation("repactt")


def test_plot_acts_overlays_every_name_in_every_format(tmp_path):
    fig, data = plot_acts(["repact", "hardswish", "acon_c", "frelu"], points=301)
    assert [c.label for c in data.curves] == ["repact", "hardswish", "acon_c", "frelu"]
    assert data.curves[0].knots == (-3.0, 0.0, 3.0) and data.curves[2].knots == ()
    assert len(fig.axes) == 2 and len(fig.axes[0].get_lines()) >= 4
    for fmt in ("png", "svg", "pdf"):
        path, f = output_path(tmp_path / "acts", fmt, "act")
        save_figure(plot_acts(["repact", "gelu"], points=201)[0], path, f)
        assert_picture(path)
    save_figure(fig, tmp_path / "acts_main.png")
    assert_picture(tmp_path / "acts_main.png")
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave nothing behind


def test_output_path_rules(tmp_path):
    assert output_path(None, None, "act") == (output_path("act.png", None, "x")[0], "png")
    assert output_path(tmp_path / "a", "svg", "x")[0].name == "a.svg"
    assert output_path(tmp_path / "a.pdf", None, "x")[1] == "pdf"
    with pytest.raises(ValueError, match="--format is svg"):
        output_path(tmp_path / "a.png", "svg", "x")
    with pytest.raises(ValueError, match="unknown picture format .jpg"):
        output_path(tmp_path / "a.jpg", None, "x")
