"""Linear layers whose forward pass on the CPU runs on oneDNN's prepacked weights.

    layer = Linear(512, 2048)        # an nn.Linear: the same parameters and state dict
    y = layer(x)                     # oneDNN, on a copy of the weight packed once

torch multiplies float32 matrices with MKL on x86 CPUs. Its oneDNN kernels compute the same
product faster once the weight is reordered into their blocked layout ("prepacked", what
torch.compile's freezing does): on the reference Zen 4, 3072 x 768 weights ran at 214-221
GFLOP/s against MKL's 148-184 for 50-800 rows, and a stack of text-tower layers at 1-20
rows (one caption) 2.4x faster, as MKL's small-row products reach a third of the memory
bandwidth. The packed copy is made on first use and again whenever the weight may have changed: its
storage or version counter changed (load_state_dict, in-place edits), or any torch
optimiser stepped (torch's fused AdamW updates weights without touching their version
counters; a global step hook counts the steps). Code that writes weights through `.data`
must call `invalidate()`. Packing takes 0.4-1.4 ms for a ViT-B/32 layer's weights, about 1%
of a CPU training step, and doubles the memory of the weights it covers.

The backward pass is F.linear's (MKL products of the gradient with the weight and the
input), so a forward pass computes the same bits with and without autograd: gradient
caching's first pass, without gradients, must equal its second. F.linear serves other
devices and dtypes, bf16 autocast (which has its own oneDNN path), torch.compile and
tracing, a torch without oneDNN, and `POLYMODAL_ONEDNN=0` (or `disabled()`, for parity
tests and reference timings). The results equal F.linear's to float32 rounding (the order
of the sums differs; the tests hold it to that).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import forward_ad
from torch.autograd.function import once_differentiable
from torch.optim.optimizer import register_optimizer_step_post_hook

from polymodal.compiled import CompiledExtension

_extension = CompiledExtension(torch.ops.mkldnn if torch.backends.mkldnn.is_available() else None,
                               "torch's oneDNN kernels", switch="POLYMODAL_ONEDNN")
available = _extension.available  # oneDNN present and not switched off: packed products are used
disabled = _extension.disabled  # F.linear everywhere for the duration
_generation = [0]  # bumped by every optimiser step and by invalidate(): packed copies older than it are stale


def invalidate() -> None:
    """Pack every weight again before its next use: after writes no version counter sees
    (through `.data`, or into the vector `nn.utils.vector_to_parameters` took the weights
    from), collectives (`dist.broadcast`), or functional optimisers that bypass
    `Optimizer.step`."""
    _generation[0] += 1


register_optimizer_step_post_hook(lambda optimizer, args, kwargs: invalidate())


class Linear(nn.Linear):
    """nn.Linear, with inference on a packed copy of the weight where that applies."""

    # packed copies by the output rows they cover: (the weight's identity when packed, the copy)
    _packed: dict[tuple[int, int], tuple[Any, Tensor]] | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self._fits(x):
            return _packed_product(x, self.weight, self.bias, self._packed_rows(0, self.out_features))
        return F.linear(x, self.weight, self.bias)

    def rows(self, x: Tensor, start: int, stop: int) -> Tensor:
        """Outputs start..stop only: F.linear(x, weight[start:stop], bias[start:stop]) (the
        query, or the keys and values, of a fused attention projection)."""
        weight = self.weight[start:stop]
        bias = None if self.bias is None else self.bias[start:stop]
        if self._fits(x):
            return _packed_product(x, weight, bias, self._packed_rows(start, stop))
        return F.linear(x, weight, bias)

    def _fits(self, x: Tensor) -> bool:
        weight = self.weight
        return (_extension.enabled and x.device.type == "cpu" and x.dtype == torch.float32
                and weight.dtype == torch.float32 and weight.device.type == "cpu"
                and not weight.is_inference()  # no version counter to key the packed copy on
                and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()
                and not torch.jit.is_tracing() and not torch.jit.is_scripting()
                and forward_ad._current_level < 0  # forward-mode AD: F.linear has the tangents
                and torch._C._functorch.peek_interpreter_stack() is None)  # torch.func transforms

    def _packed_rows(self, start: int, stop: int) -> Tensor:
        weight = self.weight
        # the storage is part of the key and kept alive by it: a freed weight's address, reused
        # by a new tensor of version 0 (torch.func.functional_call), must not match
        key = (weight.untyped_storage(), weight.data_ptr(), weight._version, tuple(weight.shape), _generation[0])
        packed = self._packed if self._packed is not None else {}
        cached = packed.get((start, stop))
        if cached is None or not _same(cached[0], key):
            with torch.no_grad():
                cached = (key, torch.ops.mkldnn._reorder_linear_weight(weight.detach()[start:stop].contiguous(), None))
            # a fresh dict in one assignment: a concurrent caller sees the old one or the new
            self._packed = {**{k: v for k, v in packed.items() if _same(v[0], key)}, (start, stop): cached}
        return cached[1]

    def _apply(self, fn: Any, recurse: bool = True) -> Linear:  # .to(), .float(), ...: pack again
        self._packed = None
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict[str, Any]:  # copies and pickles leave the packed copy behind
        state = self.__dict__.copy()
        state.pop("_packed", None)
        return state




def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    # key[0], the storage, is only held (it keeps the address from being reused), not compared:
    # each untyped_storage() call returns a new wrapper
    return bool(a[1:] == b[1:])


def _packed_product(x: Tensor, weight: Tensor, bias: Tensor | None, packed: Tensor) -> Tensor:
    needs_grad = x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    if torch.is_grad_enabled() and needs_grad:
        return _PackedLinear.apply(x, weight, bias, packed)
    # without autograd, the op itself: an autograd Function costs microseconds a call, which
    # small layers at batch 1 notice
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class _PackedLinear(torch.autograd.Function):
    """y = x W^T + b through the packed copy of W; the gradients as F.linear computes them."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, packed: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        rows = grad.reshape(-1, grad.shape[-1])
        grad_x = (grad @ weight) if ctx.needs_input_grad[0] else None
        grad_w = rows.t() @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None
        grad_b = rows.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None


def adopt(model: nn.Module) -> nn.Module:
    """Every plain nn.Linear in `model` (a pretrained tower's, say) made a `Linear`, in place:
    the same parameters, a different forward."""
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = Linear
    return model


def release(model: nn.Module) -> nn.Module:
    """Every `Linear` back to a plain nn.Linear, in place, and its packed copy freed (torch's
    int8 quantisation takes plain nn.Linear layers only)."""
    for module in model.modules():
        if type(module) is Linear:
            module._packed = None
            module.__class__ = nn.Linear  # type: ignore[assignment]
    return model
