import math

import pytest
import torch
import torch.nn.functional as F

from polymodal.config import TransformerConfig
from polymodal.models.layers import (
    LearnedPositionalEmbedding2D,
    MultiheadAttention,
    QuickGELU,
    RotaryEmbedding,
    SinCos2DPositionalEmbedding,
    Transformer,
    TransformerBlock,
    apply_rotary,
    attention_with_weights,
    capture_attention,
    sinusoidal_table,
)


def _padding_mask(lengths: list[int], total: int) -> torch.Tensor:
    return torch.arange(total)[None, :] < torch.tensor(lengths)[:, None]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_sdpa_path_equals_explicit_softmax_path(causal: bool, padded: bool) -> None:
    attn = MultiheadAttention(32, 4).eval()
    x = torch.randn(3, 7, 32)
    mask = _padding_mask([7, 4, 1], 7) if padded else None
    fast = attn(x, key_mask=mask, causal=causal)
    with capture_attention(attn) as maps:
        slow = attn(x, key_mask=mask, causal=causal)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    weights = maps[""][0]
    assert weights.shape == (3, 4, 7, 7)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4, 7))
    if padded:  # padding keys get exactly zero weight (rows with any real key)
        assert weights[1, :, :, 4:].abs().max() == 0
    if causal:  # no query looks at a later position
        assert torch.triu(weights[0], diagonal=1).abs().max() == 0


def test_padding_keys_do_not_change_outputs() -> None:
    attn = MultiheadAttention(16, 2).eval()
    x = torch.randn(1, 6, 16)
    mask = _padding_mask([4], 6)
    changed = x.clone()
    changed[:, 4:] = torch.randn(1, 2, 16) * 100
    torch.testing.assert_close(attn(x, key_mask=mask)[:, :4], attn(changed, key_mask=mask)[:, :4])


def test_causal_outputs_do_not_depend_on_later_tokens() -> None:
    attn = MultiheadAttention(16, 2).eval()
    x = torch.randn(2, 6, 16)
    changed = x.clone()
    changed[:, 3:] += 5.0
    torch.testing.assert_close(attn(x, causal=True)[:, :3], attn(changed, causal=True)[:, :3])
    assert not torch.allclose(attn(x)[:, :3], attn(changed)[:, :3])  # without causal they do


def test_fully_padded_rows_give_finite_outputs() -> None:
    attn = MultiheadAttention(16, 2)
    out = attn(torch.randn(2, 4, 16), key_mask=torch.zeros(2, 4, dtype=torch.bool))
    assert torch.isfinite(out).all()


def test_cross_attention_reads_the_context_and_respects_its_mask() -> None:
    attn = MultiheadAttention(16, 2).eval()
    x, ctx = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    mask = _padding_mask([5, 2], 5)
    out = attn(x, ctx, key_mask=mask)
    assert out.shape == (2, 3, 16)
    with capture_attention(attn) as maps:
        attn(x, ctx, key_mask=mask)
    assert maps[""][0].shape == (2, 2, 3, 5)
    assert maps[""][0][1, :, :, 2:].abs().max() == 0
    # Reference: q from x, k and v from the context, each with its slice of in_proj.
    w, b = attn.in_proj.weight, attn.in_proj.bias
    q = F.linear(x, w[:16], b[:16]).view(2, 3, 2, 8).transpose(1, 2)
    k = F.linear(ctx, w[16:32], b[16:32]).view(2, 5, 2, 8).transpose(1, 2)
    v = F.linear(ctx, w[32:], b[32:]).view(2, 5, 2, 8).transpose(1, 2)
    ref, _ = attention_with_weights(q, k, v, mask[:, None, None, :], causal=False)
    torch.testing.assert_close(out, attn.out_proj(ref.transpose(1, 2).flatten(2)), atol=1e-6, rtol=1e-5)


def test_capture_attention_restores_the_fast_path_and_nests() -> None:
    attn = MultiheadAttention(16, 2)
    x = torch.randn(1, 3, 16)
    with capture_attention(attn) as outer:
        attn(x)
        with capture_attention(attn) as inner:
            attn(x)
        attn(x)
    assert attn.recorded is None
    assert len(outer[""]) == 2 and len(inner[""]) == 1


def test_sdpa_matches_a_hand_written_masked_softmax() -> None:
    attn = MultiheadAttention(8, 1).eval()
    x = torch.randn(1, 4, 8)
    keep = torch.tensor([[True, True, True, False]])
    q, k, v = attn.in_proj(x).chunk(3, dim=-1)
    scores = q @ k.transpose(1, 2) / math.sqrt(8)  # (1, 4, 4)
    allowed = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 0]], dtype=torch.bool)
    expected = attn.out_proj(scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v)
    torch.testing.assert_close(attn(x, key_mask=keep, causal=True), expected, atol=1e-6, rtol=1e-5)


def test_rotary_angles_stay_float32_in_a_bf16_model() -> None:
    rope = RotaryEmbedding(64).to(torch.bfloat16)
    cos, _ = rope(78)
    assert cos.dtype == torch.float32
    assert cos[77, 0].item() == pytest.approx(math.cos(77.0), abs=1e-5)


def test_quick_gelu_matches_its_formula() -> None:
    x = torch.linspace(-3, 3, 7)
    torch.testing.assert_close(QuickGELU()(x), x * torch.sigmoid(1.702 * x))


def test_quick_gelu_without_autograd_gives_the_same_bits_and_spares_its_input() -> None:
    x = torch.randn(64, 96, requires_grad=True)
    with_graph = QuickGELU()(x)
    with torch.no_grad():
        before = x.detach().clone()
        in_place = QuickGELU()(x)
    assert torch.equal(in_place, with_graph.detach())  # the in-place path may not round differently
    assert torch.equal(x.detach(), before)  # its buffer is new: the input is not overwritten
    with_graph.sum().backward()  # and the autograd path still differentiates
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_layer_scale_starts_at_its_init_value() -> None:
    cfg = TransformerConfig(width=16, layers=1, heads=2, layer_scale_init=1e-6)
    block = TransformerBlock(cfg)
    x = torch.randn(2, 5, 16)
    # With residual branches scaled by 1e-6 the block is almost the identity.
    torch.testing.assert_close(block(x), x, atol=1e-4, rtol=0)
    assert torch.all(block.ls1.gamma == 1e-6)


def test_cross_attention_block_requires_context() -> None:
    block = TransformerBlock(TransformerConfig(16, 1, 2), cross_attention=True)
    with pytest.raises(ValueError, match="context"):
        block(torch.randn(1, 3, 16))
    assert block(torch.randn(1, 3, 16), context=torch.randn(1, 4, 16)).shape == (1, 3, 16)


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    model = Transformer(TransformerConfig(16, 2, 2))
    x = torch.randn(2, 5, 16)
    model(x).square().sum().backward()
    reference = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.grad_checkpointing = True
    model(x).square().sum().backward()
    for ref, p in zip(reference, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, ref)


def test_sinusoidal_table_values() -> None:
    table = sinusoidal_table(10, 8)
    assert table.shape == (10, 8)
    pos, i = 3, 1  # dims 2i and 2i+1 share the frequency 1 / 10000^(2i/d)
    freq = 1 / 10000 ** (2 * i / 8)
    assert table[pos, 2 * i].item() == pytest.approx(math.sin(pos * freq), abs=1e-6)
    assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(pos * freq), abs=1e-6)


def test_2d_positions_share_rows_and_columns() -> None:
    for module in (LearnedPositionalEmbedding2D(4, 8), SinCos2DPositionalEmbedding(4, 8)):
        table = module(16).reshape(4, 4, 8)
        # First half of the channels encodes the row, second half the column.
        torch.testing.assert_close(table[1, 0, :4], table[1, 3, :4])
        torch.testing.assert_close(table[0, 2, 4:], table[3, 2, 4:])
        assert not torch.allclose(table[0, 0, :4], table[1, 0, :4])
        with pytest.raises(ValueError, match="patch tokens"):
            module(15)


def test_rotary_scores_depend_only_on_relative_position() -> None:
    rope = RotaryEmbedding(8)
    cos, sin = rope(12)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    qs = apply_rotary(q.expand(1, 1, 12, 8), cos, sin)
    ks = apply_rotary(k.expand(1, 1, 12, 8), cos, sin)
    scores = (qs @ ks.transpose(-1, -2))[0, 0]  # (12, 12)
    assert scores[5, 2].item() == pytest.approx(scores[9, 6].item(), abs=1e-5)
    assert scores[5, 2].item() != pytest.approx(scores[5, 3].item(), abs=1e-3)
    # Position 0 is not rotated; rotation preserves the norm.
    torch.testing.assert_close(qs[..., 0, :], q[..., 0, :])
    torch.testing.assert_close(qs.norm(dim=-1), q.norm(dim=-1).expand(1, 1, 12))
