"""Helpers for tests: tiny configs and a tiny Hugging Face CLIP checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from polymodal.config import (
    DualEncoderConfig,
    PreprocessConfig,
    TextTransformerConfig,
    TransformerConfig,
    ViTConfig,
)

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image


def tiny_transformer(width: int = 32, layers: int = 2, heads: int = 4, **kw: object) -> TransformerConfig:
    return TransformerConfig(width=width, layers=layers, heads=heads, **kw)  # type: ignore[arg-type]


def tiny_config(**overrides: object) -> DualEncoderConfig:
    """A dual encoder small enough to run a forward pass in milliseconds."""
    vision = ViTConfig(image_size=16, patch_size=4, transformer=tiny_transformer())
    text = TextTransformerConfig(vocab_size=300, context_length=12, transformer=tiny_transformer())
    base: dict[str, object] = dict(embed_dim=24, vision=vision, text=text,
                                   preprocess=PreprocessConfig(image_size=16))
    base.update(overrides)
    return DualEncoderConfig(**base)  # type: ignore[arg-type]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable character table (Radford et al. 2019)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    codes, extra = printable[:], 0
    table = printable[:]
    for b in range(256):
        if b not in printable:
            table.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(table, (chr(c) for c in codes), strict=True))


CLIP_MERGES = [("t", "h"), ("th", "e</w>"), ("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>"),
               ("o", "f</w>")]


def write_clip_tokenizer_files(directory: Path) -> int:
    """vocab.json + merges.txt laid out as OpenAI CLIP's (bytes, bytes + </w>, merges,
    <|startoftext|>, <|endoftext|> last); returns the vocabulary size."""
    chars = list(_bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in CLIP_MERGES]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (directory / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in CLIP_MERGES) + "\n")
    return len(vocab)


def make_hf_clip_dir(directory: Path, *, legacy_eos: bool = False, act: str = "quick_gelu",
                     with_tokenizer: bool = True, image_size: int = 32) -> Path:
    """A randomly initialised transformers CLIPModel with a small config, saved with
    save_pretrained (plus its tokenizer) into `directory`."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    files = directory / "tokenizer-src"
    files.mkdir(exist_ok=True)
    vocab_size = write_clip_tokenizer_files(files)
    eos = 2 if legacy_eos else vocab_size - 1  # 2: configs from before transformers PR #24773
    config = CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16,
                         eos_token_id=eos, bos_token_id=vocab_size - 2, pad_token_id=vocab_size - 1,
                         hidden_act=act),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, image_size=image_size, patch_size=8, hidden_act=act),
        projection_dim=24)
    model = CLIPModel(config).eval()
    model.save_pretrained(directory)
    if with_tokenizer:
        CLIPTokenizer(str(files / "vocab.json"), str(files / "merges.txt")).save_pretrained(directory)
    return directory


# --------------------------------------------------------------------------- generated data

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}
SHAPES = ("circle", "square", "triangle")


def draw_shape(colour: str, shape: str, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """One shape of random size and position on a light, noisy background."""
    import numpy as np
    from PIL import Image, ImageDraw

    image = Image.fromarray(rng.integers(200, 256, (size, size, 3), dtype=np.uint8), "RGB")
    radius = int(rng.integers(size // 5, size // 3))
    cx, cy = (int(rng.integers(radius, size - radius)) for _ in range(2))
    draw = ImageDraw.Draw(image)
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if shape == "circle":
        draw.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        draw.rectangle(box, fill=COLOURS[colour])
    else:
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)],
                     fill=COLOURS[colour])
    return image


def make_shapes_dataset(root: Path, per_class: int, seed: int = 0, size: int = 32) -> Path:
    """root/images/*.png + root/captions.jsonl: `per_class` drawings of each of the 12
    colour-shape pairs, two captions each. Returns the captions file."""
    import numpy as np

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for colour in COLOURS:
        for shape in SHAPES:
            for i in range(per_class):
                name = f"images/{colour}-{shape}-{i}.png"
                draw_shape(colour, shape, rng, size).save(root / name)
                rows.append({"image": name, "captions": [f"a {colour} {shape}", f"{shape}, {colour}"]})
    captions = root / "captions.jsonl"
    captions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return captions


TINY_MODEL = {
    "embed_dim": 32,
    "vision": {"kind": "vit", "image_size": 32, "patch_size": 8,
               "transformer": {"width": 64, "layers": 2, "heads": 2}},
    "text": {"kind": "transformer", "vocab_size": 300, "context_length": 16,
             "transformer": {"width": 64, "layers": 2, "heads": 2}},
    "preprocess": {"image_size": 32},
}


def save_tiny_model(path: Path, seed: int = 0) -> Path:
    """A randomly initialised tiny_config() model with a BPE tokenizer over the shapes
    captions, saved as a model directory at `path`."""
    import torch

    from polymodal.config import TokenizerConfig
    from polymodal.factory import save_model
    from polymodal.models import DualEncoder
    from polymodal.tokenizer import Tokenizer, train_bpe

    torch.manual_seed(seed)
    captions = [f"a {c} {s}" for c in COLOURS for s in SHAPES] * 3
    save_model(DualEncoder(tiny_config()).eval(), Tokenizer(train_bpe(captions, 300), 12, TokenizerConfig()), path)
    return path


def write_train_config(path: Path, data_dir: Path, output: Path, **sections: dict) -> Path:
    """A TOML training config over a shapes dataset made by make_shapes_dataset, with the
    tiny model; `sections` override whole-section keys, e.g. train={"steps": 5}."""
    (data_dir / "tiny-model.json").write_text(json.dumps(TINY_MODEL))
    config: dict[str, dict] = {
        "data": {"kind": "captions", "file": str(data_dir / "captions.jsonl"), "caption_columns": ["captions"]},
        "model": {"preset": str(data_dir / "tiny-model.json"), "tokenizer_min_frequency": 1},
        "optim": {"lr": 2e-3, "warmup_steps": 5},
        "train": {"batch_size": 24, "steps": 10, "num_workers": 0, "log_every": 1, "checkpoint_every": 5},
        "augment": {"scale": [0.8, 1.0]},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return write_toml(path, {"output": str(output)}, config)


def write_toml(path: Path, top: dict, sections: dict[str, dict]) -> Path:
    """A TOML file of top-level keys and [sections]; values written as JSON literals
    (which TOML reads the same for strings, numbers, booleans and arrays)."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in top.items()]
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def save_tiny_fusion_model(path: Path, texts: list[str], seed: int = 0) -> Path:
    """A randomly initialised cross-attention fusion model (16-px ViT, 4x4 patches) with a
    word-level tokenizer over `texts`, saved as a model directory at `path`."""
    import torch

    from polymodal.config import FusionConfig, FusionModelConfig, PreprocessConfig, TokenizerConfig, ViTConfig
    from polymodal.task_models import build_fusion_model, save_task_model
    from polymodal.tokenizer import Tokenizer, train_wordlevel

    tokenizer = Tokenizer(train_wordlevel(texts), 10, TokenizerConfig())
    fusion = FusionConfig(kind="cross", vocab_size=tokenizer.vocab_size, context_length=10, image_tokens=17,
                          image_width=32, transformer=tiny_transformer(), mask_token_id=3)
    vision = ViTConfig(image_size=16, patch_size=4, transformer=tiny_transformer())
    torch.manual_seed(seed)
    model = build_fusion_model(FusionModelConfig(vision=vision, fusion=fusion,
                                                 preprocess=PreprocessConfig(image_size=16)))
    save_task_model(model, tokenizer, path)
    return path


def kill_and_resume(straight: Path, killed: Path, killed_run: Path) -> None:
    """Train config `straight` to the end; start config `killed`, SIGKILL it once its run
    folder `killed_run` holds a checkpoint, and run it again so that it resumes. Asserts
    each step's outcome; the caller compares the two runs' weights."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = dict(os.environ, PYTHONUNBUFFERED="1")

    def command(config: Path) -> list[str]:
        return [sys.executable, "-m", "polymodal.cli", "train", str(config), "--quiet"]

    done = subprocess.run(command(straight), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    process = subprocess.Popen(command(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (killed_run / "checkpoint.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode != 0, "the run finished before it could be killed"
    resumed = subprocess.run(command(killed), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr


def assert_same_weights(expected_dir: Path, got_dir: Path) -> None:
    """Two model directories hold bit-identical weights."""
    import torch
    from safetensors.torch import load_file

    expected = load_file(str(expected_dir / "model.safetensors"))
    got = load_file(str(got_dir / "model.safetensors"))
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=f"{got_dir.name}: {name}")
