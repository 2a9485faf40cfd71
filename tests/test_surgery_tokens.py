"""Activation surgery on token tensors (N, L, C) and (N, H, W, C): timm ViT and Swin MLPs get
channel-wise activations sized by the hidden width, on the last dim; they train and deploy exactly."""

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import repact
from repact import PiecewiseQuadratic, RepAct
from repact.activations.acon import AconC
from repact.surgery import swap_activations

timm = pytest.importorskip("timm")

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=48, depth=2,
                             num_heads=2, num_classes=5)


def _swin():
    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32, patch_size=2,
                             embed_dim=24, depths=(1, 1), num_heads=(1, 2), window_size=4, num_classes=5)


def _train_step(model, acts):
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for m in acts for p in m.parameters()]
    loss = F.cross_entropy(model(X), torch.tensor([1, 3]))
    loss.backward()
    for m in acts:
        for name, p in m.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    opt.step()
    after = [p.detach() for m in acts for p in m.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    model.eval()


# per model: the MLP activations' paths and hidden widths (4 x embed_dim per stage)
SITES = {
    "vit": (_vit, {"blocks.0.mlp.act": 192, "blocks.1.mlp.act": 192}),
    "swin": (_swin, {"layers.0.blocks.0.mlp.act": 96, "layers.1.blocks.0.mlp.act": 192}),
}


@pytest.mark.parametrize("arch", ["vit", "swin"])
@pytest.mark.parametrize("variant", ["origin", "bn"])
def test_channelwise_repact_in_timm_transformers_trains_and_deploys_exactly(arch, variant):
    build, widths = SITES[arch]
    model = build().eval()
    act = functools.partial(RepAct, variant=variant, granularity="channel")
    report = swap_activations(model, act, targets="GELU", example_input=X)
    assert {r.path: r.channels for r in report.swapped} == widths
    assert all(r.channels_last for r in report.swapped) and "channels last" in str(report)
    acts = [model.get_submodule(p) for p in widths]
    for path, m in zip(widths, acts):
        c = widths[path]
        assert isinstance(m, RepAct) and m.channels_last and m.channels == c
        assert m.branch_weight.shape == (c, 4) and m.prelu_weight.shape == (c,)
        if variant == "bn":
            assert m.bn.running_mean.shape == (c,)
    _train_step(model, acts)
    repact.randomize_activations_(model, seed=3)
    repact.randomize_batchnorm_(model, seed=3)
    res, deployed = repact.verify_reparameterization(model, X, randomize_bn=False, reference="branches")
    assert res.ok(1e-5) and res.max_rel <= 1e-5, str(res)
    deploy_acts = [deployed.get_submodule(p) for p in widths]
    assert all(isinstance(m, PiecewiseQuadratic) and m.channels_last and m.coeffs.shape[0] == widths[p]
               for p, m in zip(widths, deploy_acts))


@pytest.mark.parametrize("arch", ["vit", "swin"])
def test_channelwise_acon_c_in_timm_transformers_acts_on_the_hidden_width(arch):
    build, widths = SITES[arch]
    model = build().eval()
    report = swap_activations(model, "acon_c", targets="GELU", example_input=X)
    assert {r.path: r.channels for r in report.swapped} == widths
    acts = [model.get_submodule(p) for p in widths]
    for path, m in zip(widths, acts):
        assert isinstance(m, AconC) and m.channels_last
        assert m.p1.shape == m.p2.shape == m.beta.shape == (widths[path],)
    _train_step(model, acts)
    with torch.no_grad():  # each channel's own parameters, on the last dim
        for m in acts:
            m.p1.uniform_(-1, 1)
            m.p2.uniform_(-1, 1)
            m.beta.uniform_(0.5, 2)
    seen = {}
    hook = acts[0].register_forward_hook(lambda mod, inp, out: seen.update(x=inp[0], y=out))
    with torch.no_grad():
        model(X)
    hook.remove()
    x, m = seen["x"], acts[0]
    assert x.shape[-1] == widths[next(iter(widths))] and x.dim() in (3, 4)
    d = (m.p1 - m.p2) * x
    expect = d * torch.sigmoid(m.beta * d) + m.p2 * x
    torch.testing.assert_close(seen["y"], expect, rtol=1e-5, atol=1e-6)


class _ConvThenTokens(nn.Module):
    """A conv whose output is permuted to (N, H, W, C) before the activation, then a token MLP."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 12)
        self.act2 = nn.GELU()
        self.head = nn.Linear(12, 2)

    def forward(self, x):
        t = self.act(self.conv(x).permute(0, 2, 3, 1))  # (N, 5, 6, 8): H, W differ from C
        return self.head(self.act2(self.fc(self.norm(t)))).mean(dim=(1, 2))


def test_the_layer_before_decides_the_channel_dim():
    model = _ConvThenTokens()
    x = torch.randn(2, 3, 5, 6)
    ref = model(x)
    report = swap_activations(model, functools.partial(RepAct, granularity="channel"), example_input=x)
    got = {r.path: (r.channels, r.channels_last) for r in report.swapped}
    assert got == {"act": (8, True), "act2": (12, True)}
    assert model(x).shape == ref.shape
    # conv nets keep dim 1; a Linear in a Sequential says "last" without an example forward
    seq = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(2), nn.Linear(6, 7), nn.Dropout(),
                        nn.ReLU())
    report = swap_activations(seq, "acon_c")
    assert [(r.channels, r.channels_last, r.channels_from) for r in report.swapped] == [
        (4, False, "neighbouring layer"), (7, True, "neighbouring layer")]
    assert seq(torch.randn(2, 3, 2, 3)).shape == (2, 4, 7)
    assert seq[2].p1.shape == (4,) and seq[6].p1.shape == (7,)


def test_a_factory_without_channels_last_is_refused_for_token_tensors():
    with pytest.raises(ValueError, match=r"blocks\.0\.mlp\.act gets token tensors.*channels_last=True"):
        swap_activations(_vit(), lambda channels=None: RepAct(channels, granularity="channel"), targets="GELU",
                         example_input=X)


def test_approximate_init_on_token_tensors_starts_as_the_function_it_replaces():
    model = nn.Sequential(nn.Linear(4, 6), nn.Hardswish(), nn.Linear(6, 3))
    x = torch.randn(2, 5, 4)  # (N, L, C), L != C
    with torch.no_grad():
        ref = model(x)
    report = swap_activations(model, functools.partial(RepAct, granularity="channel"), example_input=x,
                              init="approximate")
    rec = report.swapped[0]
    assert (rec.channels, rec.channels_last) == (6, True) and rec.fit_error <= 1e-6
    assert model[1].branch_weight.shape == (6, 4)
    torch.testing.assert_close(model[1].branch_weight, torch.tensor([[0.0, 0.0, 0.0, 1.0]]).expand(6, 4))
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=1e-6, atol=1e-6)
