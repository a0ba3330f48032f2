"""Helpers for tests: tiny configs and a tiny Hugging Face CLIP checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from polymodal.config import (
    DualEncoderConfig,
    PreprocessConfig,
    TextTransformerConfig,
    TransformerConfig,
    ViTConfig,
)


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
