"""Transformer building blocks shared by every tower and by the fusion, captioning,
audio and layout models: attention, MLP, pre-norm blocks, positional encodings.

Shapes use B = batch, N = query tokens, M = key/context tokens, D = width,
H = heads, Dh = D // H.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from polymodal.config import TransformerConfig
from polymodal.models.activations import quick_gelu
from polymodal.models.linear import Linear

# --------------------------------------------------------------------------- activations


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation OpenAI CLIP was trained with; using
    exact GELU on those weights shifts the embeddings, so checkpoints record which."""

    def forward(self, x: Tensor) -> Tensor:
        return quick_gelu(x)  # one pass forward and backward on CPUs (activations.py)


def make_activation(name: str) -> nn.Module:
    activations: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "quick_gelu": QuickGELU}
    if name not in activations:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(activations)}")
    return activations[name]()


class Mlp(nn.Module):
    """Two-layer feed-forward network of a transformer block."""

    def __init__(self, dim: int, hidden_dim: int, act: str = "gelu") -> None:
        super().__init__()
        self.fc1 = Linear(dim, hidden_dim)
        self.act = make_activation(act)
        self.fc2 = Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """Per-channel residual scaling initialised small (CaiT, Touvron et al. 2021), which
    lets deep stacks start close to the identity."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


# --------------------------------------------------------------------------- attention


class MultiheadAttention(nn.Module):
    """Multi-head attention on `F.scaled_dot_product_attention`.

    Self-attention when `context` is None, cross-attention to `context` (B, M, D)
    otherwise. `key_mask` (B, M) is True for keys that may be attended to (padding is
    False); `causal` masks future positions. Inside `capture_attention(...)` the module
    takes an explicit softmax path and records the attention weights (B, H, N, M).
    """

    def __init__(self, dim: int, heads: int, bias: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        # One fused projection: a single matmul for self-attention; cross-attention
        # slices it into the query part and the key/value part.
        self.in_proj = Linear(dim, 3 * dim, bias=bias)
        self.out_proj = Linear(dim, dim, bias=bias)
        self.recorded: list[Tensor] | None = None  # set by capture_attention()

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        key_mask: Tensor | None = None,
        causal: bool = False,
        rope: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        q, k, v = self._project(x, context)  # (B, H, N|M, Dh)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        mask = attention_mask(key_mask, causal, q.shape[-2], k.shape[-2], x.device)
        return self.out_proj(self.attend(q, k, v, mask, causal and mask is None))

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
        """Attention of projected (B, H, N|M, Dh) queries, keys and values: (B, N, D), before
        the output projection; the weights recorded inside `capture_attention(...)`."""
        if self.recorded is not None:
            out, weights = attention_with_weights(q, k, v, mask, causal)
            self.recorded.append(weights.detach())
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return out.transpose(1, 2).flatten(2)

    def _project(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        if context is None:
            q, k, v = self.in_proj(x).chunk(3, dim=-1)
        elif isinstance(self.in_proj, Linear):
            dim = x.shape[-1]
            q = self.in_proj.rows(x, 0, dim)
            k, v = self.in_proj.rows(context, dim, 3 * dim).chunk(2, dim=-1)
        elif isinstance(self.in_proj.weight, Tensor):  # a plain nn.Linear (converted models)
            dim = x.shape[-1]
            q = F.linear(x, self.in_proj.weight[:dim], _slice(self.in_proj.bias, 0, dim))
            k, v = F.linear(context, self.in_proj.weight[dim:],
                            _slice(self.in_proj.bias, dim, 3 * dim)).chunk(2, dim=-1)
        else:  # a quantised projection (--precision int8) cannot be sliced: both in full
            dim = x.shape[-1]
            q = self.in_proj(x)[..., :dim]
            k, v = self.in_proj(context)[..., dim:].chunk(2, dim=-1)
        return self._split(q), self._split(k), self._split(v)

    def _split(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, self.head_dim).transpose(1, 2)


def _slice(bias: Tensor | None, start: int, stop: int) -> Tensor | None:
    return None if bias is None else bias[start:stop]


def attention_mask(
    key_mask: Tensor | None, causal: bool, n: int, m: int, device: torch.device
) -> Tensor | None:
    """Boolean mask (B, 1, N, M), True = may attend; None when SDPA needs none.

    Causal without padding is left to SDPA's `is_causal` fast path (returns None).
    A query row with nothing to attend to (all keys padding) would give NaN from the
    softmax, so such rows are opened fully: their output is ignored downstream anyway.
    """
    if key_mask is None:
        return None
    mask = key_mask.bool()[:, None, None, :]  # (B, 1, 1, M)
    if causal:
        mask = mask & torch.ones(n, m, dtype=torch.bool, device=device).tril()
    return mask | ~mask.any(dim=-1, keepdim=True)


def attention_with_weights(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool
) -> tuple[Tensor, Tensor]:
    """Reference attention that also returns its weights; equal to SDPA's output."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, N, M)
    if causal:
        n, m = scores.shape[-2:]
        mask = torch.ones(n, m, dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    return weights @ v, weights


@contextmanager
def capture_attention(model: nn.Module) -> Iterator[dict[str, list[Tensor]]]:
    """Record the attention weights of every attention module in `model`.

    Yields a dict: module name -> list of (B, H, N, M) weights, one per call. Used for
    explanations (heatmaps of words over image patches); slower than the SDPA path.
    The switch lives on the modules: don't capture on a model shared between threads.
    """
    modules = [(n, m) for n, m in model.named_modules() if isinstance(m, MultiheadAttention)]
    previous = [m.recorded for _, m in modules]  # an enclosing capture resumes afterwards
    recorded: dict[str, list[Tensor]] = {}
    for name, module in modules:
        module.recorded = recorded.setdefault(name, [])
    try:
        yield recorded
    finally:
        for (_, module), before in zip(modules, previous, strict=True):
            module.recorded = before


# --------------------------------------------------------------------------- packing


@dataclass(frozen=True)
class Packing:
    """Where the real tokens of a right-padded (B, L) batch sit: `positions` (T,) are their
    flat indices b * L + l, in order. Token-wise work (projections, MLPs, norms) on the T
    packed tokens skips the padding; attention unpacks them again.

        packing = Packing.from_mask(mask)      # mask (B, L), True for real tokens
        tokens = packing.pack(x)               # (B, L, W) -> (T, W)
        padded = packing.unpack(tokens)        # (T, W) -> (B, L, W), zeros at padding
    """

    batch: int
    length: int
    positions: Tensor

    @staticmethod
    def from_mask(mask: Tensor) -> Packing:
        batch, length = mask.shape
        return Packing(batch, length, mask.reshape(-1).nonzero().squeeze(1))

    def pack(self, x: Tensor) -> Tensor:
        return x.reshape(self.batch * self.length, *x.shape[2:]).index_select(0, self.positions)

    def unpack(self, x: Tensor) -> Tensor:
        padded = x.new_zeros(self.batch * self.length, *x.shape[1:])
        return padded.index_copy(0, self.positions, x).view(self.batch, self.length, *x.shape[1:])

    def packed_index(self, index: Tensor) -> Tensor:
        """(B,) positions within each sequence -> their rows among the packed tokens (each
        must be a real token)."""
        rows = torch.full((self.batch * self.length,), -1, dtype=torch.long, device=self.positions.device)
        rows[self.positions] = torch.arange(len(self.positions), device=self.positions.device)
        flat = torch.arange(self.batch, device=index.device) * self.length + index
        found = rows[flat]
        if bool((found < 0).any()):  # -1 would read another sequence's last token
            raise ValueError("packed_index: a position is padding, not a real token")
        return found


def _keys_at(key_mask: Tensor | None, causal: bool, index: Tensor, length: int) -> Tensor | None:
    """(B, L) the keys the query at position index[b] may read: all but padding, and under
    a causal mask only positions 0..index[b]."""
    keys = key_mask.bool() if key_mask is not None else None
    if causal:
        before = torch.arange(length, device=index.device)[None, :] <= index[:, None]
        keys = before if keys is None else keys & before
    return keys


# --------------------------------------------------------------------------- blocks


class TransformerBlock(nn.Module):
    """Pre-norm residual block: self-attention, optional cross-attention, MLP.

    With `cross_attention=True` it is an ALBEF/BLIP fusion layer or a captioning
    decoder layer: queries from `x`, keys and values from `context`.
    """

    def __init__(self, cfg: TransformerConfig, cross_attention: bool = False) -> None:
        super().__init__()
        dim = cfg.width
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.attn = MultiheadAttention(dim, cfg.heads)
        self.ls1 = _layer_scale(dim, cfg.layer_scale_init)
        self.cross_attn: MultiheadAttention | None = None
        if cross_attention:
            self.norm_cross = nn.LayerNorm(dim, eps=cfg.norm_eps)
            self.cross_attn = MultiheadAttention(dim, cfg.heads)
            self.ls_cross = _layer_scale(dim, cfg.layer_scale_init)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.mlp = Mlp(dim, cfg.mlp_dim, cfg.act)
        self.ls2 = _layer_scale(dim, cfg.layer_scale_init)

    def forward(
        self,
        x: Tensor,
        *,
        key_mask: Tensor | None = None,
        causal: bool = False,
        rope: tuple[Tensor, Tensor] | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
    ) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), key_mask=key_mask, causal=causal, rope=rope))
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this block has cross-attention: pass context=")
            x = x + self.ls_cross(self.cross_attn(self.norm_cross(x), context, key_mask=context_mask))
        return x + self.ls2(self.mlp(self.norm2(x)))

    def forward_at(self, x: Tensor, index: Tensor, *, key_mask: Tensor | None = None,
                   causal: bool = False) -> Tensor:
        """`forward(x)` at one position per sequence, (B, W): `index` (B,) picks it.

        Only that token's query, attention output and MLP are computed; keys and values
        still come from every token. A pooled embedding needs nothing else from a
        tower's last block, and this skips most of its work (for ViT-B/32, 49 of 50
        tokens). No rotary positions or cross-attention: callers check
        `Transformer.supports_forward_at()` and positions themselves.
        """
        rows = torch.arange(x.shape[0], device=x.device)
        h = self.norm1(x)
        keys = _keys_at(key_mask, causal, index, x.shape[1])
        token = x[rows, index][:, None]  # (B, 1, W)
        token = token + self.ls1(self.attn(h[rows, index][:, None], h, key_mask=keys))
        token = token + self.ls2(self.mlp(self.norm2(token)))
        return token[:, 0]

    def forward_packed(self, x: Tensor, packing: Packing, *, key_mask: Tensor | None = None,
                       causal: bool = False, at: Tensor | None = None) -> Tensor:
        """`forward` on packed tokens: x (T, W) holds the real tokens of a right-padded
        batch (`Packing`). Norms, projections and the MLP run on those T tokens only;
        attention runs on the batch padded again. With `at` (B,), only those positions'
        outputs, (B, W), as `forward_at` (every query's projection is still computed: a
        quantised projection cannot be sliced, and it is a twelfth of the block)."""
        attn = self.attn
        qkv = packing.unpack(attn.in_proj(self.norm1(x)))  # (B, L, 3W)
        q, k, v = (attn._split(t) for t in qkv.chunk(3, dim=-1))  # (B, H, L, Dh)
        length = packing.length
        if at is None:
            mask = attention_mask(key_mask, causal, length, length, x.device)
            out = packing.pack(attn.attend(q, k, v, mask, causal and mask is None))  # (T, W)
            residual = x
        else:
            rows = torch.arange(packing.batch, device=x.device)
            mask = attention_mask(_keys_at(key_mask, causal, at, length), False, 1, length, x.device)
            out = attn.attend(q[rows, :, at][:, :, None], k, v, mask, False)[:, 0]  # (B, W)
            residual = x[packing.packed_index(at)]
        x = residual + self.ls1(attn.out_proj(out))
        return x + self.ls2(self.mlp(self.norm2(x)))


def _layer_scale(dim: int, init: float | None) -> nn.Module:
    return nn.Identity() if init is None else LayerScale(dim, init)


class Transformer(nn.Module):
    """A stack of `TransformerBlock`s with optional gradient checkpointing."""

    def __init__(self, cfg: TransformerConfig, cross_attention: bool = False) -> None:
        super().__init__()
        self.width = cfg.width
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg, cross_attention) for _ in range(cfg.layers)
        )
        self.grad_checkpointing = False

    def forward(
        self,
        x: Tensor,
        *,
        key_mask: Tensor | None = None,
        causal: bool = False,
        rope: tuple[Tensor, Tensor] | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
    ) -> Tensor:
        kwargs: dict[str, Any] = dict(key_mask=key_mask, causal=causal, rope=rope,
                                      context=context, context_mask=context_mask)
        for block in self.blocks:
            x = self._run(block, x, kwargs)
        return x

    def forward_at(self, x: Tensor, index: Tensor, *, key_mask: Tensor | None = None, causal: bool = False,
                   packing: Packing | None = None) -> Tensor:
        """`forward(x)[arange(B), index]`, (B, W), with the last block computed for those
        tokens only (`TransformerBlock.forward_at`): the same values, less work. With
        `packing`, x (T, W) holds the real tokens of a right-padded batch and no block
        works on padding (`TransformerBlock.forward_packed`; every `index` must be a real
        token). Only where `supports_forward_at()`; hooks on the blocks do not see the call."""
        if not self.supports_forward_at():
            raise ValueError("forward_at needs self-attention blocks with attention not being captured")
        kwargs: dict[str, Any] = dict(key_mask=key_mask, causal=causal)
        blocks = [block for block in self.blocks if isinstance(block, TransformerBlock)]
        for block in blocks[:-1]:
            if packing is None:
                x = self._run(block, x, kwargs)
            else:
                x = self._run(block.forward_packed, x, dict(kwargs, packing=packing))
        if packing is None:
            return blocks[-1].forward_at(x, index, **kwargs)
        return blocks[-1].forward_packed(x, packing, at=index, **kwargs)

    def supports_forward_at(self) -> bool:
        """Whether `forward_at` applies: a stack of self-attention blocks whose attention
        is not being recorded (`capture_attention` wants every query's weights)."""
        return len(self.blocks) > 0 and all(
            isinstance(b, TransformerBlock) and b.cross_attn is None and b.attn.recorded is None
            for b in self.blocks)

    def _run(self, block: Any, x: Tensor, kwargs: dict[str, Any]) -> Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            # Trades a second forward pass for not storing activations.
            return checkpoint(block, x, use_reentrant=False, **kwargs)
        return block(x, **kwargs)

    def init_weights(self) -> None:
        """CLIP's initialisation (Radford et al. 2021; open_clip `init_parameters`):
        residual output projections scaled down by sqrt(2 * layers) (GPT-2) so the
        residual stream's variance does not grow with depth."""
        attn_std = self.width**-0.5
        proj_std = attn_std * (2 * len(self.blocks)) ** -0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.blocks:
            assert isinstance(block, TransformerBlock)
            for attn in (block.attn, block.cross_attn):
                if attn is not None:
                    nn.init.normal_(attn.in_proj.weight, std=attn_std)
                    nn.init.normal_(attn.out_proj.weight, std=proj_std)
                    _zero_bias(attn.in_proj, attn.out_proj)
            nn.init.normal_(block.mlp.fc1.weight, std=fc_std)
            nn.init.normal_(block.mlp.fc2.weight, std=proj_std)
            _zero_bias(block.mlp.fc1, block.mlp.fc2)


def _zero_bias(*layers: nn.Linear) -> None:
    for layer in layers:
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


# --------------------------------------------------------------------------- positions


def sinusoidal_table(length: int, dim: int, base: float = 10000.0) -> Tensor:
    """(length, dim) sin/cos table of Vaswani et al. (2017): even dims sin, odd cos."""
    position = torch.arange(length, dtype=torch.float64)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(base) / dim))
    table = torch.zeros(length, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)[:, : dim // 2]
    return table.float()


def sincos_2d_table(grid: int, dim: int) -> Tensor:
    """(grid*grid, dim) fixed 2-D table (MAE): half the channels encode the row, half the
    column; rows of the result follow the row-major order of flattened patches."""
    half = dim // 2
    rows = sinusoidal_table(grid, half)  # (G, D/2)
    cols = sinusoidal_table(grid, half)
    return torch.cat([rows[:, None].expand(grid, grid, half),
                      cols[None, :].expand(grid, grid, half)], dim=-1).reshape(grid * grid, dim)


class LearnedPositionalEmbedding(nn.Module):
    """One learned vector per position; `forward(n)` returns the first n (n, D)."""

    def __init__(self, num_positions: int, dim: int, std: float = 0.01) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_positions, dim) * std)

    def forward(self, n: int) -> Tensor:
        if n > self.weight.shape[0]:
            raise ValueError(f"sequence of {n} tokens exceeds {self.weight.shape[0]} positions")
        return self.weight[:n]


class SinusoidalPositionalEmbedding(nn.Module):
    """Fixed sin/cos positions (not saved in checkpoints: they are recomputed)."""

    def __init__(self, num_positions: int, dim: int) -> None:
        super().__init__()
        self.table: Tensor
        self.register_buffer("table", sinusoidal_table(num_positions, dim), persistent=False)

    def forward(self, n: int) -> Tensor:
        if n > self.table.shape[0]:
            raise ValueError(f"sequence of {n} tokens exceeds {self.table.shape[0]} positions")
        return self.table[:n]


class LearnedPositionalEmbedding2D(nn.Module):
    """Factorised learned 2-D positions for a G x G patch grid: a row embedding and a
    column embedding, D/2 channels each, concatenated (ViT paper, appendix D.4)."""

    def __init__(self, grid: int, dim: int, std: float = 0.02) -> None:
        super().__init__()
        self.grid = grid
        self.row = nn.Parameter(torch.randn(grid, dim // 2) * std)
        self.col = nn.Parameter(torch.randn(grid, dim - dim // 2) * std)

    def forward(self, n: int) -> Tensor:
        g = self.grid
        if n != g * g:
            raise ValueError(f"expected {g * g} patch tokens, got {n}")
        table = torch.cat([self.row[:, None].expand(g, g, -1), self.col[None, :].expand(g, g, -1)], -1)
        return table.reshape(g * g, -1)


class SinCos2DPositionalEmbedding(nn.Module):
    """Fixed 2-D sin/cos positions for a G x G patch grid (MAE, He et al. 2022)."""

    def __init__(self, grid: int, dim: int) -> None:
        super().__init__()
        self.table: Tensor
        self.register_buffer("table", sincos_2d_table(grid, dim), persistent=False)

    def forward(self, n: int) -> Tensor:
        if n != self.table.shape[0]:
            raise ValueError(f"expected {self.table.shape[0]} patch tokens, got {n}")
        return self.table


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoFormer, Su et al. 2021), applied to queries and keys
    inside attention so that q_m . k_n depends on m - n only. Half-split layout (as in
    GPT-NeoX): channel i rotates with channel i + Dh/2."""

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError("rotary embeddings need an even head dimension")
        self.head_dim, self.base = head_dim, base
        # Only a device marker: the frequencies are computed in float32 at each call, so
        # that model.to(bfloat16) cannot round the angles (0.03 rad off at position 77).
        self.anchor: Tensor
        self.register_buffer("anchor", torch.zeros(0), persistent=False)

    def forward(self, n: int) -> tuple[Tensor, Tensor]:
        """(cos, sin), each (n, Dh), float32."""
        device = self.anchor.device
        exponent = torch.arange(0, self.head_dim, 2, device=device, dtype=torch.float32) / self.head_dim
        inv_freq = 1.0 / self.base**exponent
        angles = torch.arange(n, device=device, dtype=torch.float32)[:, None] * inv_freq  # (n, Dh/2)
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, H, N, Dh) by the angles of positions 0..N-1."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos.to(x.dtype) + rotated * sin.to(x.dtype))
