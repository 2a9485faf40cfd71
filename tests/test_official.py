"""Loading checkpoints of the official RepAct classes (different branch orders) into repact modules."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import repact
from repact import RepAct
from repact.official import OFFICIAL_VARIANTS, convert_official_state_dict, read_official_checkpoint

ORDERS = {
    "RepAct_Origin": ("identity", "relu", "hardswish", "prelu"),
    "RepAct_BN": ("identity", "relu", "hardswish", "prelu"),
    "RepAct_Softmax": ("identity", "relu", "prelu", "hardswish"),
    "RepAct_Origin_Reconstruct": ("identity", "relu", "prelu", "hardswish"),
    "RepAct_Softmax_Reconstruct": ("identity", "relu", "prelu", "hardswish"),
    "RepAct_BN_Reconstruct": ("identity", "relu", "prelu", "hardswish"),
}


class OfficialLayout(nn.Module):
    """The official classes' parameter layout and branch-sum semantics (per the digest), for tests.

    Keys: ``ActorAtn`` (4 weights in the class's own order), ``actor_PReLU.weight`` and, for the
    BN variants, a single-feature ``bn`` over every element of the layer.
    """

    def __init__(self, variant):
        super().__init__()
        self.order = ORDERS[variant]
        self.softmax = "Softmax" in variant
        self.ActorAtn = nn.Parameter(torch.randn(4))
        self.actor_PReLU = nn.PReLU()
        with torch.no_grad():
            self.actor_PReLU.weight.uniform_(-1, 1)
        self.bn = nn.BatchNorm2d(1) if "BN" in variant else None
        if self.bn is not None:
            with torch.no_grad():
                self.bn.running_mean.fill_(0.7)
                self.bn.running_var.fill_(1.7)
                self.bn.weight.fill_(1.3)
                self.bn.bias.fill_(-0.4)

    def forward(self, x):
        w = torch.softmax(self.ActorAtn, 0) if self.softmax else self.ActorAtn
        fns = {"identity": lambda t: t, "relu": F.relu, "hardswish": F.hardswish, "prelu": self.actor_PReLU}
        y = sum(w[i] * fns[name](x) for i, name in enumerate(self.order))
        if self.bn is not None:
            y = self.bn(y.reshape(y.shape[0], 1, 1, -1)).reshape(y.shape)
        return y


@pytest.mark.parametrize("variant", [v for v in OFFICIAL_VARIANTS if v != "RepAct_BN_Reconstruct"])
def test_each_official_variant_loads_onto_the_same_function(variant):
    official = OfficialLayout(variant).eval()
    ours = RepAct(variant=OFFICIAL_VARIANTS[variant][0]).eval()
    repact.load_official_state_dict(ours, official.state_dict(), variant)
    x = torch.linspace(-6, 6, 601).reshape(1, 1, 601)
    torch.testing.assert_close(ours(x), official(x), rtol=1e-6, atol=1e-6)
    # and the deployed form too
    torch.testing.assert_close(repact.reparameterize(ours, inplace=False)(x), official(x), rtol=1e-5, atol=1e-5)


def test_loading_an_origin_checkpoint_reorders_hardswish_and_prelu():
    official = OfficialLayout("RepAct_Origin")
    with torch.no_grad():
        official.ActorAtn.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))  # (id, relu, hswish, prelu)
    ours = repact.load_official_state_dict(RepAct(), official.state_dict(), "repact_origin")
    torch.testing.assert_close(ours.branch_weight.detach(), torch.tensor([0.1, 0.2, 0.4, 0.3]))


def test_bn_reconstruct_fills_the_weights_it_never_saved():
    official = OfficialLayout("RepAct_BN_Reconstruct")
    sd = {k: v for k, v in official.state_dict().items() if k != "ActorAtn"}
    with pytest.warns(UserWarning, match="does not save its branch weights"):
        ours = repact.load_official_state_dict(RepAct(variant="bn"), sd, "RepAct_BN_Reconstruct")
    torch.testing.assert_close(ours.branch_weight.detach(), torch.full((4,), 1.25))
    torch.testing.assert_close(ours.bn.running_var, torch.tensor([1.7]))


class _OfficialNet(nn.Module):
    def __init__(self, act_factory):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), act_factory(), nn.Conv2d(4, 4, 3), act_factory())
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def test_whole_model_checkpoint_with_wrappers(tmp_path):
    official = _OfficialNet(lambda: OfficialLayout("RepAct_BN")).eval()
    ours = _OfficialNet(lambda: RepAct(variant="bn")).eval()
    wrapped = {"epoch": 3, "best_acc1": 0.5, "state_dict": {f"module.{k}": v for k, v in official.state_dict().items()}}
    path = tmp_path / "BestModel.pth"
    torch.save(wrapped, path)
    sd = read_official_checkpoint(path)
    repact.load_official_state_dict(ours, sd, "RepAct_BN")
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(ours(x), official(x), rtol=1e-5, atol=1e-5)


def test_mismatches_are_refused_with_a_reason():
    sd = OfficialLayout("RepAct_Softmax").state_dict()
    with pytest.raises(ValueError, match="variant 'origin' but RepAct_Softmax is variant 'softmax'"):
        repact.load_official_state_dict(RepAct(), sd, "RepAct_Softmax")
    with pytest.raises(ValueError, match="unknown official RepAct variant 'RepAct_V4'"):
        repact.load_official_state_dict(RepAct(variant="softmax"), sd, "RepAct_V4")
    with pytest.raises(ValueError, match="granularity='layer'"):
        repact.load_official_state_dict(RepAct(3, variant="softmax", granularity="channel"), sd, "RepAct_Softmax")
    with pytest.raises(ValueError, match="no official RepAct keys"):
        convert_official_state_dict({"weight": torch.ones(2)}, "RepAct_Origin")
    net_sd = _OfficialNet(lambda: OfficialLayout("RepAct_Origin")).state_dict()
    with pytest.raises(ValueError, match="features.1 is a ReLU"):
        repact.load_official_state_dict(_OfficialNet(nn.ReLU), net_sd, "RepAct_Origin")


def test_reading_a_checkpoint_never_unpickles_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"ActorAtn": torch.ones(4)}, "payload": Evil()}, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
            read_official_checkpoint(path)
