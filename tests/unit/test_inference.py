"""Bulk text embedding: batches of similar token length, cut to their longest text, and
results in the caller's order, equal to embedding each text alone."""

import pytest
import torch

from polymodal import inference
from polymodal.config import TokenizerConfig
from polymodal.errors import ConfigError
from polymodal.inference import embed_texts, text_features
from polymodal.models import DualEncoder
from polymodal.tokenizer import Tokenizer, train_bpe
from tests.helpers import tiny_config

WORDS = ["red", "blue", "green", "circle", "square", "small", "large", "left", "of", "a"]


def model_and_tokenizer(padding: str = "longest") -> tuple[DualEncoder, Tokenizer]:
    torch.manual_seed(0)
    corpus = [f"a {a} {b}" for a in WORDS for b in WORDS]
    tokenizer = Tokenizer(train_bpe(corpus, 300), 12, TokenizerConfig(padding=padding))
    return DualEncoder(tiny_config()).eval(), tokenizer


def texts(n: int) -> list[str]:
    """Texts of 1 to 9 words in a scrambled order of lengths."""
    return [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range((i * 5) % 9 + 1)) for i in range(n)]


def test_embeddings_come_back_in_the_callers_order_and_equal_one_at_a_time() -> None:
    model, tokenizer = model_and_tokenizer()
    many = texts(45)  # batch 2 x window 16 = 32 texts per window: two windows, the last one partial
    together = embed_texts(model, tokenizer, many, batch_size=2)
    alone = torch.cat([embed_texts(model, tokenizer, [t]) for t in many])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    features = text_features(model.text, tokenizer, many, batch_size=3)
    alone_features = torch.cat([text_features(model.text, tokenizer, [t]) for t in many])
    torch.testing.assert_close(features, alone_features, atol=1e-5, rtol=0)


def test_batches_hold_similar_lengths_and_are_cut_to_their_longest(monkeypatch) -> None:
    model, tokenizer = model_and_tokenizer(padding="max_length")  # pads every text to 12 tokens
    many = texts(32)
    widths: list[tuple[int, int]] = []  # (batch width, tokens of its shortest text)

    def encode(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        widths.append((ids.shape[1], int(mask.sum(dim=1).min())))
        return model.encode_text(ids, mask)

    out = inference.encode_by_length(encode, tokenizer, many, 4, torch.device("cpu"))
    lengths = sorted(int(tokenizer([t]).attention_mask.sum()) for t in many)
    assert [w for w, _ in widths] == [max(lengths[i:i + 4]) for i in range(0, 32, 4)]  # shortest first, no pad
    assert all(shortest == lengths[4 * i] for i, (_, shortest) in enumerate(widths))
    torch.testing.assert_close(out, embed_texts(model, tokenizer, many, batch_size=32), atol=1e-5, rtol=0)


def test_no_texts_give_an_empty_result() -> None:
    model, tokenizer = model_and_tokenizer()
    assert embed_texts(model, tokenizer, []).numel() == 0


def test_int8_quantises_every_linear_layer_and_stays_close_to_fp32() -> None:
    model, tokenizer = model_and_tokenizer()
    many = texts(20)
    pixels = torch.randn(6, 3, model.config.vision.image_size, model.config.vision.image_size)
    with torch.inference_mode():
        fp32_texts, fp32_images = embed_texts(model, tokenizer, many), model.encode_image(pixels)
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    quantised = inference.quantise_int8(model)
    kinds = {type(m).__name__ for m in quantised.modules()}
    assert not any(type(m) is torch.nn.Linear for m in quantised.modules()), kinds
    assert sum(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in quantised.modules()) == linears
    with torch.inference_mode():
        int8_texts, int8_images = embed_texts(quantised, tokenizer, many), quantised.encode_image(pixels)
    for got, expected in ((int8_texts, fp32_texts), (int8_images, fp32_images)):
        cosine = torch.nn.functional.cosine_similarity(got, expected)
        assert cosine.min() > 0.98 and not torch.equal(got, expected)


def test_int8_is_refused_off_the_cpu_and_unknown_precisions_are_named() -> None:
    model, _ = model_and_tokenizer()
    with pytest.raises(ConfigError, match="runs on the CPU; the model is on meta"):
        inference.quantise_int8(model.to("meta"))
    with pytest.raises(ConfigError, match="auto, fp32, bf16, int8, got 'fp16'"):
        inference.check_precision("fp16")
    assert inference.resolve_precision("int8", torch.device("cpu")) is None


def test_int8_quantises_a_hugging_face_text_tower() -> None:
    # The quickstart's text tower is MiniLM (a transformers BertModel), not our own layers.
    from polymodal.config import HFTextConfig

    torch.manual_seed(0)
    model = DualEncoder(tiny_config(text=HFTextConfig(pool="mean", context_length=16))).eval()
    ids = torch.randint(1000, 5000, (4, 10))
    mask = torch.ones_like(ids)
    mask[2:, 6:] = 0
    with torch.inference_mode():
        expected = model.encode_text(ids, mask)
    inference.quantise_int8(model)
    assert not any(type(m) is torch.nn.Linear for m in model.text.modules())
    with torch.inference_mode():
        got = model.encode_text(ids, mask)
    cosine = torch.nn.functional.cosine_similarity(got, expected)
    assert cosine.min() > 0.98 and not torch.equal(got, expected)
