"""Bulk text embedding: many real captions at once, as indexing a captions table or a
retrieval evaluation does. polymodal's `embed_texts` batches captions of similar token
length and cuts each batch to its longest; transformers' CLIPModel gets the same token ids
in the captions' own order, batch by batch, padded to each batch's longest (what
`processor(text=batch, padding=True)` gives).

Captions: the first N of Flickr8k (../shared/data), or generated captions of 5-25 words
where the data is absent. One BPE tokenizer, trained on them, serves both models, so
both embed exactly the same tokens; the model weights are identical (the converter), as
in bench/encoders.py. The tokenizer's end token is renumbered to the models' last id,
where both configs pool, so the two compute the same function: the largest difference
between their normalised embeddings is reported beside the speed. Both run with the
allocator setting of polymodal's command line.

    python bench/text_bulk.py           # writes bench/results/text_bulk.json
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from common import THREADS, interleaved_rates, parse_names, write_result
from encoders import build_pair, clip_configs, peer_features
from tokenizers import Tokenizer as Backend

from polymodal.config import TokenizerConfig
from polymodal.inference import embed_texts
from polymodal.runtime import tune_allocator
from polymodal.tokenizer import EOT, SPECIAL_TOKENS, TokenBatch, Tokenizer, train_bpe

EOT_ID = SPECIAL_TOKENS.index(EOT)

CAPTIONS = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k" / "captions.tsv"
COUNT = {"clip-vit-b-32": 512, "tiny-64": 4096}
BATCH = 256


def captions(count: int) -> tuple[list[str], str]:
    if CAPTIONS.is_file():
        rows = [line.rstrip("\n").split("\t") for line in CAPTIONS.read_text().splitlines()[1:]]
        return [r[-1] for r in rows[:count]], f"the first {count} Flickr8k captions"
    rng = np.random.default_rng(0)
    words = ["a", "dog", "runs", "on", "the", "grass", "with", "ball", "two", "children", "play", "in", "water",
             "man", "red", "shirt", "is", "climbing", "rock", "near", "street"]
    made = [" ".join(rng.choice(words, int(rng.integers(5, 26)))) for _ in range(count)]
    return made, f"{count} generated captions of 5-25 words (no ../shared/data here)"


class EndRenumbered(Tokenizer):
    """Our BPE tokenizer with its end token as `end_id`: CLIP configs pool at the last id of
    their vocabulary, which a small tokenizer never produces."""

    def __init__(self, backend: Backend, context_length: int, end_id: int) -> None:
        super().__init__(backend, context_length, TokenizerConfig())
        self.end_id = end_id

    def __call__(self, texts: str | Sequence[str]) -> TokenBatch:
        tokens = super().__call__(texts)
        return TokenBatch(tokens.input_ids.masked_fill(tokens.input_ids == EOT_ID, self.end_id),
                          tokens.attention_mask)


def measure(name: str, config: Any, count: int) -> dict[str, Any]:
    peer, ours = build_pair(config)
    texts, source = captions(count)
    vocab = min(config.text_config.vocab_size, 4096)
    end_id = config.text_config.vocab_size - 1
    assert ours.config.text.eot_token_id == end_id, "the converter pools CLIP configs at their last id"
    tokenizer = EndRenumbered(train_bpe(texts, vocab), config.text_config.max_position_embeddings, end_id)
    real_tokens = int(tokenizer(texts).attention_mask.sum())

    def peer_in_order() -> list[torch.Tensor]:
        out = []
        for start in range(0, len(texts), BATCH):
            tokens = tokenizer(texts[start:start + BATCH])  # padded to this batch's longest
            out.append(peer_features(peer.get_text_features(input_ids=tokens.input_ids,
                                                        attention_mask=tokens.attention_mask)))
        return out

    with torch.inference_mode():
        expected = F.normalize(torch.cat(peer_in_order()), dim=-1).numpy()
        got = embed_texts(ours, tokenizer, texts, batch_size=BATCH)
    max_abs_diff = float(np.abs(got - expected).max())

    padded_in_order = sum(int(tokenizer(texts[s:s + BATCH]).input_ids.numel()) for s in range(0, len(texts), BATCH))
    tune_allocator(True)
    try:
        with torch.inference_mode():
            rates = interleaved_rates({"peer": peer_in_order,
                                       "ours": lambda: embed_texts(ours, tokenizer, texts, batch_size=BATCH)},
                                      len(texts), rounds=2, seconds=0.1)
    finally:
        tune_allocator(False)
    out = {"captions": source, "count": len(texts), "batch": BATCH, "real_tokens": real_tokens,
           "padded_tokens_in_order": padded_in_order, "peer_texts_per_s": round(rates["peer"], 1),
           "ours_texts_per_s": round(rates["ours"], 1), "ours_over_peer": round(rates["ours"] / rates["peer"], 2),
           "max_abs_diff_normalised": max_abs_diff}
    print(name, out, flush=True)
    return out


def main() -> None:
    configs = clip_configs()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default=",".join(COUNT), help=f"Comma-separated, from: {', '.join(COUNT)}.")
    args = parser.parse_args()
    archs = parse_names(parser, args.arch, COUNT)
    torch.set_num_threads(THREADS)
    results = {"threads": THREADS, "architectures": {name: measure(name, configs[name], COUNT[name])
                                                     for name in archs}}
    print("wrote", write_result("text_bulk", results))


if __name__ == "__main__":
    main()
