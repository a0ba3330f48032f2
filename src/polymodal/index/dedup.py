"""Duplicate and near-duplicate images, found from the store's embeddings.

Identical files share one vector (content-keyed), so they are grouped at similarity 1;
near duplicates (re-encoded, resized, lightly edited) have cosine similarity above a
threshold. Pairs come from each image's nearest neighbours (exact search, blockwise) and
are joined into groups with union-find, so A~B and B~C put A, B and C together.

    groups = find_duplicates("photos.pm", threshold=0.95)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from polymodal.errors import DataError
from polymodal.index.store import Store
from polymodal.index.topk import exact_top_k

NEIGHBOURS = 16  # per image; a group larger than this is still joined through its members
QUERY_BLOCK = 1024


@dataclass(frozen=True)
class DuplicateGroup:
    ids: tuple[int, ...]
    uris: tuple[str, ...]
    min_similarity: float  # the weakest link that joined the group


def find_duplicates(store_path: str | Path, threshold: float = 0.95) -> list[DuplicateGroup]:
    """Groups of two or more images whose embeddings are at least `threshold` similar;
    largest groups first."""
    if not 0 < threshold <= 1:
        raise DataError(f"threshold must be in (0, 1], got {threshold}")
    with Store(store_path) as store:
        ids, vectors = store.live_vectors("image")
        uris = {item.id: item.uri for item in store.live_items("image")}
    parent = np.arange(len(ids))
    weakest: dict[int, float] = {}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    positions = np.arange(len(ids))
    for start in range(0, len(ids), QUERY_BLOCK):
        scores, found = exact_top_k(vectors[start:start + QUERY_BLOCK], vectors, positions, min(NEIGHBOURS, len(ids)))
        for row, (row_scores, row_found) in enumerate(zip(scores, found, strict=True)):
            i = start + row
            for score, j in zip(row_scores, row_found, strict=True):
                if j < 0 or j == i or score < threshold - 1e-6:
                    continue
                a, b = root(i), root(int(j))
                if a != b:
                    parent[max(a, b)] = min(a, b)
                    weakest[min(a, b)] = min(weakest.get(a, 1.0), weakest.get(b, 1.0), float(score))
    members: dict[int, list[int]] = {}
    for i in range(len(ids)):
        members.setdefault(root(i), []).append(i)
    groups = [DuplicateGroup(tuple(int(ids[m]) for m in group), tuple(uris[int(ids[m])] for m in group),
                             round(min(weakest.get(r, 1.0), 1.0), 6))
              for r, group in members.items() if len(group) > 1]
    return sorted(groups, key=lambda g: (-len(g.ids), g.ids))
