"""Hugging Face `transformers` CLIP checkpoints -> polymodal DualEncoder.

A CLIPModel directory (config.json, model.safetensors or pytorch_model.bin, tokenizer
files, preprocessor_config.json) maps onto a ViT + causal text transformer with
quick_gelu or gelu, EOT pooling and bias-free projections. Keys are renamed and the
separate q/k/v projections fused; nothing is approximated, so embeddings agree with
transformers' to float rounding (tests/contract/test_hf_clip_parity.py).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from polymodal.checkpoint import WEIGHTS_FILE, load_state, read_weights, save_model_dir
from polymodal.config import (
    OPENAI_MEAN,
    OPENAI_STD,
    DualEncoderConfig,
    PreprocessConfig,
    TextTransformerConfig,
    TransformerConfig,
    ViTConfig,
)
from polymodal.errors import CheckpointError, ConfigError
from polymodal.models.dual_encoder import DualEncoder
from polymodal.tokenizer import Tokenizer, check_tokenizer_fits

# Renames outside the transformer blocks, applied to the start of each key.
_PREFIXES = [
    ("vision_model.embeddings.class_embedding", "visual.cls_token"),
    ("vision_model.embeddings.patch_embedding.", "visual.patch_embed."),
    ("vision_model.embeddings.position_embedding.", "visual.pos_embed."),
    ("vision_model.pre_layrnorm.", "visual.norm_pre."),  # sic: transformers' spelling
    ("vision_model.post_layernorm.", "visual.norm."),
    ("vision_model.encoder.layers.", "visual.transformer.blocks."),
    ("text_model.embeddings.token_embedding.", "text.token_embed."),
    ("text_model.embeddings.position_embedding.", "text.pos_embed."),
    ("text_model.final_layer_norm.", "text.norm."),
    ("text_model.encoder.layers.", "text.transformer.blocks."),
    ("visual_projection.", "visual.head."),
    ("text_projection.", "text.head."),
    ("logit_scale", "logit_scale"),
]
# Renames inside a block.
_BLOCK_PARTS = {"layer_norm1.": "norm1.", "layer_norm2.": "norm2.", "mlp.": "mlp.",
                "self_attn.out_proj.": "attn.out_proj."}
_QKV = re.compile(r"^(.*)\.self_attn\.([qkv])_proj\.(weight|bias)$")
_IGNORED = re.compile(r"\.position_ids$")  # buffers that old transformers versions saved


def is_hf_clip_dir(path: str | Path) -> bool:
    config = Path(path) / "config.json"
    try:
        return config.is_file() and json.loads(config.read_text()).get("model_type") == "clip"
    except (OSError, json.JSONDecodeError):
        return False


def config_from_hf(hf: dict[str, Any], preprocessor: dict[str, Any] | None) -> DualEncoderConfig:
    """The DualEncoderConfig equivalent to a transformers CLIPConfig dict."""
    try:
        v, t = hf["vision_config"], hf["text_config"]
        vision = ViTConfig(
            image_size=v["image_size"], patch_size=v["patch_size"],
            transformer=_transformer(v), pool="cls", pos_embed="learned", pre_norm=True,
            patch_bias=False, proj="linear", proj_bias=False)
        if v.get("num_channels", 3) != 3:
            raise CheckpointError(f"CLIP vision models with {v['num_channels']} channels are not supported")
        eot = t.get("eos_token_id", 2)
        if eot == 2:
            # Configs from before transformers PR #24773 say 2 and pool at argmax(ids),
            # which is the end token because CLIP's vocabulary puts it last.
            eot = t["vocab_size"] - 1
        text = TextTransformerConfig(
            vocab_size=t["vocab_size"], context_length=t["max_position_embeddings"],
            transformer=_transformer(t), causal=True, pool="eot", pos_embed="learned",
            eot_token_id=eot, proj="linear", proj_bias=False)
        pre = preprocessor or {}
        crop = pre.get("crop_size", v["image_size"])
        crop = crop["height"] if isinstance(crop, dict) else crop
        resize = pre.get("size", {}).get("shortest_edge", crop) if isinstance(pre.get("size"), dict) \
            else pre.get("size", crop)
        preprocess = PreprocessConfig(
            image_size=crop, resize_size=None if resize == crop else resize,
            mean=tuple(pre.get("image_mean", OPENAI_MEAN)), std=tuple(pre.get("image_std", OPENAI_STD)),
            interpolation="bilinear" if pre.get("resample") == 2 else "bicubic")
        return DualEncoderConfig(
            embed_dim=hf.get("projection_dim", 512), vision=vision, text=text, preprocess=preprocess,
            init_logit_scale=hf.get("logit_scale_init_value", 2.6592))
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"not a complete CLIP config: missing {err}") from None


def _transformer(section: dict[str, Any]) -> TransformerConfig:
    act = section.get("hidden_act", "quick_gelu")
    if act not in ("gelu", "quick_gelu"):
        raise ConfigError(f"unsupported CLIP activation {act!r}")
    return TransformerConfig(
        width=section["hidden_size"], layers=section["num_hidden_layers"],
        heads=section["num_attention_heads"],
        mlp_ratio=section["intermediate_size"] / section["hidden_size"],
        act=act, norm_eps=section.get("layer_norm_eps", 1e-5))


def remap_clip_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """transformers CLIPModel keys -> DualEncoder keys (q/k/v fused into in_proj)."""
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    unknown = []
    for key, tensor in state.items():
        if _IGNORED.search(key):
            continue
        match = _QKV.match(key)
        if match:
            qkv.setdefault((match.group(1), match.group(3)), {})[match.group(2)] = tensor
            continue
        new = _rename(key)
        if new is None:
            unknown.append(key)
        else:
            out[new] = tensor
    for (prefix, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"{prefix}: incomplete q/k/v projections {sorted(parts)}")
        out[_rename(f"{prefix}.self_attn.in_proj.{kind}", fused=True) or ""] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], dim=0)
    if unknown:
        raise CheckpointError(f"unrecognised CLIP weights: {', '.join(sorted(unknown)[:8])}")
    if "visual.cls_token" in out:
        out["visual.cls_token"] = out["visual.cls_token"].reshape(1, 1, -1)
    return out


def _rename(key: str, fused: bool = False) -> str | None:
    for old, new in _PREFIXES:
        if not key.startswith(old):
            continue
        rest = key[len(old):]
        if not new.endswith("blocks."):
            return new + rest
        index, _, part = rest.partition(".")
        if fused:
            return f"{new}{index}.attn.{part.removeprefix('self_attn.')}"
        for old_part, new_part in _BLOCK_PARTS.items():
            if part.startswith(old_part):
                return f"{new}{index}.{new_part}{part[len(old_part):]}"
        return None
    return None


def read_hf_weights(src: Path) -> dict[str, Tensor]:
    """model.safetensors, sharded safetensors, or pytorch_model.bin via the safe
    (weights_only) unpickler, which refuses anything but tensors."""
    if (src / WEIGHTS_FILE).is_file():
        return read_weights(src / WEIGHTS_FILE)
    index = src / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in read_weights(src / shard).items()}
    legacy = src / "pytorch_model.bin"
    if legacy.is_file():
        try:
            loaded = torch.load(legacy, map_location="cpu", weights_only=True)
        except Exception as err:  # UnpicklingError for anything that is not plain tensors
            raise CheckpointError(f"{legacy} holds more than tensors and was refused: "
                                  f"{str(err).splitlines()[0]}") from None
        return dict(loaded)
    raise CheckpointError(f"{src} has no weights (model.safetensors or pytorch_model.bin)")


def _read_hf_config(src: Path) -> DualEncoderConfig:
    if not is_hf_clip_dir(src):
        raise CheckpointError(f"{src} is not a Hugging Face CLIP directory (config.json with "
                              "model_type 'clip')")
    hf = json.loads((src / "config.json").read_text())
    pre_file = src / "preprocessor_config.json"
    preprocessor = json.loads(pre_file.read_text()) if pre_file.is_file() else None
    return config_from_hf(hf, preprocessor)


def hf_clip_tokenizer(src: str | Path, tokenizer_src: str | Path | None = None) -> Tokenizer:
    """The tokenizer of a CLIPModel directory (no weights are read)."""
    config = _read_hf_config(Path(src))
    return Tokenizer.from_hf(tokenizer_src or src, config.text.context_length)


def load_hf_clip(src: str | Path, tokenizer_src: str | Path | None = None
                 ) -> tuple[DualEncoder, Tokenizer, DualEncoderConfig]:
    """Build a DualEncoder (and its tokenizer) from a transformers CLIPModel directory."""
    src = Path(src)
    config = _read_hf_config(src)
    tokenizer = Tokenizer.from_hf(tokenizer_src or src, config.text.context_length)
    config = dataclasses.replace(config, tokenizer=tokenizer.config)
    check_tokenizer_fits(config, tokenizer)
    model = DualEncoder(config)
    load_state(model, remap_clip_state(read_hf_weights(src)), str(src))
    return model.eval(), tokenizer, config


def convert_hf_clip(src: str | Path, out: str | Path, tokenizer_src: str | Path | None = None,
                    overwrite: bool = False) -> str:
    """Convert a CLIPModel directory into a polymodal model directory; returns the model id."""
    model, tokenizer, config = load_hf_clip(src, tokenizer_src)
    return save_model_dir(model, config, tokenizer.backend.to_str(), out,
                          source=f"transformers CLIPModel {Path(src).resolve()}", overwrite=overwrite)
