"""The compiled QuickGELU (models/_activations.c) against its torch formula, at every
kernel level, forward and backward, and the cases that fall back to torch."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import pytest
import torch

from polymodal.models import activations
from polymodal.models.layers import QuickGELU

needs_kernels = pytest.mark.skipif(not activations.available(), reason="compiled activation not built")
LEVELS = ["auto", "generic"]


def _level(name: str) -> AbstractContextManager[None]:
    return activations.portable() if name == "generic" else nullcontext()


def _reference(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(activations.SCALE * x)


def _inputs(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * 4
    special = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 30.0, -30.0, 100.0, -100.0, 1e4, -1e4])
    x[: min(n, len(special))] = special[: min(n, len(special))]
    return x


@pytest.fixture(params=LEVELS)
def level(request: pytest.FixtureRequest) -> Iterator[str]:
    with _level(request.param):
        yield request.param


@needs_kernels
@pytest.mark.parametrize("n", [1, 15, 16, 17, 100, 4099])  # whole vectors, masked tails, both
def test_forward_matches_the_formula(level: str, n: int) -> None:
    x = _inputs(n)
    out = activations.quick_gelu(x)
    torch.testing.assert_close(out, _reference(x), rtol=2e-6, atol=1e-7)


@needs_kernels
@pytest.mark.parametrize("n", [1, 17, 4099])
def test_backward_matches_autograd_of_the_formula(level: str, n: int) -> None:
    x = _inputs(n, seed=1).requires_grad_()
    grad = torch.randn(n, generator=torch.Generator().manual_seed(2))
    _reference(x).backward(grad)
    expected, x.grad = x.grad, None
    activations.quick_gelu(x).backward(grad)
    assert x.grad is not None
    torch.testing.assert_close(x.grad, expected, rtol=1e-5, atol=1e-6)


@needs_kernels
def test_non_finite_inputs_give_what_the_formula_gives(level: str) -> None:
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0] * 5)  # 20 values: a masked tail too
    torch.testing.assert_close(activations.quick_gelu(x), _reference(x), equal_nan=True)
    leaf = x.clone().requires_grad_()
    activations.quick_gelu(leaf).backward(torch.ones_like(x))
    assert leaf.grad is not None
    assert torch.isnan(leaf.grad[:12:4]).all() and torch.isnan(leaf.grad[1:12:4]).all()  # nan, inf
    assert torch.isfinite(leaf.grad[3::4]).all()


@needs_kernels
def test_kernels_autograd_keeps_only_the_input() -> None:
    x = torch.randn(8, 32, requires_grad=True)
    y = activations.quick_gelu(x)
    assert y.grad_fn is not None and type(y.grad_fn).__name__.startswith("_QuickGELU")
    assert [t.data_ptr() for t in y.grad_fn.saved_tensors] == [x.data_ptr()]  # no sigmoid output kept


def test_fallbacks_give_the_formula() -> None:
    x = torch.randn(6, 10)
    cases = {
        "non-contiguous": x.t(),
        "float64": x.double(),
        "bfloat16": x.bfloat16(),
        "empty": torch.empty(0, 4),
    }
    for name, value in cases.items():
        out = activations.quick_gelu(value)
        assert out.dtype == value.dtype and out.shape == value.shape, name
        torch.testing.assert_close(out, _reference(value), msg=name)
    with activations.disabled():
        assert not activations.available()
        torch.testing.assert_close(activations.quick_gelu(x), _reference(x))


def test_module_gradients_equal_the_formula_in_a_layer() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(12, 48), QuickGELU(), torch.nn.Linear(48, 5))
    x = torch.randn(7, 12)
    layer(x).square().sum().backward()
    fast = [p.grad.clone() for p in layer.parameters() if p.grad is not None]
    layer.zero_grad()
    with activations.disabled():
        layer(x).square().sum().backward()
    slow = [p.grad for p in layer.parameters() if p.grad is not None]
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@needs_kernels
def test_kernel_entry_points_reject_bad_buffers() -> None:
    module = activations._module()
    x = np.zeros(8, np.float32)
    with pytest.raises(TypeError, match="x must hold float32"):
        module.quick_gelu(np.zeros(8, np.float64), np.zeros(8, np.float32), 1.702)
    with pytest.raises(ValueError, match="out has 4 values, x has 8"):
        module.quick_gelu(x, np.zeros(4, np.float32), 1.702)
    with pytest.raises(ValueError, match="x has 7 values, grad has 8"):
        module.quick_gelu_backward(x, np.zeros(7, np.float32), np.zeros(8, np.float32), 1.702)
    read_only = np.zeros(8, np.float32)
    read_only.flags.writeable = False
    with pytest.raises((BufferError, ValueError)):
        module.quick_gelu(x, read_only, 1.702)
    with pytest.raises((BufferError, ValueError, TypeError)):
        module.quick_gelu(np.zeros((8, 2), np.float32)[:, 0], np.zeros(8, np.float32), 1.702)  # strided


@needs_kernels
def test_isa_reports_the_level_in_use() -> None:
    assert activations.isa() in ("avx512", "generic")
    with activations.portable():
        assert activations.isa() == "generic"
