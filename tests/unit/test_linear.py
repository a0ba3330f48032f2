"""Linear layers on oneDNN's packed weights (models/linear.py) against F.linear: values,
gradients, when the packed copy is renewed, and where F.linear serves instead."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from polymodal.models import linear
from polymodal.models.linear import Linear, adopt, release

needs_onednn = pytest.mark.skipif(not linear.available(), reason="torch without oneDNN, or POLYMODAL_ONEDNN=0")


def _layer(bias: bool = True) -> Linear:
    torch.manual_seed(0)
    return Linear(48, 40, bias=bias)


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 48), (9, 48), (3, 7, 48), (0, 48)])
def test_forward_equals_f_linear_through_the_packed_copy(shape: tuple[int, ...], bias: bool) -> None:
    layer = _layer(bias)
    x = torch.randn(*shape)
    with torch.inference_mode():
        out = layer(x)
    assert layer._packed is not None  # the oneDNN path ran
    _close(out, F.linear(x, layer.weight, layer.bias))
    strided = torch.randn(7, 3, 48).transpose(0, 1)  # not contiguous
    with torch.no_grad():
        _close(layer(strided), F.linear(strided, layer.weight, layer.bias))


@needs_onednn
def test_gradients_are_f_linears() -> None:
    layer = _layer()
    x = torch.randn(4, 5, 48, requires_grad=True)
    grad = torch.randn(4, 5, 40)
    out = layer(x)
    out.backward(grad)
    assert layer._packed is not None
    got = (x.grad, layer.weight.grad, layer.bias.grad)
    x.grad = layer.weight.grad = layer.bias.grad = None
    F.linear(x, layer.weight, layer.bias).backward(grad)
    for a, b in zip(got, (x.grad, layer.weight.grad, layer.bias.grad), strict=True):
        assert a is not None and b is not None
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same products as F.linear's backward
    frozen = _layer()
    frozen.requires_grad_(False)
    y = torch.randn(3, 48, requires_grad=True)
    frozen(y).sum().backward()  # only the input's gradient
    assert y.grad is not None and frozen.weight.grad is None


@needs_onednn
def test_a_pass_without_gradients_equals_one_with_them() -> None:
    layer = _layer()
    x = torch.randn(6, 48)
    with torch.no_grad():
        without = layer(x)
    assert torch.equal(without, layer(x.requires_grad_()).detach())  # gradient caching relies on it


@needs_onednn
def test_rows_are_a_slice_of_the_outputs() -> None:
    layer = _layer()
    x = torch.randn(2, 5, 48)
    with torch.no_grad():
        _close(layer.rows(x, 8, 40), F.linear(x, layer.weight[8:40], layer.bias[8:40]))
        _close(layer.rows(x, 0, 8), F.linear(x, layer.weight[:8], layer.bias[:8]))
        assert layer._packed is not None and set(layer._packed) == {(8, 40), (0, 8)}
    x.requires_grad_()
    layer.rows(x, 8, 40).sum().backward()
    assert layer.weight.grad is not None
    assert layer.weight.grad[:8].abs().max() == 0 and layer.weight.grad[8:].abs().max() > 0


@needs_onednn
@pytest.mark.parametrize("change", ["in_place", "fused_adamw", "adamw", "sgd", "load_state_dict", "to_double_and_back",
                                    "data_then_invalidate"])
def test_the_packed_copy_follows_the_weight(change: str) -> None:
    layer = _layer()
    x = torch.randn(5, 48)
    with torch.no_grad():
        before = layer(x)
    if change == "in_place":
        with torch.no_grad():
            layer.weight.mul_(2)
    elif change in ("fused_adamw", "adamw", "sgd"):  # fused AdamW leaves the version counter as it was
        optimiser = (torch.optim.SGD(layer.parameters(), lr=0.5) if change == "sgd" else
                     torch.optim.AdamW(layer.parameters(), lr=0.5, fused=change == "fused_adamw"))
        layer(x).sum().backward()
        optimiser.step()
    elif change == "load_state_dict":
        layer.load_state_dict({k: v * 3 for k, v in layer.state_dict().items()})
    elif change == "to_double_and_back":
        layer.double()
        with torch.no_grad():
            layer.weight.add_(1)
        layer.float()
    else:
        layer.weight.data.add_(1)  # invisible to the version counter
        linear.invalidate()
    with torch.no_grad():
        after = layer(x)
    assert not torch.allclose(after, before)
    _close(after, F.linear(x, layer.weight, layer.bias))


def test_f_linear_serves_where_the_packed_product_does_not_apply() -> None:
    layer = _layer()
    x = torch.randn(3, 48)
    with torch.no_grad():
        assert torch.equal(layer.double()(x.double()), F.linear(x.double(), layer.weight, layer.bias))
        layer.float()
        with linear.disabled():
            assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert layer(x).dtype == torch.bfloat16
    assert layer._packed is None  # none of these packed anything


@needs_onednn
def test_copies_and_pickles_leave_the_packed_copy_behind() -> None:
    layer = _layer()
    x = torch.randn(2, 48)
    with torch.no_grad():
        expected = layer(x)
    for other in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert other._packed is None
        with torch.no_grad():
            _close(other(x), expected)


def test_adopt_and_release_keep_parameters_and_state_dict() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    weight = model[0].weight
    adopt(model)
    assert type(model[0]) is Linear and type(model[2]) is Linear and model[0].weight is weight
    x = torch.randn(3, 4)
    with torch.no_grad():
        _close(model(x), F.linear(torch.relu(F.linear(x, model[0].weight, model[0].bias)), model[2].weight,
                                   model[2].bias))
    release(model)
    assert type(model[0]) is nn.Linear and model[0].__dict__.get("_packed") is None
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@needs_onednn
def test_weights_substituted_per_call_are_never_confused() -> None:
    """torch.func.functional_call passes a new weight each call; a freed weight's address
    may come back for the next one, with the same version (0)."""
    layer = _layer()
    x = torch.randn(4, 48)
    for scale in (1.0, 2.0, 3.0):
        params = {"weight": layer.weight.detach() * scale, "bias": layer.bias.detach()}
        with torch.no_grad():
            out = torch.func.functional_call(layer, params, (x,))
        _close(out, F.linear(x, params["weight"], params["bias"]))


@needs_onednn
def test_a_trainable_bias_alone_gets_its_gradient() -> None:
    layer = _layer()
    layer.weight.requires_grad_(False)
    layer(torch.randn(3, 48)).sum().backward()
    assert layer.bias.grad is not None and torch.allclose(layer.bias.grad, torch.full((40,), 3.0))


def test_transforms_and_inference_weights_take_f_linear() -> None:
    x, tangent = torch.randn(2, 48), torch.randn(2, 48)
    layer = _layer()
    with torch.no_grad():
        _, out = torch.func.jvp(layer, (x,), (tangent,))
    _close(out, F.linear(tangent, layer.weight))  # the tangent of x W^T + b
    with torch.inference_mode():
        frozen = _layer()  # weights made here are inference tensors, without version counters
        _close(frozen(x), F.linear(x, frozen.weight, frozen.bias))
