import dataclasses

import pytest
import torch

from polymodal.config import ResNetConfig, TextTransformerConfig, TransformerConfig, ViTConfig
from polymodal.errors import ConfigError
from polymodal.models.text import TextTransformer, masked_mean
from polymodal.models.vision import ResNetTower, VisionTransformer

T = TransformerConfig(width=32, layers=3, heads=4)


def _text(**kw: object) -> TextTransformer:
    cfg = TextTransformerConfig(vocab_size=50, context_length=10, transformer=T, **kw)  # type: ignore[arg-type]
    return TextTransformer(cfg, output_dim=16).eval()


def _ids(*rows: list[int], length: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def test_vit_tokens_and_pooling() -> None:
    vit = VisionTransformer(ViTConfig(image_size=16, patch_size=4, transformer=T), output_dim=16)
    features = vit.forward_features(torch.randn(2, 3, 16, 16))
    assert features.tokens.shape == (2, 17, 32)  # class token + 4x4 patches
    torch.testing.assert_close(features.pooled, features.tokens[:, 0])
    assert vit(torch.randn(2, 3, 16, 16)).shape == (2, 16)
    mean_vit = VisionTransformer(ViTConfig(image_size=16, patch_size=4, transformer=T, pool="mean"), 16)
    features = mean_vit.forward_features(torch.randn(2, 3, 16, 16))
    assert mean_vit.cls_token is None and features.tokens.shape == (2, 16, 32)
    torch.testing.assert_close(features.pooled, features.tokens.mean(1))


def test_vit_rejects_wrong_image_size() -> None:
    vit = VisionTransformer(ViTConfig(image_size=16, patch_size=4, transformer=T), 16)
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, 16, 16\)"):
        vit(torch.randn(2, 3, 32, 32))


def test_resnet_tokens_are_cells_of_the_last_feature_map() -> None:
    net = ResNetTower(ResNetConfig(image_size=32, widths=(8, 16), depths=(1, 1)), 16)
    features = net.forward_features(torch.randn(2, 3, 32, 32))
    assert features.tokens.shape == (2, 64, 16)  # 32 / 2 (stem) / 2 (stage 2) = 8x8
    torch.testing.assert_close(features.pooled, features.tokens.mean(1))


def test_eot_pooling_reads_the_first_end_token_and_ignores_what_follows() -> None:
    text = _text()
    a, mask = _ids([1, 7, 8, 2], [1, 7, 8, 2])
    a[1, 4:] = torch.tensor([9, 9, 9, 9])  # garbage after the end token
    features = text.forward_features(a)  # no mask: causal attention still ignores them
    torch.testing.assert_close(features.pooled[0], features.pooled[1])
    torch.testing.assert_close(features.pooled[0], features.tokens[0, 3])


def test_eot_pooling_without_an_end_token_uses_the_last_real_token() -> None:
    text = _text()
    ids, mask = _ids([1, 7, 8, 9])
    features = text.forward_features(ids, mask)
    torch.testing.assert_close(features.pooled[0], features.tokens[0, 3])


def test_padding_length_does_not_change_text_embeddings() -> None:
    for kw in ({}, {"pool": "mean", "causal": False}, {"pos_embed": "rotary"}, {"pos_embed": "sinusoidal"}):
        text = _text(**kw)
        short, short_mask = _ids([1, 5, 6, 2], length=4)
        long, long_mask = _ids([1, 5, 6, 2], length=10)
        torch.testing.assert_close(text(short, short_mask), text(long, long_mask), atol=1e-5, rtol=1e-5)


def test_text_rejects_left_padding_and_overlong_inputs() -> None:
    text = _text()
    ids, mask = _ids([1, 5, 2])
    with pytest.raises(ValueError, match="right-padded"):
        text(ids, mask.flip(1))
    with pytest.raises(ValueError, match="exceed context_length 10"):
        text(torch.ones(1, 11, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        text(torch.ones(11, dtype=torch.long))


def test_masked_mean_ignores_padding() -> None:
    x = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert masked_mean(x, torch.tensor([[1, 1, 0]])).item() == 2.0


def test_lock_freezes_all_but_the_last_groups_and_keeps_the_head_trainable() -> None:
    vit = VisionTransformer(ViTConfig(image_size=16, patch_size=4, transformer=T), 16)
    vit.lock(unlocked_groups=1)
    trainable = {n.split(".")[0] + ("." + n.split(".")[2] if n.startswith("transformer") else "")
                 for n, p in vit.named_parameters() if p.requires_grad}
    assert trainable == {"transformer.2", "norm", "head"}
    vit.lock(0)
    assert {n.split(".")[0] for n, p in vit.named_parameters() if p.requires_grad} == {"head"}
    vit.lock(4)  # stem + 3 blocks: everything
    assert all(p.requires_grad for p in vit.parameters())
    with pytest.raises(ConfigError, match="unlocked_groups must be in 0..4"):
        vit.lock(5)


@pytest.mark.parametrize("proj", ["linear", "mlp", "none"])
def test_projection_heads(proj: str) -> None:
    cfg = ViTConfig(image_size=16, patch_size=4, transformer=T, proj=proj, proj_bias=True)  # type: ignore[arg-type]
    vit = VisionTransformer(cfg, output_dim=32)
    assert vit(torch.randn(1, 3, 16, 16)).shape == (1, 32)
    if proj == "none":
        with pytest.raises(ConfigError, match="needs tower width 32 == embed_dim 16"):
            VisionTransformer(dataclasses.replace(cfg), output_dim=16)


def _full_pooled(tower: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    return tower.forward_features(x, mask).pooled  # type: ignore[operator,no-any-return]


@pytest.mark.parametrize("kw", [{}, {"pool": "first", "causal": False}, {"pool": "mean", "causal": False},
                                {"pos_embed": "rotary"}, {"causal": False}])
def test_pooled_features_equal_the_full_pass_with_gradients(kw: dict[str, object]) -> None:
    """The pooled path computes the last block for the pooled token only (eot, first) or
    falls back (mean, rotary): the same vector and the same gradients either way. In
    float64: this tiny random model's float32 gradients carry rounding of 1% of their
    largest value down either path, which would hide a real difference."""
    text = _text(**kw).train().double()
    ids, mask = _ids([1, 5, 6, 2], [1, 7, 2], [1, 3, 4, 5, 8, 9, 2], [4, 4, 4], length=8)
    ids[3, 2] = 49  # a row without the end token pools its last real token
    fast = text.pooled_features(ids, mask)
    fast.square().sum().backward()
    fast_grads = {n: p.grad.clone() for n, p in text.named_parameters() if p.grad is not None}
    text.zero_grad()
    full = _full_pooled(text, ids, mask)
    full.square().sum().backward()
    torch.testing.assert_close(fast, full, atol=1e-10, rtol=1e-10)
    for name, param in text.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(fast_grads[name], param.grad, atol=1e-10, rtol=1e-8, msg=name)
    assert set(fast_grads) == {n for n, p in text.named_parameters() if p.grad is not None}


def test_vit_pooled_features_equal_the_full_pass() -> None:
    for pool in ("cls", "mean"):
        vit = VisionTransformer(ViTConfig(image_size=16, patch_size=4, transformer=T, pool=pool), 16).eval()
        x = torch.randn(3, 3, 16, 16)
        torch.testing.assert_close(vit.pooled_features(x), _full_pooled(vit, x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(vit(x), vit.forward_head(_full_pooled(vit, x)), atol=1e-5, rtol=1e-5)


def test_last_block_runs_for_the_pooled_token_only() -> None:
    """The saving is real: the last block's MLP sees one token per sequence."""
    vit = VisionTransformer(ViTConfig(image_size=16, patch_size=4, transformer=T), 16).eval()
    seen: list[tuple[int, ...]] = []
    hook = vit.transformer.blocks[-1].mlp.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    vit(torch.randn(2, 3, 16, 16))
    hook.remove()
    assert seen == [(2, 1, 32)]


def test_padded_text_runs_its_blocks_on_real_tokens_only() -> None:
    """Padding costs nothing: every block's MLP sees the 3 + 5 real tokens, not 2 x 8, and
    the last one only the two pooled tokens. Without padding (or without a mask) the
    pooled path still agrees with the full pass."""
    text = _text().eval()
    seen: list[tuple[int, ...]] = []
    hooks = [b.mlp.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
             for b in text.transformer.blocks]
    ids, mask = _ids([1, 5, 2], [1, 3, 4, 5, 2], length=8)
    pooled = text.pooled_features(ids, mask)
    for hook in hooks:
        hook.remove()
    assert seen == [(8, 32), (8, 32), (2, 32)]
    torch.testing.assert_close(pooled, _full_pooled(text, ids, mask), atol=1e-5, rtol=1e-5)
    full, full_mask = _ids([1, 5, 2, 7], [1, 3, 4, 2], length=4)
    for m in (full_mask, None):
        torch.testing.assert_close(text.pooled_features(full, m), _full_pooled(text, full, m), atol=1e-5, rtol=1e-5)


def test_capturing_attention_keeps_every_querys_weights() -> None:
    from polymodal.models.layers import capture_attention

    vit = VisionTransformer(ViTConfig(image_size=16, patch_size=4, transformer=T), 16).eval()
    x = torch.randn(2, 3, 16, 16)
    with capture_attention(vit) as maps:
        captured = vit(x)
    assert [w.shape for w in maps["transformer.blocks.2.attn"]] == [(2, 4, 17, 17)]  # the full pass
    torch.testing.assert_close(captured, vit(x), atol=1e-5, rtol=1e-5)


def test_padding_with_the_end_tokens_id_pools_each_rows_own_token() -> None:
    """Hugging Face's CLIP tokenizers pad with the end token: a row cut before its end token
    pools its last real token, on the packed path as on the full one."""
    text = _text(eot_token_id=0).eval()
    ids, mask = _ids([1, 5, 6], [1, 3, 4, 5, 7, 9], length=8)  # no end token, padded with 0
    index = text._pool_index(ids, mask.bool())
    assert index.tolist() == [2, 5]
    torch.testing.assert_close(text.pooled_features(ids, mask), _full_pooled(text, ids, mask), atol=1e-5, rtol=1e-5)


def test_left_padded_first_token_pooling_falls_back_to_the_full_pass() -> None:
    text = _text(pool="first", causal=False).eval()
    ids, mask = _ids([1, 5, 6], [1, 3, 4, 5, 7, 9], length=8)
    ids, mask = ids.flip(1), mask.flip(1)  # the pooled position 0 is padding in row 0
    torch.testing.assert_close(text.pooled_features(ids, mask), _full_pooled(text, ids, mask), atol=1e-5, rtol=1e-5)


def test_packed_index_refuses_padding_positions() -> None:
    from polymodal.models.layers import Packing

    packing = Packing.from_mask(torch.tensor([[True, True, False], [True, False, False]]))
    assert packing.packed_index(torch.tensor([1, 0])).tolist() == [1, 2]
    with pytest.raises(ValueError, match="padding"):
        packing.packed_index(torch.tensor([2, 0]))


def test_gradient_checkpointing_gives_the_pooled_paths_gradients() -> None:
    """Checkpointed blocks on the packed and pooled-token paths recompute the same values."""
    text = _text().train().double()
    ids, mask = _ids([1, 5, 6, 2], [1, 7, 2], length=6)

    def grads() -> dict[str, torch.Tensor]:
        text.zero_grad()
        text.pooled_features(ids, mask).square().sum().backward()
        return {n: p.grad.clone() for n, p in text.named_parameters() if p.grad is not None}

    plain = grads()
    text.set_grad_checkpointing(True)
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-12, rtol=1e-10, msg=name)
