"""QuickGELU through the compiled one-pass kernels (`_activations.c`) where they apply.

    y = quick_gelu(x)          # x * sigmoid(1.702 x), differentiable

On the CPU, for contiguous float32 tensors, forward and backward are one pass each over
memory and autograd keeps only x; elsewhere (a GPU, bf16 under autocast, torch.compile or
torch.jit tracing, the extension not built, `POLYMODAL_NATIVE=0`) the same formula runs as
torch operations. The kernels agree with the torch formula to float32 rounding (the tests
hold them to it). Their backward is not itself differentiable (no double backward or
forward-mode AD through it); `activations.disabled()` gives the torch formula for those.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from polymodal.compiled import CompiledExtension

try:
    from polymodal.models import _activations  # type: ignore[attr-defined]
except ImportError:  # built without a C compiler: torch operations serve
    _activations = None

SCALE = 1.702  # OpenAI CLIP's constant: sigmoid(1.702 x) approximates the normal CDF

_extension = CompiledExtension(_activations, "polymodal's compiled activations")
available = _extension.available  # built and not switched off
disabled = _extension.disabled  # the torch formula for the duration (parity tests, reference timings)
_module = _extension.module


@contextmanager
def portable() -> Iterator[None]:
    """The portable C kernels instead of the AVX-512 ones for the duration (tests)."""
    module = _module()
    module.set_generic(True)
    try:
        yield
    finally:
        module.set_generic(False)


isa = _extension.isa  # 'avx512' or 'generic' (the kernels in use), or 'none' without the extension


def quick_gelu(x: Tensor) -> Tensor:
    """x * sigmoid(1.702 x)."""
    if _fits(x):
        return _QuickGELU.apply(x)
    if torch.is_grad_enabled() and x.requires_grad:
        return x * torch.sigmoid(SCALE * x)
    # Without autograd, one buffer instead of three: the same values (the products
    # commute exactly), and memory-bound elementwise work halves.
    out = x * SCALE
    return out.sigmoid_().mul_(x)


def _fits(x: Tensor) -> bool:
    return (_extension.enabled and x.device.type == "cpu" and x.dtype == torch.float32 and x.is_contiguous()
            and x.numel() > 0 and not torch.compiler.is_compiling() and not torch.jit.is_tracing())


class _QuickGELU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        out = torch.empty_like(x)
        _module().quick_gelu(_array(x), _array(out), SCALE)
        ctx.save_for_backward(x)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        grad = grad.to(torch.float32).contiguous()
        out = torch.empty_like(x)
        _module().quick_gelu_backward(_array(grad), _array(x), _array(out), SCALE)
        return out


def _array(t: Tensor) -> Any:
    return t.detach().numpy()  # a view: no copy

