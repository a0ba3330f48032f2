"""Search backends behind one interface. Each is built from (ids, vectors) of one modality
(plus a training sample mixing both modalities), saved into a folder and loaded back, and
answers top-k inner-product queries, optionally only among `allowed` ids.

    exact    brute force over the codes of any quantiser (fp32 is the reference)
    hnsw     graph search (faiss IndexHNSWFlat / IndexHNSWSQ for fp16 and int8)
    ivfpq    inverted lists of PQ codes (faiss IndexIVFPQ)
    lsh      random-rotation sign hashes, Hamming ranking (faiss IndexLSH)
    binary   sign bits of the vectors themselves, Hamming ranking (faiss IndexBinaryFlat)
    kdtree   scipy's cKDTree on the unit sphere; for small, low-dimensional sets

    backend = make_backend("hnsw", dim, m=32)
    backend.build(ids, vectors, sample)
    scores, found = backend.search(queries, k)  # (q, k) each; found = -1 where fewer than k
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from polymodal.errors import StoreError
from polymodal.index.arrays import load_arrays, save_arrays
from polymodal.index.quantizers import Quantizer, construct, import_faiss, make_quantizer, training_sample
from polymodal.index.topk import check_queries, merge_top_k


def _exact_int64(values: np.ndarray) -> bool:
    """Whether `values` are integers that int64 holds as they are (np.isin compares by value:
    1.5 or 2**64 - 1 must not become an id)."""
    if values.dtype.kind == "i":
        return True
    return values.dtype.kind == "u" and (len(values) == 0 or int(values.max()) < 2**63)


class Backend(ABC):
    name: ClassVar[str] = ""
    # True when `allowed` is applied inside the search (faiss IDSelector, a subset scan);
    # otherwise allowed-id searches over-fetch and filter.
    pushes_filters: ClassVar[bool] = True

    def __init__(self, dim: int, **params: Any) -> None:
        self.dim = dim
        self.params = params
        self.ids = np.empty(0, dtype=np.int64)  # item ids, ascending; position = internal id
        # (the ids it was made for, a table of position by id or None, whether they are unique): `positions`
        self._lookup: tuple[np.ndarray, np.ndarray | None, bool] | None = None

    def build(self, ids: np.ndarray, vectors: np.ndarray, sample: np.ndarray | None = None) -> None:
        order = np.argsort(ids, kind="stable")
        self.ids = np.asarray(ids, dtype=np.int64)[order]
        vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32)[order])
        self._build(vectors, vectors if sample is None else np.ascontiguousarray(sample, dtype=np.float32))

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        queries = check_queries(queries, self.dim)
        k = max(1, int(k))
        if allowed is None:
            scores, positions = self._search(queries, k, None)
        else:
            positions_allowed = self.positions(allowed)
            if len(positions_allowed) == 0:
                return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
            if self.pushes_filters:
                scores, positions = self._search(queries, k, positions_allowed)
            else:
                scores, positions = self._overfetch(queries, k, positions_allowed)
        if positions.shape[1] < k:  # fewer items than k: pad like exact search does
            pad = ((0, 0), (0, k - positions.shape[1]))
            scores, positions = np.pad(scores, pad, constant_values=-np.inf), np.pad(positions, pad, constant_values=-1)
        found = np.where(positions >= 0, self.ids[np.clip(positions, 0, None)], -1)
        scores = np.where(positions >= 0, scores, -np.inf).astype(np.float32)
        return merge_top_k(scores, found, k)

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """The positions, ascending and once each, of those of `ids` this backend holds
        (others are left out). Through a table of position by id where the ids are dense
        (built on first use, at most 2 entries per item), else a binary search of the sorted
        ids: np.isin sorted all of them on every filtered query (15 ms at 1M items)."""
        held = self.ids  # one array throughout, should another thread rebuild meanwhile
        wanted = np.asarray(ids).ravel()
        if len(held) == 0 or len(wanted) == 0:
            return np.empty(0, dtype=np.int64)
        table, unique = self._id_lookup(held)
        if not unique or not _exact_int64(wanted):  # an id at several positions, or ids not int64 as given
            return np.flatnonzero(np.isin(held, wanted))
        wanted = wanted.astype(np.int64, copy=False)
        if table is not None:
            offsets = wanted - held[0]  # a wrapped difference lands outside the table too
            if offsets.min() < 0 or offsets.max() >= len(table):
                offsets = offsets[(offsets >= 0) & (offsets < len(table))]
            found = table[offsets]
            found = found[found >= 0].astype(np.int64)
        else:
            at = np.minimum(np.searchsorted(held, wanted), len(held) - 1)
            found = at[held[at] == wanted]
        if len(found) > 1 and not bool((found[1:] > found[:-1]).all()):
            found = np.unique(found)  # unsorted or repeated ids
        return found

    def _id_lookup(self, held: np.ndarray) -> tuple[np.ndarray | None, bool]:
        lookup = self._lookup
        if lookup is None or lookup[0] is not held:  # built or loaded since
            unique = bool((held[1:] != held[:-1]).all())
            span = int(held[-1]) - int(held[0]) + 1  # Python ints: int64 ids may span more than int64
            table = None
            if unique and span <= 2 * len(held):
                table = np.full(span, -1, dtype=np.int32 if len(held) < 2**31 else np.int64)
                table[held - held[0]] = np.arange(len(held))
            lookup = self._lookup = (held, table, unique)
        return lookup[1], lookup[2]

    def _overfetch(self, queries: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fetch more and more until k allowed results per query (or everything) are found."""
        fetch = min(len(self), max(2 * k, int(math.ceil(2 * k * len(self) / len(allowed)))))
        while True:
            scores, positions = self._search(queries, fetch, None)
            keep = np.isin(positions, allowed)
            if fetch >= len(self) or (keep.sum(axis=1) >= min(k, len(allowed))).all():
                return np.where(keep, scores, -np.inf), np.where(keep, positions, -1)
            fetch = min(len(self), 4 * fetch)

    @abstractmethod
    def _build(self, vectors: np.ndarray, sample: np.ndarray) -> None:
        """Build from vectors sorted by id; `sample` mixes modalities for training."""

    @abstractmethod
    def _search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, positions) for internal positions; `allowed` are positions."""

    def save(self, folder: Path) -> None:
        save_arrays(folder, ids=self.ids)
        self._save(folder)

    @abstractmethod
    def _save(self, folder: Path) -> None:
        """Write the structure (the ids are saved by `save`)."""

    def load(self, folder: Path) -> None:
        self.ids = load_arrays(folder, "ids")["ids"]
        self._load(folder)

    @abstractmethod
    def _load(self, folder: Path) -> None:
        """Read what `_save` wrote."""

    @property
    @abstractmethod
    def nbytes(self) -> int:
        """Bytes of the searchable structure (codes, graph, lists), without the id map."""

    def __len__(self) -> int:
        return len(self.ids)


class ExactBackend(Backend):
    """Brute force over stored codes: one matrix product (or Hamming scan) per block."""

    name = "exact"

    def __init__(self, dim: int, quantizer: str = "fp32", **params: Any) -> None:
        super().__init__(dim, quantizer=quantizer, **params)
        self.quantizer: Quantizer = make_quantizer(quantizer, dim, **params)
        self.codes = np.empty((0, dim), dtype=np.float32)
        self.scan_codes = self.codes  # the codes as the quantiser scans them (scan_layout)

    def _build(self, vectors: np.ndarray, sample: np.ndarray) -> None:
        self.quantizer.train(sample)
        self.codes = self.quantizer.encode(vectors)
        self.scan_codes = self.quantizer.scan_layout(self.codes)

    def _search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if allowed is None:  # positions are the row numbers
            return self.quantizer.top_k(queries, self.scan_codes, None, k)
        return self.quantizer.top_k(queries, self.scan_codes, None, k, rows=allowed)  # read in place

    def _save(self, folder: Path) -> None:
        save_arrays(folder, codes=self.codes)
        self.quantizer.save(folder)

    def _load(self, folder: Path) -> None:
        self.codes = load_arrays(folder, "codes")["codes"]
        self.quantizer.load(folder)
        self.scan_codes = self.quantizer.scan_layout(self.codes)

    @property
    def nbytes(self) -> int:
        return int(self.codes.nbytes)


class _FaissBackend(Backend):
    """Shared save/load/size of backends that wrap one faiss index."""

    index: Any = None
    binary: ClassVar[bool] = False

    def _save(self, folder: Path) -> None:
        faiss = import_faiss()
        write = faiss.write_index_binary if self.binary else faiss.write_index
        write(self.index, str(folder / "faiss.index"))

    def _load(self, folder: Path) -> None:
        faiss = import_faiss()
        read = faiss.read_index_binary if self.binary else faiss.read_index
        path = folder / "faiss.index"
        try:
            self.index = read(str(path))
        except RuntimeError as err:
            raise StoreError(f"{path}: unreadable index ({str(err).splitlines()[-1]}); run "
                             "`polymodal index build`") from None

    @property
    def nbytes(self) -> int:
        faiss = import_faiss()
        serialize = faiss.serialize_index_binary if self.binary else faiss.serialize_index
        return int(len(serialize(self.index)))

    def _selector(self, allowed: np.ndarray | None) -> Any:
        if allowed is None:
            return None
        return import_faiss().IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))


class HNSWBackend(_FaissBackend):
    """Hierarchical navigable small-world graph (Malkov & Yashunin), via faiss. `m` links
    per node, `ef_construction` and `ef_search` candidate-list sizes; `quantizer` fp32
    (IndexHNSWFlat), fp16 or int8 (IndexHNSWSQ)."""

    name = "hnsw"

    def __init__(self, dim: int, m: int = 32, ef_construction: int = 80, ef_search: int = 64,
                 quantizer: str = "fp32") -> None:
        super().__init__(dim, m=m, ef_construction=ef_construction, ef_search=ef_search, quantizer=quantizer)
        if quantizer not in ("fp32", "fp16", "int8"):
            raise StoreError(f"hnsw stores fp32, fp16 or int8 vectors, not {quantizer!r}")
        self.m, self.ef_construction, self.ef_search, self.quantizer = m, ef_construction, ef_search, quantizer

    def _build(self, vectors: np.ndarray, sample: np.ndarray) -> None:
        faiss = import_faiss()
        if self.quantizer == "fp32":
            self.index = faiss.IndexHNSWFlat(self.dim, self.m, faiss.METRIC_INNER_PRODUCT)
        else:
            kind = faiss.ScalarQuantizer.QT_fp16 if self.quantizer == "fp16" else faiss.ScalarQuantizer.QT_8bit
            self.index = faiss.IndexHNSWSQ(self.dim, kind, self.m, faiss.METRIC_INNER_PRODUCT)
            self.index.train(sample)
        self.index.hnsw.efConstruction = self.ef_construction
        self.index.add(vectors)

    def _search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        faiss = import_faiss()
        params = faiss.SearchParametersHNSW(efSearch=max(self.ef_search, k))
        if allowed is not None:
            params.sel = self._selector(allowed)
        scores, positions = self.index.search(queries, min(k, len(self)), params=params)
        return scores, positions


class IVFPQBackend(_FaissBackend):
    """Inverted file with product-quantised residuals (Jégou et al.), via faiss: `nlist`
    coarse centroids (default ~4 sqrt(n)), `m` sub-quantisers of `nbits`, `nprobe` lists
    searched per query. Centroids and codebooks train on the indexed vectors (see _build)."""

    name = "ivfpq"

    def __init__(self, dim: int, nlist: int = 0, m: int = 0, nbits: int = 8, nprobe: int = 16) -> None:
        super().__init__(dim, nlist=nlist, m=m, nbits=nbits, nprobe=nprobe)
        self.nlist, self.nbits, self.nprobe = nlist, nbits, nprobe
        self.m = m or make_quantizer("pq", dim).params["m"]

    def _build(self, vectors: np.ndarray, sample: np.ndarray) -> None:
        faiss = import_faiss()
        nlist = self.nlist or max(1, min(int(4 * math.sqrt(len(vectors))), len(vectors) // 39))
        needed = max(nlist, 2 ** self.nbits)
        if len(vectors) < needed:
            raise StoreError(f"ivfpq needs at least {needed} vectors to train on, this index has {len(vectors)}; "
                             "use the exact or hnsw backend for a collection this small")
        self.nlist = nlist
        self.params["nlist"] = nlist
        # IVF-PQ trains on the indexed vectors, not the mixed sample: coarse centroids from a
        # mix land partly where the other modality lives, their lists stay empty, and a text
        # query probing them finds no images. Measured on the shared-data store (61k images,
        # nprobe 16), text->image recall@10: 0.15 mixed, 0.46 with centroids from images and
        # PQ from the mix, 0.50 with both from images (BENCHMARKS.md).
        coarse = faiss.IndexFlatIP(self.dim)
        self.index = faiss.IndexIVFPQ(coarse, self.dim, nlist, self.m, self.nbits, faiss.METRIC_INNER_PRODUCT)
        self.index.own_fields = True
        coarse.this.disown()  # the IVF index owns its coarse quantiser now
        self.index.train(training_sample([vectors]))
        self.index.add(vectors)

    def _search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        faiss = import_faiss()
        params = faiss.SearchParametersIVF(nprobe=min(self.nprobe, self.index.nlist))
        if allowed is not None:
            params.sel = self._selector(allowed)
        return self.index.search(queries, min(k, len(self)), params=params)


class LSHBackend(_FaissBackend):
    """Locality-sensitive hashing (Charikar's sign random projections) via faiss's
    IndexLSH: `nbits` hash bits after a random rotation, ranked by Hamming distance."""

    name = "lsh"
    pushes_filters = False  # faiss's IndexLSH takes no search parameters

    def __init__(self, dim: int, nbits: int = 0) -> None:
        nbits = nbits or 2 * dim
        super().__init__(dim, nbits=nbits)
        self.nbits = nbits

    def _build(self, vectors: np.ndarray, sample: np.ndarray) -> None:
        faiss = import_faiss()
        self.index = faiss.IndexLSH(self.dim, self.nbits, True, False)  # rotate, no learned thresholds
        self.index.train(sample)
        self.index.add(vectors)

    def _search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        hamming, positions = self.index.search(queries, min(k, len(self)))
        return 1.0 - 2.0 * hamming / self.nbits, positions


class BinaryBackend(_FaissBackend):
    """The vectors' own sign bits (dim/8 bytes each), exhaustive Hamming search with
    faiss's popcount kernels; score = 1 - 2 hamming / dim."""

    name = "binary"
    binary = True

    def _build(self, vectors: np.ndarray, sample: np.ndarray) -> None:
        faiss = import_faiss()
        if self.dim % 8:
            raise StoreError(f"the binary backend needs a dimension divisible by 8, not {self.dim}")
        self.index = faiss.IndexBinaryFlat(self.dim)
        self.index.add(np.packbits(vectors > 0, axis=1))

    def _search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        faiss = import_faiss()
        codes = np.packbits(queries > 0, axis=1)
        params = None if allowed is None else faiss.SearchParameters(sel=self._selector(allowed))
        hamming, positions = self.index.search(codes, min(k, len(self)), params=params)
        return 1.0 - 2.0 * hamming.astype(np.float32) / self.dim, positions


class KDTreeBackend(Backend):
    """scipy's cKDTree on the unit vectors (|a - b|^2 = 2 - 2 a.b, so the nearest are the
    most similar). Exact, and fast only for small, low-dimensional sets: a baseline."""

    name = "kdtree"
    pushes_filters = False

    def __init__(self, dim: int, leafsize: int = 16) -> None:
        super().__init__(dim, leafsize=leafsize)
        self.leafsize = leafsize
        self.vectors = np.empty((0, dim), dtype=np.float32)

    def _build(self, vectors: np.ndarray, sample: np.ndarray) -> None:
        try:
            from scipy.spatial import cKDTree
        except ImportError:
            raise StoreError("the kdtree backend needs scipy: pip install scipy") from None
        self.vectors = vectors
        self.tree = cKDTree(vectors.astype(np.float64), leafsize=self.leafsize)

    def _search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        distances, positions = self.tree.query(queries.astype(np.float64), k=min(k, len(self)))
        distances, positions = distances.reshape(len(queries), -1), positions.reshape(len(queries), -1)
        return (1.0 - distances ** 2 / 2.0).astype(np.float32), positions.astype(np.int64)

    def _save(self, folder: Path) -> None:
        save_arrays(folder, vectors=self.vectors)

    def _load(self, folder: Path) -> None:
        self._build(load_arrays(folder, "vectors")["vectors"], np.empty(0))

    @property
    def nbytes(self) -> int:
        return int(self.vectors.nbytes * 2 + len(self.vectors) * 8)  # float64 copy in the tree + indices


BACKENDS: dict[str, type[Backend]] = {b.name: b for b in (ExactBackend, HNSWBackend, IVFPQBackend, LSHBackend,
                                                        BinaryBackend, KDTreeBackend)}


def make_backend(name: str, dim: int, **params: Any) -> Backend:
    return construct(BACKENDS, "index backend", name, dim, params)
