"""Image captioning: a vision tower and a transformer decoder that cross-attends to its tokens.

    model = Captioner(cfg)                        # cfg: config.CaptionerConfig
    loss = model(pixels, ids, mask)               # teacher forcing: next-token cross-entropy
    captions = model.generate(pixels, beam_size=3, length_penalty=0.6)   # token ids per image

Decoding:
- greedy: the most likely next token until <eos> (batched over images);
- beam search: at each step every live hypothesis is extended by every token, and the
  `beam_size` best extensions by summed log-probability are kept; those ending in <eos>
  leave the beam as finished. The result is the finished hypothesis with the best
  sum(log p) / length ** length_penalty (length counts generated tokens, <eos> included;
  0 disables the penalty, 1 is the per-token mean). With beam_size 1 this is greedy decoding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polymodal.config import CaptionerConfig
from polymodal.models.dual_encoder import build_tower
from polymodal.models.layers import LearnedPositionalEmbedding, Transformer
from polymodal.models.tower import Tower


class Captioner(nn.Module):
    def __init__(self, cfg: CaptionerConfig, vision: Tower | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        width = cfg.transformer.width
        self.vision = vision if vision is not None else build_tower(cfg.vision, width)
        self.image_proj = nn.Sequential(nn.Linear(self.vision.width, width), nn.LayerNorm(width))
        self.token_embed = nn.Embedding(cfg.vocab_size, width)
        self.pos = LearnedPositionalEmbedding(cfg.context_length, width, std=0.02)
        self.decoder = Transformer(cfg.transformer, cross_attention=True)
        self.norm = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, cfg.vocab_size, bias=False)
        nn.init.normal_(self.token_embed.weight, std=0.02)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.token_embed.weight
        self.decoder.init_weights()

    # ----------------------------------------------------------------- teacher forcing

    def encode_image(self, pixels: Tensor) -> Tensor:
        """(B, M, width): the vision tower's tokens in the decoder's width."""
        return self.image_proj(self.vision.forward_features(pixels).tokens)

    def logits(self, ids: Tensor, mask: Tensor | None, memory: Tensor) -> Tensor:
        """(B, L, vocab) next-token logits at every position of `ids`."""
        if ids.shape[1] > self.cfg.context_length:
            raise ValueError(f"{ids.shape[1]} tokens exceed the context length {self.cfg.context_length}")
        x = self.token_embed(ids) + self.pos(ids.shape[1])
        x = self.decoder(x, key_mask=None if mask is None else mask.bool(), causal=True, context=memory)
        return self.lm_head(self.norm(x))

    def forward(self, pixels: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        """Mean cross-entropy of each next token given the image and the tokens before it.
        `ids` hold <bos> caption <eos>, padded on the right (`mask` 0 on padding)."""
        if ids.shape[1] < 2:
            raise ValueError("a caption needs at least <bos> and one more token")
        logits = self.logits(ids[:, :-1], mask[:, :-1], self.encode_image(pixels))
        targets = ids[:, 1:].masked_fill(~mask[:, 1:].bool(), -100)  # padding is not predicted
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)

    # ----------------------------------------------------------------- decoding

    @torch.no_grad()
    def generate(self, pixels: Tensor, max_length: int | None = None, beam_size: int = 1,
                 length_penalty: float = 1.0) -> list[list[int]]:
        """Token ids of one caption per image (without <bos> and <eos>)."""
        max_length = min(max_length or self.cfg.context_length, self.cfg.context_length)
        if beam_size < 1 or max_length < 2:
            raise ValueError("beam_size must be >= 1 and max_length >= 2")
        memory = self.encode_image(pixels)
        if beam_size == 1:
            return self._greedy(memory, max_length)
        return [self._beam(memory[i:i + 1], max_length, beam_size, length_penalty) for i in range(len(memory))]

    def _greedy(self, memory: Tensor, max_length: int) -> list[list[int]]:
        batch = memory.shape[0]
        ids = torch.full((batch, 1), self.cfg.bos_token_id, dtype=torch.long, device=memory.device)
        done = torch.zeros(batch, dtype=torch.bool, device=memory.device)
        for _ in range(max_length - 1):
            next_token = self.logits(ids, None, memory)[:, -1].argmax(dim=-1)
            next_token = next_token.masked_fill(done, self.cfg.pad_token_id)
            ids = torch.cat([ids, next_token[:, None]], dim=1)
            done |= next_token == self.cfg.eos_token_id
            if bool(done.all()):
                break
        return [self._strip(row.tolist()) for row in ids]

    def _beam(self, memory: Tensor, max_length: int, beam_size: int, length_penalty: float) -> list[int]:
        live: list[tuple[float, list[int]]] = [(0.0, [self.cfg.bos_token_id])]
        finished: list[tuple[float, list[int]]] = []
        for _ in range(max_length - 1):
            ids = torch.tensor([seq for _, seq in live], dtype=torch.long, device=memory.device)
            log_probs = self.logits(ids, None, memory.expand(len(live), -1, -1))[:, -1].float().log_softmax(-1)
            totals = torch.tensor([score for score, _ in live], device=memory.device)[:, None] + log_probs
            best = totals.flatten().topk(min(beam_size, totals.numel()))
            extended = []
            for score, flat in zip(best.values.tolist(), best.indices.tolist(), strict=True):
                beam, token = divmod(flat, self.cfg.vocab_size)
                extended.append((score, [*live[beam][1], token]))
            finished += [h for h in extended if h[1][-1] == self.cfg.eos_token_id]
            live = [h for h in extended if h[1][-1] != self.cfg.eos_token_id]
            if not live:
                break
        candidates = finished + live  # live ones reached max_length unfinished

        def normalised(hypothesis: tuple[float, list[int]]) -> float:
            return hypothesis[0] / (len(hypothesis[1]) - 1) ** length_penalty

        return self._strip(max(candidates, key=normalised)[1])

    def _strip(self, ids: list[int]) -> list[int]:
        """Drop <bos>, and <eos> with whatever follows it."""
        out = ids[1:]
        return out[: out.index(self.cfg.eos_token_id)] if self.cfg.eos_token_id in out else out
