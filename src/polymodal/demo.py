"""`polymodal demo`: a small end-to-end run of the model core on generated data.

Draws coloured shapes with Pillow and captions them ("a red circle"), trains a BPE
tokenizer on the captions, trains a tiny ViT dual encoder with the CLIP loss for a
minute or two, saves the model directory, reloads it, and reports zero-shot accuracy on
held-out drawings before and after training. It stands in for `polymodal quickstart`
(the training issue) and uses nothing but the library's public pieces.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from polymodal.config import TokenizerConfig
from polymodal.factory import create_model, get_tokenizer, get_transforms, load_model, save_model
from polymodal.models import DualEncoder
from polymodal.tokenizer import Tokenizer, train_bpe

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
           "yellow": (235, 200, 30), "purple": (140, 60, 180), "black": (20, 20, 20)}
SHAPES = ("circle", "square", "triangle")
CLASSES = [f"a {colour} {shape}" for colour in COLOURS for shape in SHAPES]


def draw_shape(colour: str, shape: str, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """One shape of random size and position on a light, noisy background."""
    background = rng.integers(200, 256, (size, size, 3), dtype=np.uint8)
    image = Image.fromarray(background, "RGB")
    radius = int(rng.integers(size // 6, size // 3))
    cx, cy = (int(rng.integers(radius, size - radius)) for _ in range(2))
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    draw = ImageDraw.Draw(image)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
    return image


@dataclass
class DemoResult:
    accuracy_before: float
    accuracy_after: float
    model_dir: Path
    model_id: str
    seconds: float


def run_demo(out: Path, steps: int = 120, batch_size: int = 54, seed: int = 0, lr: float = 5e-4,
             log: Callable[[str], None] = print) -> DemoResult:
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    labels: list[tuple[str, str]] = [(c, s) for c in COLOURS for s in SHAPES]
    test = [(draw_shape(c, s, rng), i) for i, (c, s) in enumerate(labels) for _ in range(10)]

    tokenizer = Tokenizer(train_bpe(CLASSES * 4, vocab_size=300, min_frequency=1), 32, TokenizerConfig())
    model = create_model("vit-tiny-64", device="cpu")
    transform = get_transforms(model.config)
    before = zero_shot_accuracy(model, tokenizer, transform, test)
    log(f"zero-shot accuracy over {len(CLASSES)} captions before training: {before:.1%}")

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    # Linear warm-up: without it the first large Adam steps collapse both towers to a
    # constant embedding, a known failure of contrastive training from scratch.
    warmup = max(1, steps // 6)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    model.train()
    for step in range(1, steps + 1):
        picks = rng.integers(0, len(labels), batch_size)
        images = torch.stack([transform(draw_shape(labels[i][0], labels[i][1], rng)) for i in picks])
        tokens = tokenizer([CLASSES[i] for i in picks])
        output = model(images=images, input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        assert output.image_embeds is not None and output.text_embeds is not None
        logits = output.logit_scale * output.image_embeds @ output.text_embeds.T
        # Captions repeat inside a batch: every image matching the caption is a positive.
        same = torch.as_tensor(picks[:, None] == picks[None, :], dtype=torch.float32)
        target = same / same.sum(dim=1, keepdim=True)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 20 == 0 or step == steps:
            log(f"step {step}/{steps}  loss {loss.item():.3f}")

    model_dir = out / "model"
    model_id = save_model(model.eval(), tokenizer, model_dir, overwrite=True,
                          training={"data": "generated shapes", "steps": steps, "batch_size": batch_size})
    reloaded = load_model(model_dir, device="cpu")
    after = zero_shot_accuracy(reloaded, get_tokenizer(model_dir), transform, test)
    log(f"zero-shot accuracy after training (reloaded from {model_dir}): {after:.1%}")
    return DemoResult(before, after, model_dir, model_id, time.perf_counter() - start)


@torch.no_grad()
def zero_shot_accuracy(model: DualEncoder, tokenizer: Tokenizer, transform: Callable,
                       test: list[tuple[Image.Image, int]]) -> float:
    """Fraction of test drawings whose best-matching caption is their own."""
    model.eval()
    tokens = tokenizer(CLASSES)
    text = model.encode_text(tokens.input_ids, tokens.attention_mask)
    images = model.encode_image(torch.stack([transform(image) for image, _ in test]))
    predicted = (images @ text.T).argmax(dim=1)
    return float((predicted == torch.tensor([label for _, label in test])).float().mean())
