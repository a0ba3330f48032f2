"""Fusion-model training: the joint objective reaches every part of the model, ITM learns
to tell matched from mismatched pairs, and a VQA model fits a tiny generated shapes set."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from polymodal.config import FusionConfig, TokenizerConfig, ViTConfig
from polymodal.data.builtin.shapes import build_shapes_dataset
from polymodal.models.dual_encoder import build_tower
from polymodal.models.fusion import FusionModel
from polymodal.tokenizer import MASK, Tokenizer, train_wordlevel
from polymodal.train.fusion_task import joint_losses, vqa_loss
from tests.helpers import tiny_transformer

SIDE = 32


def fusion_model(kind: str, vocab: int, answers: int = 0, seed: int = 0) -> FusionModel:
    torch.manual_seed(seed)
    vision = build_tower(ViTConfig(image_size=SIDE, patch_size=8, transformer=tiny_transformer()), 32)
    cfg = FusionConfig(kind=kind, vocab_size=vocab, context_length=16, image_tokens=17, image_width=32,
                       transformer=tiny_transformer(), mask_token_id=3, num_answers=answers)
    return FusionModel(cfg, vision)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes") / "shapes"
    build_shapes_dataset(out, scenes=40, size=SIDE, seed=1)
    return out


def load(root: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (root / name).read_text().splitlines()]


def pixels_of(root: Path, images: list[str]) -> torch.Tensor:
    arrays = [np.asarray(Image.open(root / i).convert("RGB"), dtype=np.float32) for i in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1


@pytest.mark.parametrize("kind", ["cross", "single"])
def test_the_joint_objective_reaches_every_part_of_the_model(shapes: Path, kind: str) -> None:
    rows = load(shapes, "captions.jsonl")[:6]
    texts = [r["captions"][0] for r in rows]
    tokenizer = Tokenizer(train_wordlevel(texts), 16, TokenizerConfig())
    assert tokenizer.token_to_id(MASK) == 3
    model = fusion_model(kind, tokenizer.vocab_size)
    losses = joint_losses(model, model.image_tokens(pixels_of(shapes, [r["image"] for r in rows])), tokenizer(texts),
                          torch.randn(6, 6), generator=torch.Generator().manual_seed(0))
    assert set(losses) == ({"itm", "mlm", "mpm"} if kind == "single" else {"itm", "mlm"})
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for part in (model.vision, model.encoder, model.itm, model.mlm):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters()), part


def test_itm_learns_to_tell_matched_from_mismatched_pairs() -> None:
    colours = {"red": (1.0, -1.0, -1.0), "green": (-1.0, 1.0, -1.0), "blue": (-1.0, -1.0, 1.0),
               "yellow": (1.0, 1.0, -1.0)}
    texts = [f"a {name} square" for name in colours]
    tokenizer = Tokenizer(train_wordlevel(texts), 16, TokenizerConfig())
    model = fusion_model("cross", tokenizer.vocab_size)
    pixels = torch.stack([torch.tensor(c)[:, None, None].expand(3, SIDE, SIDE) for c in colours.values()])
    pixels = pixels + 0.1 * torch.randn(pixels.shape, generator=torch.Generator().manual_seed(0))
    tokens = tokenizer(texts)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(100):
        loss = joint_losses(model, model.image_tokens(pixels), tokens, torch.zeros(4, 4), generator=generator)["itm"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        image = model.image_tokens(pixels)
        matched = model.match_probability(tokens.input_ids, tokens.attention_mask, image)
        shifted = model.match_probability(tokens.input_ids.roll(1, 0), tokens.attention_mask.roll(1, 0), image)
    assert (matched > 0.5).all() and (shifted < 0.5).all(), (matched, shifted)


@pytest.mark.parametrize("kind", ["cross", "single"])
def test_a_vqa_model_fits_a_tiny_shapes_set(shapes: Path, kind: str) -> None:
    questions = [q for q in load(shapes, "questions.jsonl") if q["type"] in ("colour", "shape", "exist")][:16]
    answers = sorted({q["answer"] for q in questions})
    tokenizer = Tokenizer(train_wordlevel(q["question"] for q in questions), 16, TokenizerConfig())
    model = fusion_model(kind, tokenizer.vocab_size, answers=len(answers))
    pixels = pixels_of(shapes, [q["image"] for q in questions])
    tokens = tokenizer([q["question"] for q in questions])
    target = torch.tensor([answers.index(q["answer"]) for q in questions])
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = vqa_loss(model, pixels, tokens, target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        predicted = model.answer_logits(tokens.input_ids, tokens.attention_mask, model.image_tokens(pixels))
    accuracy = (predicted.argmax(-1) == target).float().mean()
    assert accuracy >= 0.95, (kind, float(accuracy), float(loss.detach()))
    with pytest.raises(ValueError, match="no VQA head"):
        fusion_model(kind, tokenizer.vocab_size).answer_logits(tokens.input_ids, tokens.attention_mask,
                                                                model.image_tokens(pixels))
