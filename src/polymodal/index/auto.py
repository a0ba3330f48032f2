"""Choosing an index under a memory budget, as autofaiss does: the most accurate structure
that fits, preferring exact search while it is cheap.

    choice = choose_index(n=2_000_000, dim=512, budget=parse_bytes("2GB"))
    choice.backend, choice.params   # "hnsw", {"m": 32, "quantizer": "int8"}
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from polymodal.errors import StoreError
from polymodal.index import native

# Exact search while its float32 codes are at most this many bytes: the compiled scan reads
# them at memory speed, 256 MB in about 7 ms on the 2-core reference machine (~37 GB/s,
# bench/search.py), e.g. 125k vectors of 512-d or 250k of 256-d. Without the compiled
# kernels numpy scans about 20 GB/s: 100 MB (50k vectors of 512-d) in ~5 ms.
EXACT_SCAN_BYTES = 256 * 2 ** 20
NUMPY_EXACT_SCAN_BYTES = 100 * 2 ** 20
HNSW_M = 32
ID_BYTES = 8
OVERHEAD = 1.1  # allocator slack, graph upper levels


@dataclass(frozen=True)
class Choice:
    backend: str
    params: dict[str, Any] = field(default_factory=dict)
    estimated_bytes: int = 0
    reason: str = ""


def choose_index(n: int, dim: int, budget: int) -> Choice:
    """The index for `n` vectors of `dim` under `budget` bytes (codes + graph/lists + ids)."""
    exact_limit = EXACT_SCAN_BYTES if native.available() else NUMPY_EXACT_SCAN_BYTES
    if n * 4 * dim <= exact_limit and _fits(n * (4 * dim + ID_BYTES), budget):
        return Choice("exact", {"quantizer": "fp32"}, _size(n * (4 * dim + ID_BYTES)),
                      f"{n} vectors: an exact scan is fast and exact")
    links = 2 * HNSW_M * 4  # level-0 neighbour lists of int32
    # fp16 before fp32: on real text->image vectors (bench/search.py) its recall@10 is within
    # 0.0012 of fp32's at every ef_search, and with half the bytes to fetch per visited
    # node it answers 1.2-1.4x faster. fp32 stays available as --param quantizer=fp32.
    for quantizer, code in (("fp16", 2 * dim), ("int8", dim)):
        size = _size(n * (code + links + ID_BYTES))
        if size <= budget:
            return Choice("hnsw", {"m": HNSW_M, "quantizer": quantizer}, size,
                          f"HNSW over {quantizer} vectors fits ({_human(size)} <= {_human(budget)})")
    nlist = max(1, int(4 * math.sqrt(n)))
    for m in (64, 32, 16, 8):
        if dim % m:
            continue
        size = _size(n * (m + ID_BYTES) + nlist * dim * 4)
        if size <= budget:
            return Choice("ivfpq", {"nlist": nlist, "m": m, "nprobe": 32}, size,
                          f"only compressed codes fit: IVF{nlist},PQ{m} ({_human(size)})")
    raise StoreError(f"{n} vectors of dimension {dim} need at least {_human(_size(n * (8 + ID_BYTES)))}; "
                     f"the memory budget is {_human(budget)}")


def _size(raw: float) -> int:
    return int(raw * OVERHEAD)


def _fits(raw: float, budget: int) -> bool:
    return _size(raw) <= budget


_UNITS = {"": 1, "B": 1, "KB": 2 ** 10, "MB": 2 ** 20, "GB": 2 ** 30, "TB": 2 ** 40}


def parse_bytes(text: str) -> int:
    """"2GB", "512MB", "1.5G", "1000000" -> bytes (binary units)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?B)?\s*", text.upper())
    if not match:
        raise StoreError(f"memory budget {text!r}: write e.g. 2GB, 512MB or a number of bytes")
    unit = match.group(2) + ("B" if match.group(2) else "")
    return int(float(match.group(1)) * _UNITS[unit])


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
