"""Train/eval flags handed back as they were: the helpers, and the functions that run a model in eval mode."""

import pytest
import torch
from torch import nn

from repact._modes import eval_mode, kept_modes
from repact.train.evaluate import evaluate_pair


def _mixed():
    """A model whose parts are in different modes (a frozen BatchNorm inside a training model)."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5))
    model.train()
    model[1].eval()
    return model


def _flags(model):
    return [m.training for m in model.modules()]


def test_eval_mode_sets_every_part_and_restores_each_own_flag_after_an_error():
    a, b = _mixed(), _mixed().eval()
    before_a, before_b = _flags(a), _flags(b)
    with pytest.raises(RuntimeError, match="inside"):
        with eval_mode(a, b):
            assert not any(_flags(a)) and not any(_flags(b))
            raise RuntimeError("inside")
    assert _flags(a) == before_a and _flags(b) == before_b
    assert before_a[0] and not before_a[2]  # the fixture really is mixed


def test_kept_modes_undoes_what_the_block_changed():
    model = _mixed()
    before = _flags(model)
    with kept_modes(model):
        model.train()
        model[0].eval()
    assert _flags(model) == before


def test_evaluate_pair_leaves_a_mixed_model_as_it_was():
    reference, candidate = _mixed(), _mixed()
    x = torch.randn(4, 3, 8, 8)
    reference(x), candidate(x)  # build the lazy layers
    candidate.load_state_dict(reference.state_dict())
    before = _flags(reference)
    out = evaluate_pair(reference, candidate, [(x, torch.tensor([0, 1, 2, 3]))])
    assert out["max_abs_logit_error"] == 0.0 and out["top1_flips"] == 0
    assert _flags(reference) == before and _flags(candidate) == before


# --- every function that runs a model in eval mode for a while --------------------------------------

def _lazy_mixed():
    """A training model with a frozen BatchNorm and an unbuilt channel-wise RepAct-III (its own
    BatchNorm inside), so that priming, evaluation and analysis all meet mixed flags."""
    from repact.activations import RepAct

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), RepAct(variant="bn", granularity="channel"),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    model.train()
    model[1].eval()
    return model


def _record_forward_flags(model):
    """Flags of every submodule at each forward call of ``model``."""
    seen = []
    model.register_forward_pre_hook(lambda mod, args: seen.append(_flags(mod)))
    return seen


def _batch():
    return torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])


def _evaluate(model, tmp_path):
    from repact.train.evaluate import evaluate
    evaluate(model, [_batch()])


def _eval_batches(model, tmp_path):
    from repact.tasks.base import eval_batches
    with eval_batches(model, [_batch()], torch.device("cpu"), None, False) as (batches, ctx):
        for x, _ in batches:
            with ctx:
                model(x)


def _confusion(model, tmp_path):
    pytest.importorskip("torchmetrics")
    from repact.analysis.confusion import confusion_data
    confusion_data(model, [_batch()], num_classes=5)


def _capture(model, tmp_path):
    from repact.analysis.features import capture_activation
    capture_activation(model, _batch()[0], "2")


def _cam_layer(model, tmp_path):
    from repact.analysis.cam import default_target_layer
    default_target_layer(model, _batch()[0])


def _onnx_parity(model, tmp_path):
    pytest.importorskip("onnxruntime")
    from repact.deploy.onnx_export import export_onnx, onnx_parity
    x = _batch()[0]
    path = export_onnx(model, x, tmp_path / "m.onnx")
    assert onnx_parity(model, path, x) < 1e-4


def _setup_prime(model, tmp_path):
    from repact.train.setup import prime_lazy
    prime_lazy(model, [3, 8, 8])


def _checkpoint_prime(model, tmp_path):
    from repact.checkpoint import _prime_lazy
    _prime_lazy(model, {"input_shape": [3, 8, 8]})


def _deploy_prime(model, tmp_path):
    from repact.deploy.pipeline import _prime
    _prime(model, _batch()[0])


PRIMES = {_setup_prime, _checkpoint_prime, _deploy_prime}


@pytest.mark.parametrize("run", [_evaluate, _eval_batches, _confusion, _capture, _cam_layer, _onnx_parity,
                                 _setup_prime, _checkpoint_prime, _deploy_prime], ids=lambda f: f.__name__[1:])
def test_runs_in_eval_mode_and_hands_back_each_flag(run, tmp_path):
    model = _lazy_mixed()
    if run not in PRIMES:
        with eval_mode(model):
            model(_batch()[0])  # build the lazy activation first
    assert model[2]._built is (run not in PRIMES)
    parts = list(model.modules())
    before = [m.training for m in parts]
    seen = _record_forward_flags(model)
    run(model, tmp_path)
    assert seen, "the function never ran the model"
    assert not any(any(flags) for flags in seen), "a forward ran with a module in training mode"
    assert [m.training for m in parts] == before
    assert model[2]._built and model[2].bn.training  # built inside: trains with its activation
    assert before[0] and not before[2]  # the fixture really is mixed


def test_fit_activation_fits_in_eval_mode_and_hands_back_the_flags():
    from repact.activations import RepAct
    from repact.fit import fit_activation

    act = RepAct(variant="bn")
    act.train()
    seen = _record_forward_flags(act)
    err = fit_activation(act, nn.Hardswish())
    assert seen and not any(any(flags) for flags in seen)
    assert all(_flags(act))
    assert err < 1e-4  # HardSwish is one of the branches: the fit is exact


def test_a_submodule_built_inside_the_block_takes_its_parents_flag():
    """RepAct-III builds its BatchNorm on its first (here eval-mode) forward; once the block ends
    that BatchNorm must train with its activation, or it would never update its statistics."""
    from repact.activations import RepAct

    model = nn.Sequential(nn.Conv2d(3, 4, 3), RepAct(variant="bn", granularity="channel"))
    model.train()
    with eval_mode(model):
        model(torch.randn(2, 3, 8, 8))
    assert isinstance(model[1].bn, nn.BatchNorm1d)
    assert all(_flags(model))
    model.eval()
    with kept_modes(model):
        model.add_module("extra", nn.Sequential(nn.BatchNorm2d(4)))
        model.extra.train()
    assert not any(_flags(model))
