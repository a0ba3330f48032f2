"""`polymodal caption` and `polymodal ask`: the commands of captioners and VQA models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    import torch

    from polymodal.transforms import ImageTransform

console = Console()

ModelDir = Annotated[Path, typer.Argument(help="A model directory (as `polymodal train` writes).")]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def caption(
    model: ModelDir,
    images: Annotated[list[Path], typer.Argument(help="Image files to caption.")],
    beam: Annotated[int, typer.Option(min=1, max=64, help="Beam width (1: greedy decoding).")] = 3,
    length_penalty: Annotated[float, typer.Option(
        min=0.0, help="Beam search ranks captions by log-probability / length ** this (0: none).")] = 0.6,
    max_length: Annotated[int | None, typer.Option(min=2, help="Most tokens per caption; default: the model's.")
                          ] = None,
    device: DeviceOpt = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Write a caption for each image with a captioning model."""
    from polymodal.factory import get_transforms
    from polymodal.task_models import load_captioner

    captioner, tokenizer = load_captioner(model, device)
    pixels = _pixels(images, get_transforms(captioner.cfg.preprocess), device)
    ids = captioner.generate(pixels, max_length=max_length, beam_size=beam, length_penalty=length_penalty)
    texts = [tokenizer.decode(row) for row in ids]
    if as_json:
        print(json.dumps([{"image": str(i), "caption": t} for i, t in zip(images, texts, strict=True)], indent=2))
        return
    for image, text in zip(images, texts, strict=True):
        console.print(f"{image}: {text}", highlight=False)


def ask(
    model: ModelDir,
    image: Annotated[Path, typer.Argument(help="The image the question is about.")],
    question: Annotated[str, typer.Argument(help="The question, e.g. \"what colour is the circle?\"")],
    top: Annotated[int, typer.Option(min=1, help="How many answers to list, most likely first.")] = 3,
    device: DeviceOpt = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Answer a question about an image with a VQA model."""
    import torch

    from polymodal.errors import DataError
    from polymodal.factory import get_transforms
    from polymodal.task_models import load_fusion_model

    fusion, tokenizer = load_fusion_model(model, device)
    config = fusion.model_config
    assert config is not None
    if not config.answers:
        raise DataError(f"{model} is not a VQA model: it has no answer classes")
    if not question.strip():
        raise DataError("the question is empty")
    pixels = _pixels([image], get_transforms(config.preprocess), device)
    tokens = tokenizer([question]).to(device)
    with torch.no_grad():
        logits = fusion.answer_logits(tokens.input_ids, tokens.attention_mask, fusion.image_tokens(pixels))
    probabilities = logits.float().softmax(dim=-1)[0]
    best = probabilities.argsort(descending=True)[:top].tolist()
    ranked = [(config.answers[i], float(probabilities[i])) for i in best]
    if as_json:
        print(json.dumps({"question": question, "answers": [{"answer": a, "probability": round(p, 6)}
                                                            for a, p in ranked]}, indent=2))
        return
    table = Table("answer", "probability", title=question)
    for answer, probability in ranked:
        table.add_row(answer, f"{probability:.3f}")
    console.print(table)


def explain(
    model: ModelDir,
    image: Annotated[Path, typer.Argument(help="The image.")],
    text: Annotated[str, typer.Argument(help="The text whose words' attention to show.")],
    out: Annotated[Path, typer.Option(help="The PNG to write.")] = Path("attention.png"),
    layer: Annotated[int, typer.Option(help="Which fusion layer's attention (-1: the last).")] = -1,
    device: DeviceOpt = "cpu",
) -> None:
    """Draw where a fusion model looks: each word's attention over the image, as a PNG."""
    from polymodal.errors import DataError
    from polymodal.explain import explain as explain_attention
    from polymodal.explain import render
    from polymodal.factory import get_transforms
    from polymodal.task_models import load_fusion_model

    if not image.is_file():
        raise DataError(f"{image}: no such image file")
    fusion, tokenizer = load_fusion_model(model, device)
    assert fusion.model_config is not None
    found = explain_attention(fusion, tokenizer, get_transforms(fusion.model_config.preprocess), image, text, layer)
    render(found, out)
    peaks = ", ".join(f"{w} {np.unravel_index(m.argmax(), m.shape)}" for w, m in zip(found.words, found.maps,
                                                                                    strict=True))
    console.print(f"wrote {out} (layer {found.layer}); most attended patch (row, column) per word: {peaks}",
                  highlight=False)


def _pixels(images: list[Path], transform: ImageTransform, device: str) -> torch.Tensor:
    import torch

    from polymodal.errors import DataError

    for image in images:
        if not image.is_file():
            raise DataError(f"{image}: no such image file")
    return torch.stack([transform(image) for image in images]).to(device)
