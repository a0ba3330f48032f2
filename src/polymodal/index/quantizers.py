"""Vector quantisers: how many bytes a stored vector takes, and how scores are computed
from the codes without decoding the whole collection at once.

    fp32    4 d bytes   the reference
    fp16    2 d bytes   half precision
    int8      d bytes   per-dimension scale calibrated on the data (x_d ~ s_d q_d / 127)
    binary  d/8 bytes   sign bits; score = 1 - 2 hamming / d (a cosine estimate)
    pq        m bytes   product quantisation: m sub-vectors, 256 centroids each (faiss)

Train on a mix of image and text vectors: queries come from the other modality, and a
quantiser fitted to image vectors alone misrepresents where text queries land
(clip-retrieval issue #76).

    q = make_quantizer("int8"); q.train(sample); codes = q.encode(vectors)
    scores = q.scores(queries, codes)          # (nq, n) approximate inner products
    scores, ids = q.top_k(queries, codes, ids, k)   # the k best, sorted (compiled scans where built)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

from polymodal.errors import StoreError
from polymodal.index import native
from polymodal.index.arrays import load_arrays, save_arrays
from polymodal.index.topk import BLOCK_ROWS, exact_top_k, merge_top_k

T = TypeVar("T")

# Up to this many queries, fp32 codes are scanned by the fused kernel (each code read once
# for every query); more queries are one BLAS product per block, which reuses each code
# from cache across all of them (the crossover measured at 200k x 512 on 2 cores: 16).
FLOAT32_FUSED_MAX_QUERIES = 15
# int8: the fused VNNI scan up to this many queries; beyond, two passes (below).
INT8_FUSED_MAX_QUERIES = 64
# The two-pass int8 search ranks this many candidates per result, chosen by int8 x int8
# products, with the float query: rounding the query to int8 moves a score by far less than
# the gap between the k-th result and the 4k+32-th.
INT8_CANDIDATES_PER_RESULT, INT8_EXTRA_CANDIDATES = 4, 32
INT8_BLOCK_ROWS = 1 << 17  # 64 MB of 512-d codes: larger blocks amortise each int8 product's start-up


class Quantizer(ABC):
    name: ClassVar[str] = ""

    def __init__(self, dim: int, **params: Any) -> None:
        self.dim = dim
        self.params = params

    def train(self, sample: np.ndarray) -> None:  # noqa: B027 - a default: stateless quantisers learn nothing
        """Fit to `sample` (n, dim); most quantisers need nothing."""

    @abstractmethod
    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """Vectors (n, dim) -> codes (n, ...)."""

    @abstractmethod
    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Codes -> approximate float32 vectors (n, dim)."""

    def scores(self, queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Approximate inner products (nq, n); the default decodes block by block."""
        out = np.empty((len(queries), len(codes)), dtype=np.float32)
        for start in range(0, len(codes), BLOCK_ROWS):
            out[:, start:start + BLOCK_ROWS] = queries @ self.decode(codes[start:start + BLOCK_ROWS]).T
        return out

    def top_k(self, queries: np.ndarray, codes: np.ndarray, ids: np.ndarray | None, k: int,
              rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k best codes per query by `scores`, as (scores, ids) sorted by score, then id
        (padded with -inf, -1); ids None: the row numbers. `rows`: only those rows of
        `codes` (a filter), ids[i] naming codes[rows[i]] (default: the row). Quantisers with
        a compiled scan override it and read the rows in place; here they are copied.
        `codes` as `encode` made them or as `scan_layout` laid them out."""
        codes, ids = take_rows(codes, ids, rows)
        return exact_top_k(queries, codes, row_ids(codes, ids), k, self.scores)

    def scan_layout(self, codes: np.ndarray) -> np.ndarray:
        """`codes` as `top_k` scans them fastest; kept by the exact backend beside the codes
        it saves, so that no search converts them again. The codes themselves by default."""
        return codes

    @property
    @abstractmethod
    def bytes_per_vector(self) -> float:
        """Bytes one code takes."""

    def save(self, folder: Path) -> None:  # noqa: B027 - stateless quantisers have nothing to save
        """Trained state (nothing for the stateless ones)."""

    def load(self, folder: Path) -> None:  # noqa: B027
        """Restore what `save` wrote."""


class Float32(Quantizer):
    name = "fp32"

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return codes

    def scores(self, queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
        return queries @ codes.T

    def top_k(self, queries: np.ndarray, codes: np.ndarray, ids: np.ndarray | None, k: int,
              rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        if native.available() and len(queries) <= FLOAT32_FUSED_MAX_QUERIES:
            return native.scan_float32(queries, codes, k, ids, rows)
        return super().top_k(queries, codes, ids, k, rows)

    @property
    def bytes_per_vector(self) -> float:
        return 4.0 * self.dim


class Float16(Quantizer):
    name = "fp16"

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        return np.asarray(vectors, dtype=np.float16)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return codes.astype(np.float32)

    @property
    def bytes_per_vector(self) -> float:
        return 2.0 * self.dim


class Int8(Quantizer):
    """Symmetric per-dimension int8: the scale of dimension d is a high percentile of |x_d|
    (not the maximum, so one outlier does not waste the range); values beyond clip."""

    name = "int8"

    def __init__(self, dim: int, percentile: float = 99.9) -> None:
        super().__init__(dim, percentile=percentile)
        self.percentile = percentile
        self.scale = np.ones(dim, dtype=np.float32)

    def train(self, sample: np.ndarray) -> None:
        scale = np.percentile(np.abs(sample), self.percentile, axis=0).astype(np.float32)
        self.scale = np.where(scale > 0, scale, 1.0).astype(np.float32)

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(vectors / self.scale * 127.0), -127, 127).astype(np.int8)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return codes.astype(np.float32) * (self.scale / 127.0)

    def scaled_queries(self, queries: np.ndarray) -> np.ndarray:
        """Queries with the scale folded in: q . (s * c / 127) = (q * s / 127) . c."""
        return np.ascontiguousarray(queries * (self.scale / 127.0), dtype=np.float32)

    def scores(self, queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
        scaled = self.scaled_queries(queries)  # one cast of the codes per block, none of the query
        out = np.empty((len(queries), len(codes)), dtype=np.float32)
        for start in range(0, len(codes), BLOCK_ROWS):
            out[:, start:start + BLOCK_ROWS] = scaled @ codes[start:start + BLOCK_ROWS].astype(np.float32).T
        return out

    def approximate_scores(self, queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """`scores` with the scaled query rounded to int8 as well (one scale per query), so
        the product is int8 x int8 -> int32: the CPU's dot-product instructions (VNNI) read
        the codes as they are stored, with no float copy. For choosing candidates that
        `scores` then ranks exactly (ExactBackend)."""
        scaled = queries * (self.scale / 127.0)
        alpha = np.abs(scaled).max(axis=1, keepdims=True) / 127.0
        alpha = np.where(alpha > 0, alpha, 1.0).astype(np.float32)
        q8 = np.ascontiguousarray(np.rint(scaled / alpha).astype(np.int8).T)  # (d, queries)
        try:
            products = torch._int_mm(torch.from_numpy(codes), torch.from_numpy(q8)).numpy()
        except (AttributeError, RuntimeError):  # a torch without the int8 kernel: exact, slower
            products = codes.astype(np.int32) @ q8.astype(np.int32)
        return (products.T * alpha).astype(np.float32)

    def top_k(self, queries: np.ndarray, codes: np.ndarray, ids: np.ndarray | None, k: int,
              rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        if native.available() and len(queries) <= INT8_FUSED_MAX_QUERIES:
            return native.scan_int8(self.scaled_queries(queries), codes, k, ids, rows)
        codes, ids = take_rows(codes, ids, rows)  # the two passes below index rows themselves
        fetch = INT8_CANDIDATES_PER_RESULT * k + INT8_EXTRA_CANDIDATES
        if len(codes) <= fetch:
            return super().top_k(queries, codes, ids, k)
        # two passes: int8 x int8 products pick candidate rows, the float query ranks them
        _, candidates = exact_top_k(queries, codes, np.arange(len(codes)), fetch, self.approximate_scores,
                                    block_rows=INT8_BLOCK_ROWS)
        ids = row_ids(codes, ids)
        found = [merge_top_k(self.scores(q[None], codes[rows[rows >= 0]]), ids[rows[rows >= 0]], k)
                 for q, rows in zip(queries, candidates, strict=True)]
        return np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found])

    @property
    def bytes_per_vector(self) -> float:
        return float(self.dim)

    def save(self, folder: Path) -> None:
        save_arrays(folder, int8_scale=self.scale)

    def load(self, folder: Path) -> None:
        self.scale = load_arrays(folder, "int8_scale")["int8_scale"]


def take_rows(codes: np.ndarray, ids: np.ndarray | None, rows: np.ndarray | None
              ) -> tuple[np.ndarray, np.ndarray | None]:
    """A copy of the `rows` of `codes` (a filter; all of them where None), and their ids:
    `ids`, or the rows themselves."""
    if rows is None:
        return codes, ids
    return codes[rows], (rows if ids is None else ids)


def row_ids(codes: np.ndarray, ids: np.ndarray | None) -> np.ndarray:
    """`ids`, or the row numbers where None (the compiled scans need no array for those: an
    arange of a million ids is 8 MB written per query)."""
    return np.arange(len(codes), dtype=np.int64) if ids is None else ids


def _as_words(codes: np.ndarray) -> np.ndarray:
    """Packed bits as uint64 words (zero-padded to a multiple of 8 bytes: zeros XOR to 0);
    words already (`Binary.scan_layout`) are returned as they are."""
    if codes.dtype == np.uint64:
        return np.ascontiguousarray(codes)
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    pad = -codes.shape[1] % 8
    if pad:
        codes = np.pad(codes, ((0, 0), (0, pad)))
    return codes.view(np.uint64)


BINARY_BLOCK = 16384  # codes scanned per step: 128 KiB of XOR at 512 bits, within L2


class Binary(Quantizer):
    """Sign bits, packed 8 per byte. Hamming distance h between signs estimates the angle
    (theta ~ pi h / d); 1 - 2 h / d is monotone in it, so it ranks like the cosine."""

    name = "binary"

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        return np.packbits(np.asarray(vectors) > 0, axis=1)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        signs = np.unpackbits(codes, axis=1, count=self.dim).astype(np.float32) * 2.0 - 1.0
        return signs / np.sqrt(self.dim)

    def scores(self, queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
        query_codes = _as_words(self.encode(queries))
        words = _as_words(codes)  # XOR and popcount 8 bytes at a time (numpy's bitwise_count)
        out = np.empty((len(queries), len(codes)), dtype=np.float32)
        # Block by block into reused buffers: one XOR of a million codes would allocate (and
        # page-fault in) 64 MB per query; blocks that stay in cache scan 1.5x faster.
        xor = np.empty((min(BINARY_BLOCK, len(words)), words.shape[1]), dtype=np.uint64)
        counts = np.empty(xor.shape, dtype=np.uint8)
        for start in range(0, len(words), BINARY_BLOCK):
            block = words[start:start + BINARY_BLOCK]
            rows = len(block)
            for n, code in enumerate(query_codes):
                np.bitwise_xor(block, code, out=xor[:rows])
                np.bitwise_count(xor[:rows], out=counts[:rows])
                hamming = counts[:rows].sum(axis=1, dtype=np.int32)
                out[n, start:start + rows] = 1.0 - 2.0 * hamming / self.dim
        return out

    def top_k(self, queries: np.ndarray, codes: np.ndarray, ids: np.ndarray | None, k: int,
              rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        if not native.available():
            return super().top_k(queries, codes, ids, k, rows)
        negated, found = native.scan_hamming(_as_words(self.encode(queries)), _as_words(codes), k, ids, rows)
        # -hamming -> 1 - 2 h / d, in float64 then rounded once, as `scores` computes it
        return (1.0 + 2.0 * negated.astype(np.float64) / self.dim).astype(np.float32), found

    def scan_layout(self, codes: np.ndarray) -> np.ndarray:
        """uint64 words: a view of the codes where their width is a multiple of 64 bits, a
        padded copy otherwise (made once, not on every search)."""
        return _as_words(codes)

    @property
    def bytes_per_vector(self) -> float:
        return self.dim / 8.0


class ProductQuantizer(Quantizer):
    """faiss's ProductQuantizer: `m` sub-vectors of dim/m, 2^nbits centroids each;
    scores by asymmetric distance (exact query, quantised database)."""

    name = "pq"

    def __init__(self, dim: int, m: int = 0, nbits: int = 8) -> None:
        m = m or _default_pq_m(dim)
        if dim % m:
            raise StoreError(f"pq: m={m} must divide the dimension {dim}")
        super().__init__(dim, m=m, nbits=nbits)
        self.m, self.nbits = m, nbits
        faiss = import_faiss()
        self.pq = faiss.ProductQuantizer(dim, m, nbits)
        self.trained = False

    def train(self, sample: np.ndarray) -> None:
        needed = 2 ** self.nbits
        if len(sample) < needed:
            raise StoreError(f"pq needs at least {needed} training vectors, the store has {len(sample)}; "
                             "use fewer bits or another quantiser")
        self.pq.train(np.ascontiguousarray(sample, dtype=np.float32))
        self.trained = True

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        return self.pq.compute_codes(np.ascontiguousarray(vectors, dtype=np.float32))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return self.pq.decode(np.ascontiguousarray(codes))

    @property
    def bytes_per_vector(self) -> float:
        return self.m * self.nbits / 8.0

    def save(self, folder: Path) -> None:
        faiss = import_faiss()
        save_arrays(folder, pq_centroids=faiss.vector_to_array(self.pq.centroids))

    def load(self, folder: Path) -> None:
        faiss = import_faiss()
        centroids = load_arrays(folder, "pq_centroids")["pq_centroids"]
        faiss.copy_array_to_vector(centroids.astype(np.float32), self.pq.centroids)
        self.trained = True


def _default_pq_m(dim: int) -> int:
    """Sub-vectors of 4-8 dimensions: m = dim/8 rounded to a divisor (64 for 512-d)."""
    for m in range(max(1, dim // 8), dim + 1):
        if dim % m == 0:
            return m
    return dim


QUANTIZERS: dict[str, type[Quantizer]] = {q.name: q for q in (Float32, Float16, Int8, Binary, ProductQuantizer)}


def make_quantizer(name: str, dim: int, **params: Any) -> Quantizer:
    return construct(QUANTIZERS, "quantizer", name, dim, params)


def construct(registry: dict[str, type[T]], kind: str, name: str, dim: int, params: dict[str, Any]) -> T:
    """registry[name](dim, **params), with errors that name the choices or the bad parameters."""
    try:
        cls = registry[name]
    except KeyError:
        raise StoreError(f"unknown {kind} {name!r}; one of {sorted(registry)}") from None
    try:
        return cls(dim, **params)  # type: ignore[call-arg]
    except TypeError as err:
        raise StoreError(f"{kind} {name!r}: bad parameters {sorted(params)} ({err})") from None


def import_faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise StoreError("this index needs faiss: pip install 'polymodal[index]' (faiss-cpu)") from None
    return faiss


def training_sample(parts: list[np.ndarray], size: int = 65_536, seed: int = 0) -> np.ndarray:
    """Up to `size` vectors drawn evenly from each part (image and text vectors), so that
    neither modality dominates what the quantiser learns."""
    parts = [p for p in parts if len(p)]
    if not parts:
        raise StoreError("no vectors to train the quantiser on")
    rng = np.random.default_rng(seed)
    share = max(1, size // len(parts))
    picked = [p[rng.choice(len(p), share, replace=False)] if len(p) > share else p for p in parts]
    return np.ascontiguousarray(np.concatenate(picked), dtype=np.float32)
