"""Tokenizers: one wrapper around a `tokenizers.Tokenizer` for every text tower.

- `train_bpe(corpus, vocab_size)` trains a byte-level BPE on captions (GPT-2 style): every
  byte is in the vocabulary, so an unseen word becomes subwords, never an unknown token.
  Texts are wrapped as `<sot> ... <eot>`; the text tower pools at `<eot>`.
- `Tokenizer.from_hf(dir)` takes the fast tokenizer of a Hugging Face model (MiniLM's
  WordPiece, CLIP's BPE) unchanged, so ids match the pretrained weights.

Truncation (to the text tower's context length, special tokens kept) and padding (on the
right, to the longest text or to the context length) are always set explicitly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as Backend
from torch import Tensor

from polymodal.config import DualEncoderConfig, HFTextConfig, TextTransformerConfig, TokenizerConfig
from polymodal.errors import TokenizerError
from polymodal.pretrained import downloads_allowed, resolve_pretrained

PAD, SOT, EOT, MASK, UNK = "<pad>", "<sot>", "<eot>", "<mask>", "<unk>"
_HF_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model",
                       "sentencepiece.bpe.model")
SPECIAL_TOKENS = (PAD, SOT, EOT)  # ids 0, 1, 2: the defaults of TextTransformerConfig


@dataclass
class TokenBatch:
    input_ids: Tensor  # (B, L) int64
    attention_mask: Tensor  # (B, L) int64, 1 for real tokens, padding on the right

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device))

    def __len__(self) -> int:
        return self.input_ids.shape[0]


class Tokenizer:
    """Texts -> `TokenBatch`, truncated to `context_length` and padded as configured."""

    def __init__(self, backend: Backend, context_length: int, config: TokenizerConfig) -> None:
        self.backend = Backend.from_str(backend.to_str())  # a copy: settings below are ours
        self.context_length = context_length
        if not config.pad_token:
            config = dataclasses.replace(config, pad_token=PAD)
        self.config = config
        special = self.backend.post_processor.num_special_tokens_to_add(False) \
            if self.backend.post_processor else 0
        if context_length <= special:
            # tokenizers cannot truncate below its special tokens and would silently not truncate.
            raise TokenizerError(f"context length {context_length} leaves no room next to "
                                 f"{special} special tokens")
        pad_id = self.backend.token_to_id(config.pad_token)
        if pad_id is None:
            raise TokenizerError(f"pad token {config.pad_token!r} is not in the tokenizer's vocabulary")
        self.pad_token_id: int = pad_id
        self.backend.enable_truncation(max_length=context_length)
        length = context_length if config.padding == "max_length" else None
        self.backend.enable_padding(direction="right", pad_id=pad_id, pad_token=config.pad_token,
                                    length=length)

    def __call__(self, texts: str | Sequence[str]) -> TokenBatch:
        if isinstance(texts, str):
            texts = [texts]
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be strings")
        if len(texts) == 0:
            raise ValueError("no texts to tokenize")
        encodings = self.backend.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
        return TokenBatch(ids, mask)

    @property
    def vocab_size(self) -> int:
        return int(self.backend.get_vocab_size(with_added_tokens=True))

    def token_to_id(self, token: str) -> int | None:
        result = self.backend.token_to_id(token)
        return None if result is None else int(result)

    def tokens(self, text: str) -> list[str]:
        """The subword strings of one text, special tokens included."""
        return list(self.backend.encode(text).tokens)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.backend.decode(list(ids), skip_special_tokens=True))

    def save(self, path: str | Path) -> None:
        self.backend.save(str(path))

    @classmethod
    def from_file(cls, path: str | Path, context_length: int, config: TokenizerConfig) -> Tokenizer:
        try:
            backend = Backend.from_file(str(path))
        except Exception as err:  # tokenizers raises plain Exception subclasses
            raise TokenizerError(f"cannot read tokenizer {path}: {err}") from None
        return cls(backend, context_length, config)

    @classmethod
    def from_hf(cls, source: str | Path, context_length: int, config: TokenizerConfig | None = None
                ) -> Tokenizer:
        """The fast tokenizer of a Hugging Face model directory; the pad token is its own
        unless `config` names one."""
        from transformers import AutoTokenizer

        local = Path(source)
        if local.is_dir() and not any((local / name).is_file() for name in _HF_TOKENIZER_FILES):
            # transformers would build an empty tokenizer here and every text would
            # become unknown tokens; refuse instead.
            raise TokenizerError(f"no tokenizer files in {source} (looked for "
                                 f"{', '.join(_HF_TOKENIZER_FILES)})")
        try:
            hf = AutoTokenizer.from_pretrained(str(source), local_files_only=not downloads_allowed())
        except (OSError, ValueError) as err:
            raise TokenizerError(f"no usable tokenizer in {source}: {err}") from None
        backend = getattr(hf, "backend_tokenizer", None)
        if backend is None:
            raise TokenizerError(f"{source} has no fast (tokenizers) tokenizer")
        config = config or TokenizerConfig()
        if not config.pad_token:
            pad = hf.pad_token or hf.eos_token
            if pad is None:
                raise TokenizerError(f"the tokenizer of {source} has no pad or end token")
            config = dataclasses.replace(config, pad_token=str(pad))
        return cls(backend, context_length, config)


def train_bpe(corpus: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Backend:
    """Train a byte-level BPE (Sennrich et al. 2016; GPT-2's byte alphabet) on `corpus`.

    Normalisation: NFKC, lowercase, whitespace collapsed (as CLIP's tokenizer does).
    Special tokens <pad>, <sot>, <eot> get ids 0, 1, 2.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise TokenizerError(f"vocab_size {vocab_size} is smaller than the 256-byte alphabet "
                             f"plus {len(SPECIAL_TOKENS)} special tokens")
    backend = Backend(models.BPE())
    backend.normalizer = normalizers.Sequence([
        normalizers.NFKC(), normalizers.Lowercase(),
        normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(),
    ])
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(corpus, trainer=trainer)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{SOT} $A {EOT}", special_tokens=[(SOT, 1), (EOT, 2)])
    return backend


WORD_SPECIAL_TOKENS = (PAD, SOT, EOT, MASK, UNK)  # ids 0..4


def train_wordlevel(corpus: Iterable[str], min_frequency: int = 1) -> Backend:
    """A word-level vocabulary for templated language (the shapes questions and captions),
    where subwords buy nothing: one id per word and punctuation mark, <unk> for the rest.

    Normalisation as `train_bpe`. Special tokens <pad>, <sot>, <eot>, <mask>, <unk> get
    ids 0-4 (<mask> is what masked language modelling substitutes)."""
    backend = Backend(models.WordLevel(unk_token=UNK))
    backend.normalizer = normalizers.Sequence([
        normalizers.NFKC(), normalizers.Lowercase(),
        normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(),
    ])
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    trainer = trainers.WordLevelTrainer(min_frequency=min_frequency, special_tokens=list(WORD_SPECIAL_TOKENS),
                                        show_progress=False)
    backend.train_from_iterator(corpus, trainer=trainer)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{SOT} $A {EOT}", special_tokens=[(SOT, 1), (EOT, 2)])
    return backend


def check_tokenizer_fits(config: DualEncoderConfig, tokenizer: Tokenizer) -> None:
    """Raise unless `tokenizer` can feed the text tower of `config`: its ids fit the
    embedding table, its context length is the tower's, and (for a from-scratch tower)
    it ends every text with the token the tower pools at."""
    text = config.text
    if isinstance(text, HFTextConfig):
        vocab_size = int((text.hf_config or {}).get("vocab_size", tokenizer.vocab_size))
    else:
        vocab_size = text.vocab_size
    if tokenizer.vocab_size > vocab_size:
        raise TokenizerError(f"tokenizer has {tokenizer.vocab_size} tokens but the text tower "
                             f"embeds only {vocab_size}")
    if tokenizer.context_length != text.context_length:
        raise TokenizerError(f"tokenizer context length {tokenizer.context_length} != text tower "
                             f"context length {text.context_length}")
    if isinstance(text, TextTransformerConfig) and text.pool == "eot":
        tokens = tokenizer("a")
        last = int(tokens.input_ids[0, int(tokens.attention_mask[0].sum()) - 1])
        if last != text.eot_token_id:
            raise TokenizerError(f"tokenizer ends texts with token {last}, but the text tower pools "
                                 f"at end token {text.eot_token_id}")


def pretrained_tokenizer(config: DualEncoderConfig) -> Tokenizer:
    """The tokenizer a model config implies without training: only a pretrained text
    tower has one. From-scratch towers get theirs from `train_bpe` or a model directory."""
    if not isinstance(config.text, HFTextConfig):
        raise TokenizerError(
            "this model's text tower is trained from scratch with its own BPE tokenizer: "
            "train one with polymodal.tokenizer.train_bpe(captions, vocab_size) or load a "
            "model directory, which carries its tokenizer.json")
    source = resolve_pretrained(config.text.model)
    return Tokenizer.from_hf(source, config.text.context_length, config.tokenizer)
