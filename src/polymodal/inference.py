"""Embedding many texts and images with a model: batching, devices, mixed precision, and
the cache of a frozen text backbone's features.

    texts = embed_texts(model, tokenizer, ["a dog", "a cat"])          # (2, E) float32
    cache = TextFeatureCache(model.text, tokenizer, captions)          # frozen text tower
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from polymodal.errors import ConfigError
from polymodal.models.dual_encoder import DualEncoder
from polymodal.models.linear import release
from polymodal.models.tower import Tower
from polymodal.tokenizer import Tokenizer

M = TypeVar("M", bound=torch.nn.Module)


#: what --precision accepts: autocast dtypes, and int8 (`quantise_int8`, CPU only)
PRECISIONS = ("auto", "fp32", "bf16", "int8")


def check_precision(setting: str) -> str:
    if setting not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {setting!r}")
    return setting


def resolve_precision(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for "auto", "bf16" or "fp32" (None = full precision; also for
    "int8", whose model is quantised instead, see `quantise_int8`).

    auto picks bf16 on GPUs that support it. On CPUs it stays fp32, so that results do not
    depend on the machine: bf16 autocast embedded 1.7-2.2x faster than fp32 on an AMD Zen 4
    and was slower on an Intel Xeon whose bf16 matrix multiply ran at half the fp32 rate
    (BENCHMARKS.md), so it is opt-in there.
    """
    if check_precision(setting) in ("fp32", "int8"):
        return None
    if setting == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def quantise_int8(model: M) -> M:
    """`model` with every Linear layer dynamically quantised to int8 (weights stored as
    int8, activations quantised per batch; torch.ao), in place, for inference only.

    On the reference CPU (AVX-512 VNNI) this embeds 1.3-2.4x faster than fp32 at batch 64
    (the most for ViT-B/32, the least for 64-px images), and the embeddings keep a cosine of
    at least 0.996 to fp32's (bench/encoders.py). At batch 1 small models gain little.
    torch's int8 kernels are CPU kernels: a model on a GPU is refused.
    """
    device = model_device(model)
    if device.type != "cpu":
        raise ConfigError(f"--precision int8 runs on the CPU; the model is on {device} (use bf16 there)")
    release(model)  # torch.ao swaps plain nn.Linear layers only
    with warnings.catch_warnings():  # torch.ao's eager quantisation is deprecated for torchao, still shipped
        warnings.simplefilter("ignore")
        quantised: M = torch.ao.quantization.quantize_dynamic(model.eval(), {torch.nn.Linear},
                                                                dtype=torch.qint8, inplace=True)
    return quantised


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


#: texts tokenised together and sorted by length, in batches: enough that batches of
#: similar length form, few enough that the token ids stay small in memory
SORT_WINDOW_BATCHES = 16


def encode_by_length(encode: Callable[[Tensor, Tensor], Tensor], tokenizer: Tokenizer, texts: Sequence[str],
                     batch_size: int, device: torch.device) -> Tensor:
    """`encode(ids, mask)` of every text in batches of similar token length, each cut to its
    longest text, returned in the order of `texts`.

    Batched in their own order, 5,000 Flickr8k captions in batches of 256 pad to 2.25× their
    tokens; sorted by token count within windows of SORT_WINDOW_BATCHES batches, next to
    none. The tokenizer pads on the right and every tower masks padding, so cutting pad
    columns changes no result."""
    if len(texts) == 0:
        return torch.empty(0, device=device)
    out = []
    for window in _batches(len(texts), batch_size * SORT_WINDOW_BATCHES):
        tokens = tokenizer(list(texts[window]))
        lengths = tokens.attention_mask.sum(dim=1)
        order = torch.argsort(lengths, stable=True)
        parts = []
        for rows in _batches(len(order), batch_size):
            chosen = order[rows]
            width = int(lengths[chosen].max())
            parts.append(encode(tokens.input_ids[chosen, :width].to(device),
                                tokens.attention_mask[chosen, :width].to(device)).float())
        out.append(torch.cat(parts)[order.argsort().to(device)])  # back to the caller's order
    return torch.cat(out)


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


@torch.no_grad()
def text_features(tower: Tower, tokenizer: Tokenizer, texts: Sequence[str], batch_size: int = 128,
                  dtype: torch.dtype | None = None) -> Tensor:
    """Pooled (pre-projection) features (N, W) float32 of a text tower. Texts are
    batched by length, so that little compute goes to padding."""
    device = model_device(tower)

    def pooled(ids: Tensor, mask: Tensor) -> Tensor:
        with autocast(device, dtype):
            return tower.pooled_features(ids, mask)

    return encode_by_length(pooled, tokenizer, texts, batch_size, device)


@torch.no_grad()
def embed_texts(model: DualEncoder, tokenizer: Tokenizer, texts: Sequence[str], batch_size: int = 256,
                dtype: torch.dtype | None = None, cache: TextFeatureCache | None = None) -> Tensor:
    """L2-normalised text embeddings (N, E) float32, in the order of `texts` (batched by
    token length inside); with a cache of the frozen text backbone only the projection runs."""
    if cache is not None:
        return F.normalize(model.text.forward_head(cache.lookup_texts(texts)).float(), dim=-1)
    device = model_device(model)

    def embedded(ids: Tensor, mask: Tensor) -> Tensor:
        with autocast(device, dtype):
            return model.encode_text(ids, mask)

    return encode_by_length(embedded, tokenizer, texts, batch_size, device)


class TextFeatureCache:
    """Pooled features of a frozen text backbone, computed once per distinct caption.

    A locked pretrained tower (LiT) gives the same features every epoch, so training
    runs only its projection head on cached features: for MiniLM on 2 CPU cores that
    removes most of the text cost of a step.
    """

    def __init__(self, tower: Tower, tokenizer: Tokenizer, captions: Sequence[str], batch_size: int = 128,
                 dtype: torch.dtype | None = None) -> None:
        unique = list(dict.fromkeys(captions))
        self.index = {text: i for i, text in enumerate(unique)}
        # caption id (position in `captions`) -> row of `features`
        self.rows = torch.tensor([self.index[c] for c in captions], dtype=torch.long)
        self.features = text_features(tower, tokenizer, unique, batch_size, dtype)  # (U, W)
        self.rows = self.rows.to(self.features.device)

    def __len__(self) -> int:
        return len(self.index)

    def lookup(self, caption_ids: Tensor) -> Tensor:
        """(B,) caption ids -> (B, W) features."""
        return self.features[self.rows[caption_ids.to(self.rows.device)]]

    def lookup_texts(self, texts: Sequence[str]) -> Tensor:
        missing = [t for t in texts if t not in self.index]
        if missing:
            raise KeyError(f"{len(missing)} texts are not cached, e.g. {missing[0]!r}")
        return self.features[torch.tensor([self.index[t] for t in texts], device=self.features.device)]

