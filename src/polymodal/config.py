"""Typed model configuration: frozen dataclasses, built from JSON-like dicts by
`from_dict`, which rejects unknown keys and values outside their choices.

A model is `DualEncoderConfig` = one vision tower + one text tower + preprocessing.
Each tower config carries a `kind` ("vit", "resnet", "transformer", "hf") that names
the tower class; new towers (audio, layout) add a config class here and a tower class
in `models/`, never a branch elsewhere.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from polymodal.errors import ConfigError

T = TypeVar("T")

# Pixel statistics of the OpenAI CLIP training set (Radford et al. 2021); a sensible
# default for any RGB photo model and required for parity with CLIP checkpoints.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

ProjectionKind = Literal["linear", "mlp", "none"]


@dataclass(frozen=True)
class TransformerConfig:
    """A stack of pre-norm residual blocks (shared by every transformer tower)."""

    width: int
    layers: int
    heads: int
    mlp_ratio: float = 4.0
    act: Literal["gelu", "quick_gelu"] = "gelu"  # quick_gelu: OpenAI CLIP's sigmoid(1.702x)x
    layer_scale_init: float | None = None  # CaiT LayerScale (Touvron et al. 2021); None = off
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        _check(self.width > 0 and self.layers > 0 and self.heads > 0, "width, layers, heads must be > 0")
        _check(self.width % self.heads == 0, f"width {self.width} is not divisible by heads {self.heads}")
        _check(self.mlp_ratio > 0, "mlp_ratio must be > 0")
        _check(self.layer_scale_init is None or self.layer_scale_init > 0, "layer_scale_init must be > 0")

    @property
    def mlp_dim(self) -> int:
        return round(self.width * self.mlp_ratio)


@dataclass(frozen=True)
class ViTConfig:
    """Vision Transformer (Dosovitskiy et al. 2021) as CLIP uses it."""

    kind: ClassVar[str] = "vit"
    image_size: int
    patch_size: int
    transformer: TransformerConfig
    pool: Literal["cls", "mean"] = "cls"
    # learned: one vector per token incl. the class token (CLIP); learned_2d: row + column
    # halves concatenated (ViT paper, appendix D.4); sincos_2d: fixed (MAE).
    pos_embed: Literal["learned", "learned_2d", "sincos_2d"] = "learned"
    pre_norm: bool = True  # CLIP's ln_pre: a LayerNorm on the embedded tokens
    patch_bias: bool = False  # CLIP's patch convolution has no bias
    proj: ProjectionKind = "linear"
    proj_bias: bool = False

    def __post_init__(self) -> None:
        _check(self.image_size > 0 and self.patch_size > 0, "image_size and patch_size must be > 0")
        _check(self.image_size % self.patch_size == 0,
               f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        _check(self.pos_embed == "learned" or self.transformer.width % 4 == 0,
               "2-D position embeddings need a width divisible by 4")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class ResNetConfig:
    """A small ResNet (He et al. 2016) of basic blocks, GroupNorm instead of BatchNorm."""

    kind: ClassVar[str] = "resnet"
    image_size: int
    widths: tuple[int, ...] = (32, 64, 128, 256)
    depths: tuple[int, ...] = (1, 1, 1, 1)
    norm_groups: int = 8
    proj: ProjectionKind = "linear"
    proj_bias: bool = False

    def __post_init__(self) -> None:
        _check(len(self.widths) == len(self.depths) >= 1, "widths and depths need the same length >= 1")
        _check(self.norm_groups > 0 and min(self.widths) > 0 and min(self.depths) > 0,
               "norm_groups, widths and depths must be > 0")
        _check(all(w % self.norm_groups == 0 for w in self.widths),
               f"every width must be divisible by norm_groups={self.norm_groups}")
        # The stem halves the size once, every stage after the first halves it again.
        _check(self.image_size % 2 ** len(self.widths) == 0,
               f"image_size must be divisible by {2 ** len(self.widths)} for {len(self.widths)} stages")


@dataclass(frozen=True)
class TextTransformerConfig:
    """A text transformer trained from scratch (CLIP's text tower)."""

    kind: ClassVar[str] = "transformer"
    vocab_size: int
    context_length: int
    transformer: TransformerConfig
    causal: bool = True
    # eot: the first end-of-text token (CLIP); mean: over non-padding tokens; first: token 0.
    pool: Literal["eot", "mean", "first"] = "eot"
    pos_embed: Literal["learned", "sinusoidal", "rotary"] = "learned"
    eot_token_id: int = 2
    proj: ProjectionKind = "linear"
    proj_bias: bool = False

    def __post_init__(self) -> None:
        _check(self.vocab_size > 0 and self.context_length >= 3,
               "vocab_size must be > 0 and context_length >= 3 (start, a token, end)")
        _check(0 <= self.eot_token_id < self.vocab_size, "eot_token_id must be inside the vocabulary")
        _check(self.pool != "first" or not self.causal,
               "pool 'first' needs causal = false: under a causal mask token 0 sees only itself")
        head_dim = self.transformer.width // self.transformer.heads
        _check(self.pos_embed != "rotary" or head_dim % 2 == 0, "rotary embeddings need an even head dim")


@dataclass(frozen=True)
class HFTextConfig:
    """A pretrained Hugging Face text encoder (AutoModel) with mean or first-token pooling."""

    kind: ClassVar[str] = "hf"
    model: str = "all-MiniLM-L6-v2"  # a built-in alias or a local directory
    context_length: int = 64
    pool: Literal["mean", "cls"] = "mean"
    # The transformers config of the backbone, filled in by `resolve()` so that a saved
    # model can be rebuilt without the directory it was first loaded from.
    hf_config: dict[str, Any] | None = None
    proj: ProjectionKind = "linear"
    proj_bias: bool = False

    def __post_init__(self) -> None:
        _check(self.context_length >= 3, "context_length must be >= 3")


# Unions of tower configs; from_dict picks the member by its "kind".
VisionTowerConfig = ViTConfig | ResNetConfig
TextTowerConfig = TextTransformerConfig | HFTextConfig


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes a tensor for the vision tower (see transforms.py)."""

    image_size: int
    resize_size: int | None = None  # shortest side before the centre crop; None = image_size
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    # shortest: resize the shortest side then centre-crop (CLIP); squash: resize to a square.
    resize_mode: Literal["shortest", "squash"] = "shortest"
    background: tuple[int, int, int] = (255, 255, 255)  # transparent pixels are composited on it

    def __post_init__(self) -> None:
        _check(self.image_size > 0, "image_size must be > 0")
        _check(self.resize_size is None or self.resize_size >= self.image_size,
               "resize_size must be >= image_size (the crop)")
        _check(all(s > 0 for s in self.std), "std must be > 0")
        _check(all(0 <= c <= 255 for c in self.background), "background must be 0..255 per channel")


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation; None of it runs at evaluation time."""

    scale: tuple[float, float] = (0.6, 1.0)  # area fraction of random resized crops
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio range of the crops
    hflip: bool = False  # off by default: flipping changes emoji, text and arrows
    brightness: float = 0.0  # colour jitter strengths, as factors in [1-s, 1+s]
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0  # fraction of the hue circle, at most 0.5

    def __post_init__(self) -> None:
        _check(0 < self.scale[0] <= self.scale[1] <= 1, "scale must satisfy 0 < lo <= hi <= 1")
        _check(0 < self.ratio[0] <= self.ratio[1], "ratio must satisfy 0 < lo <= hi")
        _check(min(self.brightness, self.contrast, self.saturation) >= 0, "jitter must be >= 0")
        _check(0 <= self.hue <= 0.5, "hue must be in [0, 0.5]")


@dataclass(frozen=True)
class TokenizerConfig:
    """Padding of tokenized batches. Truncation length is the text tower's context_length."""

    pad_token: str = ""  # "" = the tokenizer's own (<pad> for polymodal's BPE, [PAD] for BERT)
    # longest: pad to the longest text in the batch; exact for causal + eot pooling and
    # for masked mean pooling, and cheaper than max_length.
    padding: Literal["longest", "max_length"] = "longest"


@dataclass(frozen=True)
class DualEncoderConfig:
    """A CLIP-style model: two towers projecting into one `embed_dim` space."""

    embed_dim: int
    vision: VisionTowerConfig
    text: TextTowerConfig
    preprocess: PreprocessConfig
    tokenizer: TokenizerConfig = TokenizerConfig()
    init_logit_scale: float = math.log(1 / 0.07)  # CLIP: temperature 0.07 at init
    max_logit_scale: float = math.log(100)  # CLIP clamps the learned scale to 100
    init_logit_bias: float | None = None  # SigLIP's learned bias (init -10); None = no bias

    def __post_init__(self) -> None:
        _check(self.embed_dim > 0, "embed_dim must be > 0")
        _check(self.vision.image_size == self.preprocess.image_size,
               f"vision.image_size {self.vision.image_size} != preprocess.image_size "
               f"{self.preprocess.image_size}")
        _check(self.init_logit_scale <= self.max_logit_scale, "init_logit_scale exceeds max_logit_scale")


@dataclass(frozen=True)
class FusionConfig:
    """A model that reads image and text together, over a vision tower's tokens.

    cross: ALBEF/BLIP fusion layers (Li et al. 2021, 2022): text self-attention, then
    cross-attention from every text token to the image tokens. single: VisualBERT's single
    stream (Li et al. 2019): text and image tokens in one sequence, told apart by a segment
    embedding, all attending to all."""

    kind: Literal["cross", "single"]
    vocab_size: int
    context_length: int
    image_tokens: int  # the vision tower's token count (class token + patches)
    image_width: int  # the vision tower's token width
    transformer: TransformerConfig
    pad_token_id: int = 0
    mask_token_id: int = 3  # what masked language modelling puts in place of a word (<mask> of train_wordlevel)
    num_answers: int = 0  # VQA answer classes; 0: no VQA head
    tie_word_embeddings: bool = True  # the MLM decoder reuses the token embeddings (BERT)

    def __post_init__(self) -> None:
        _check(self.vocab_size > 0 and self.context_length >= 2, "vocab_size > 0 and context_length >= 2")
        _check(self.image_tokens > 0 and self.image_width > 0, "image_tokens and image_width must be > 0")
        for name in ("pad_token_id", "mask_token_id"):
            _check(0 <= getattr(self, name) < self.vocab_size, f"{name} must be inside the vocabulary")
        _check(self.pad_token_id != self.mask_token_id, "pad and mask tokens must differ")
        _check(self.num_answers >= 0, "num_answers must be >= 0")


@dataclass(frozen=True)
class CaptionerConfig:
    """An image-conditioned text decoder (Show, Attend and Tell with a transformer; the
    captioning half of BLIP/CoCa): causal self-attention over the caption so far, and
    cross-attention to the vision tower's tokens."""

    vision: VisionTowerConfig
    vocab_size: int
    context_length: int
    transformer: TransformerConfig
    preprocess: PreprocessConfig
    pad_token_id: int = 0
    bos_token_id: int = 1  # starts every caption (<sot>)
    eos_token_id: int = 2  # ends it (<eot>)
    tie_word_embeddings: bool = True
    tokenizer: TokenizerConfig = TokenizerConfig()

    def __post_init__(self) -> None:
        _check(self.vocab_size > 0 and self.context_length >= 2, "vocab_size > 0 and context_length >= 2")
        _check(self.vision.image_size == self.preprocess.image_size,
               f"vision.image_size {self.vision.image_size} != preprocess.image_size {self.preprocess.image_size}")
        ids = (self.pad_token_id, self.bos_token_id, self.eos_token_id)
        _check(all(0 <= i < self.vocab_size for i in ids), "pad, bos and eos ids must be inside the vocabulary")
        _check(len(set(ids)) == 3, "pad, bos and eos must be three different tokens")


@dataclass(frozen=True)
class FusionModelConfig:
    """A saved fusion model: its vision tower, its fusion encoder, image preprocessing and,
    for VQA, the answer of each class."""

    vision: VisionTowerConfig
    fusion: FusionConfig
    preprocess: PreprocessConfig
    answers: tuple[str, ...] = ()
    tokenizer: TokenizerConfig = TokenizerConfig()

    def __post_init__(self) -> None:
        _check(self.vision.image_size == self.preprocess.image_size,
               f"vision.image_size {self.vision.image_size} != preprocess.image_size {self.preprocess.image_size}")
        _check(len(self.answers) == self.fusion.num_answers,
               f"{len(self.answers)} answers named for {self.fusion.num_answers} answer classes")


# --------------------------------------------------------------------------- dict I/O


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass `cls` from a JSON-like dict; unknown keys and bad values raise."""
    where = where or cls.__name__
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected an object, got {type(data).__name__}")
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kind = _class_kind(cls)
    if kind is not None and data.get("kind", kind) != kind:
        raise ConfigError(f"{where}: kind {data['kind']!r} does not match {kind!r}")
    unknown = sorted(set(data) - fields - ({"kind"} if kind is not None else set()))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(fields)}")
    hints = get_type_hints(cls)
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items() if k in fields}
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required key is missing
        raise ConfigError(f"{where}: {err}") from None


def from_value(tp: Any, value: Any, where: str) -> Any:
    """`value` checked and converted to type `tp` (a dataclass, a kind-tagged union, ...)."""
    return _coerce(tp, value, where)


def to_dict(config: Any) -> Any:
    """Inverse of `from_dict`: plain JSON types, with `kind` for tower configs."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        out: dict[str, Any] = {}
        if _class_kind(type(config)) is not None:
            out["kind"] = _class_kind(type(config))
        for f in dataclasses.fields(config):
            out[f.name] = to_dict(getattr(config, f.name))
        return out
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, Mapping):
        return {k: to_dict(v) for k, v in config.items()}
    return config


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        tower_kinds = {_class_kind(a): a for a in options}
        if isinstance(value, Mapping) and None not in tower_kinds:
            if value.get("kind") not in tower_kinds:
                raise ConfigError(f"{where}: kind must be one of {sorted(str(k) for k in tower_kinds)}, "
                                  f"got {value.get('kind')!r}")
            return from_dict(tower_kinds[value["kind"]], value, where)
        errors = []
        for option in options:
            try:
                return _coerce(option, value, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError("; ".join(errors))
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected an object, got {type(value).__name__}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(typing.cast(type, tp), value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported config type {tp!r}")  # a bug in this module


def _class_kind(cls: Any) -> str | None:
    """The `kind: ClassVar[str]` that tags a member of a config union (towers, data
    sources); None for other classes, including those with an ordinary `kind` field."""
    if not dataclasses.is_dataclass(cls) or "kind" in {f.name for f in dataclasses.fields(cls)}:
        return None
    kind = getattr(cls, "kind", None)
    return kind if isinstance(kind, str) else None


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
