"""Bulk text embedding: many real captions at once, as indexing a captions table or a
retrieval evaluation does. polymodal's `embed_texts` batches captions of similar token
length and cuts each batch to its longest; transformers' CLIPModel gets the same token ids
in the captions' own order, batch by batch, padded to each batch's longest (what
`processor(text=batch, padding=True)` gives).

Captions: the first N of Flickr8k (../shared/data), or generated captions of 5-25 words
where the data is absent. One BPE tokenizer, trained on them, serves both models, so
both embed exactly the same tokens; the model weights are identical (the converter), as
in bench/encoders.py. Both run with the allocator setting of polymodal's command line.
The peer pools where its config's end token would be (our small tokenizer ends texts
with another id), so the two compute the same amount, not the same function: this is a
throughput comparison, and agreement is bench/encoders.py's job.

    python bench/text_bulk.py           # writes bench/results/text_bulk.json
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import THREADS, interleaved_rates, write_result
from encoders import build_pair, clip_configs

from polymodal.config import TokenizerConfig
from polymodal.inference import embed_texts
from polymodal.runtime import tune_allocator
from polymodal.tokenizer import Tokenizer, train_bpe

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


def measure(name: str, config: Any, count: int) -> dict[str, Any]:
    peer, ours = build_pair(config)
    texts, source = captions(count)
    vocab = min(config.text_config.vocab_size, 4096)
    tokenizer = Tokenizer(train_bpe(texts, vocab), config.text_config.max_position_embeddings, TokenizerConfig())
    real_tokens = int(tokenizer(texts).attention_mask.sum())

    def peer_in_order() -> None:
        for start in range(0, len(texts), BATCH):
            tokens = tokenizer(texts[start:start + BATCH])  # padded to this batch's longest
            peer.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)

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
           "ours_texts_per_s": round(rates["ours"], 1), "ours_over_peer": round(rates["ours"] / rates["peer"], 2)}
    print(name, out, flush=True)
    return out


def main() -> None:
    configs = clip_configs()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default=",".join(COUNT), help=f"Comma-separated, from: {', '.join(COUNT)}.")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    results = {"threads": THREADS, "architectures": {name: measure(name, configs[name], COUNT[name])
                                                     for name in args.arch.split(",")}}
    print("wrote", write_result("text_bulk", results))


if __name__ == "__main__":
    main()
