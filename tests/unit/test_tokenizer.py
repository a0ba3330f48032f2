from pathlib import Path

import pytest
import torch

from polymodal.config import TokenizerConfig
from polymodal.errors import TokenizerError
from polymodal.registry import get_preset
from polymodal.tokenizer import EOT, PAD, SOT, Tokenizer, pretrained_tokenizer, train_bpe

CAPTIONS = [
    "a red circle on a white background", "a blue square next to a red circle",
    "two dogs playing on the beach", "a dog running on the grass", "a cat sleeping on a sofa",
    "the cat and the dog", "a smiling face with heart eyes", "a green triangle",
] * 5


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return Tokenizer(train_bpe(CAPTIONS, vocab_size=320), context_length=10, config=TokenizerConfig())


def test_special_tokens_have_fixed_ids(bpe: Tokenizer) -> None:
    assert [bpe.token_to_id(t) for t in (PAD, SOT, EOT)] == [0, 1, 2]
    assert bpe.pad_token_id == 0


def test_texts_are_wrapped_and_padded_on_the_right(bpe: Tokenizer) -> None:
    batch = bpe(["a dog", "two dogs playing"])
    ids, mask = batch.input_ids, batch.attention_mask
    assert ids.dtype == torch.long and ids.shape == mask.shape
    assert ids[0, 0] == 1 and ids[1, 0] == 1  # <sot> first
    n0 = int(mask[0].sum())
    assert ids[0, n0 - 1] == 2 and (ids[0, n0:] == 0).all() and (mask[0, n0:] == 0).all()
    assert mask[1].all()  # the longest text sets the batch length ("longest" padding)


def test_unseen_words_become_subwords_not_unknown_tokens(bpe: Tokenizer) -> None:
    tokens = bpe.tokens("xylophone")
    assert len(tokens) > 3  # <sot>, several pieces, <eot>
    long = Tokenizer(bpe.backend, context_length=64, config=TokenizerConfig())
    ids = long("xylophone 🎺").input_ids[0].tolist()
    assert long.decode(ids).strip() == "xylophone 🎺"  # bytes, not <unk>: nothing is lost


def test_normalisation_lowercases_and_collapses_whitespace(bpe: Tokenizer) -> None:
    assert torch.equal(bpe("A  Red\tCircle").input_ids, bpe("a red circle").input_ids)


def test_truncation_keeps_the_end_token(bpe: Tokenizer) -> None:
    ids = bpe("a red circle " * 20).input_ids
    assert ids.shape == (1, 10)
    assert ids[0, -1] == 2 and ids[0, 0] == 1


def test_max_length_padding_pads_every_batch_to_the_context() -> None:
    tok = Tokenizer(train_bpe(CAPTIONS, 300), 16, TokenizerConfig(padding="max_length"))
    assert tok("a dog").input_ids.shape == (1, 16)


def test_save_and_reload_gives_the_same_ids(bpe: Tokenizer, tmp_path: Path) -> None:
    bpe.save(tmp_path / "tokenizer.json")
    again = Tokenizer.from_file(tmp_path / "tokenizer.json", 10, TokenizerConfig())
    texts = ["a cat on the beach", "zebra crossing at night"]
    assert torch.equal(again(texts).input_ids, bpe(texts).input_ids)


def test_missing_pad_token_and_bad_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="pad token '<blank>'"):
        Tokenizer(train_bpe(CAPTIONS, 300), 8, TokenizerConfig(pad_token="<blank>"))
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerError, match="cannot read tokenizer"):
        Tokenizer.from_file(bad, 8, TokenizerConfig())
    with pytest.raises(TokenizerError, match="smaller than the 256-byte alphabet"):
        train_bpe(CAPTIONS, vocab_size=100)


def test_bad_inputs_are_rejected(bpe: Tokenizer) -> None:
    with pytest.raises(ValueError, match="no texts"):
        bpe([])
    with pytest.raises(TypeError):
        bpe([1, 2])  # type: ignore[list-item]


def test_minilm_tokenizer_matches_transformers() -> None:
    from transformers import AutoTokenizer

    from polymodal.pretrained import resolve_pretrained

    tok = pretrained_tokenizer(get_preset("vit-tiny-64-minilm"))
    reference = AutoTokenizer.from_pretrained(resolve_pretrained("all-MiniLM-L6-v2"))
    texts = ["A grinning face with big eyes", "two dogs on the beach"]
    expected = reference(texts, padding=True, return_tensors="pt")
    batch = tok(texts)
    assert torch.equal(batch.input_ids, expected["input_ids"])
    assert torch.equal(batch.attention_mask, expected["attention_mask"])
    assert tok.pad_token_id == reference.pad_token_id


def test_from_scratch_presets_have_no_implicit_tokenizer() -> None:
    with pytest.raises(TokenizerError, match="train_bpe"):
        pretrained_tokenizer(get_preset("vit-tiny-64"))


def test_context_too_short_for_the_special_tokens_is_an_error() -> None:
    with pytest.raises(TokenizerError, match="leaves no room next to 2 special tokens"):
        Tokenizer(train_bpe(CAPTIONS, 300), 2, TokenizerConfig())
