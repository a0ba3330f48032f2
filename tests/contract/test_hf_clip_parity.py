"""Parity with Hugging Face transformers' CLIPModel: a random CLIP with a small config,
saved with save_pretrained, loaded through the converter, gives the same embeddings."""

from pathlib import Path

import pytest
import torch
from transformers import CLIPModel, CLIPTokenizer

from polymodal.convert import convert_hf_clip, load_hf_clip
from polymodal.errors import CheckpointError, TokenizerError
from polymodal.factory import get_tokenizer, load_model
from tests.helpers import make_hf_clip_dir

TEXTS = ["the cat", "a photo of the dog!", "Dog", "the the the cat of the dog, and a cat"]


def _hf_features(output: object) -> torch.Tensor:
    return getattr(output, "pooler_output", output)  # transformers 5 returns a ModelOutput


@pytest.mark.parametrize(("legacy_eos", "act"),
                         [(False, "quick_gelu"), (True, "quick_gelu"), (False, "gelu")])
def test_embeddings_match_transformers(tmp_path: Path, legacy_eos: bool, act: str) -> None:
    src = make_hf_clip_dir(tmp_path / "hf", legacy_eos=legacy_eos, act=act)
    reference = CLIPModel.from_pretrained(src).eval()
    hf_tokenizer = CLIPTokenizer.from_pretrained(src)
    model, tokenizer, _ = load_hf_clip(src)

    hf_tokens = hf_tokenizer(TEXTS, padding=True, return_tensors="pt")
    tokens = tokenizer(TEXTS)
    assert torch.equal(tokens.input_ids, hf_tokens["input_ids"])
    assert torch.equal(tokens.attention_mask, hf_tokens["attention_mask"])

    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected_text = _hf_features(reference.get_text_features(**hf_tokens))
        expected_image = _hf_features(reference.get_image_features(pixel_values=pixels))
        text = model.encode_text(tokens.input_ids, tokens.attention_mask, normalize=False)
        image = model.encode_image(pixels, normalize=False)
        out = model(images=pixels, input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
    torch.testing.assert_close(text, expected_text, atol=1e-5, rtol=0)
    torch.testing.assert_close(image, expected_image, atol=1e-5, rtol=0)
    assert out.logit_scale.item() == pytest.approx(reference.logit_scale.exp().item(), rel=1e-6)


def test_converted_directory_loads_like_the_original(tmp_path: Path) -> None:
    src = make_hf_clip_dir(tmp_path / "hf")
    model_id = convert_hf_clip(src, tmp_path / "converted")
    direct = load_model(src, device="cpu")  # an HF directory loads without converting first
    converted = load_model(tmp_path / "converted", device="cpu")
    tokens = get_tokenizer(tmp_path / "converted")(TEXTS)
    assert torch.equal(tokens.input_ids, get_tokenizer(src)(TEXTS).input_ids)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(direct.encode_image(pixels), converted.encode_image(pixels))
        assert torch.equal(direct.encode_text(tokens.input_ids, tokens.attention_mask),
                           converted.encode_text(tokens.input_ids, tokens.attention_mask))
    assert len(model_id) == 12


def test_pickled_weights_load_only_through_the_safe_unpickler(tmp_path: Path) -> None:
    src = make_hf_clip_dir(tmp_path / "hf")
    state = CLIPModel.from_pretrained(src).state_dict()
    (src / "model.safetensors").unlink()
    torch.save(state, src / "pytorch_model.bin")  # plain tensors: accepted (weights_only=True)
    model, _, _ = load_hf_clip(src)
    assert torch.equal(model.logit_scale.detach(), state["logit_scale"])

    class Payload:  # anything but tensors is refused, without running it
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    torch.save({"x": Payload()}, src / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="holds more than tensors and was refused"):
        load_hf_clip(src)


def test_incomplete_checkpoints_fail_clearly(tmp_path: Path) -> None:
    src = make_hf_clip_dir(tmp_path / "hf", with_tokenizer=False)
    with pytest.raises(TokenizerError, match="no tokenizer files in"):
        load_hf_clip(src)
    src = make_hf_clip_dir(tmp_path / "hf2")
    (src / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has no weights"):
        load_hf_clip(src)
    with pytest.raises(CheckpointError, match="not a Hugging Face CLIP directory"):
        load_hf_clip(tmp_path)
