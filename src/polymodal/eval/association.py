"""Association tests for social bias in embeddings.

WEAT (Caliskan, Bryson & Narayanan, Science 2017): do target words X associate more with
attribute words A than B, compared with targets Y? For a word w,
    s(w, A, B) = mean_a cos(w, a) - mean_b cos(w, b)
the effect size is (mean_x s(x) - mean_y s(y)) / std_{w in X u Y} s(w) (Cohen's d; the
sample standard deviation), and the one-sided p-value is the fraction of equal-size
re-partitions (X_i, Y_i) of X u Y whose statistic sum_x s - sum_y s exceeds the observed
one: exact when there are few partitions, sampled otherwise.
SEAT (May et al. 2019) puts each word in bleached sentences ("This is a rose.").
iEAT (Steed & Caliskan 2021): the targets are images, here emoji rendered from the
system font or a folder of the user's, against text attribute words.

Built-in tests (word lists from Caliskan et al.) ship in association_tests.json and
association_words.json; a user's JSON file of the same form adds their own.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from itertools import combinations
from math import comb
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polymodal.data.records import ImageRef
from polymodal.data.sources import image_files
from polymodal.data.tables import read_table
from polymodal.errors import DataError
from polymodal.eval.embed import Progress, embed_images
from polymodal.eval.report import Evaluation, Plot
from polymodal.inference import embed_texts
from polymodal.models.dual_encoder import DualEncoder
from polymodal.tokenizer import Tokenizer
from polymodal.transforms import ImageTransform

PRIMARY_METRIC = "mean_abs_effect_size"  # lower means fewer measured associations
SEAT_TEMPLATES = ("This is {}.", "That is {}.", "There is {}.", "Here is {}.", "{} is here.", "{} is there.",
                  "This is a {}.", "That is a {}.")
_CHUNK = 2000  # sampled partitions handled per numpy step


# --------------------------------------------------------------------------- the statistics


def differential_association(targets: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """s(w, A, B) for every row w of `targets`; rows are L2-normalised embeddings.
    Computed in float64: the permutation test compares sums of these that are equal in
    exact arithmetic, and float32 rounding would break such ties at random."""
    targets, a, b = (np.asarray(m, dtype=np.float64) for m in (targets, a, b))
    return (targets @ a.T).mean(axis=1) - (targets @ b.T).mean(axis=1)


def effect_size(s_x: np.ndarray, s_y: np.ndarray) -> float:
    """Cohen's d of the associations of X against those of Y (0 when all are equal)."""
    spread = float(np.std(np.concatenate([s_x, s_y]), ddof=1))
    return 0.0 if spread == 0 else float((s_x.mean() - s_y.mean()) / spread)


@dataclass(frozen=True)
class PermutationTest:
    p_value: float
    partitions: int  # re-partitions compared
    exact: bool  # all of them (True) or a random sample


def permutation_p_value(s_x: np.ndarray, s_y: np.ndarray, max_partitions: int = 100_000,
                        seed: int = 0) -> PermutationTest:
    """One-sided: P(statistic of a random equal-size re-partition >= the observed one).

    Exact over all C(|X|+|Y|, |X|) partitions when that is at most `max_partitions`
    (the observed partition is one of them, so p >= 1 / C); otherwise over
    `max_partitions` random ones as (b + 1) / (m + 1) (Phipson & Smyth 2010). Both are
    valid p-values of the same test, and neither can be 0.
    """
    values = np.concatenate([s_x, s_y]).astype(np.float64)
    if not np.isfinite(values).all():
        raise DataError("association test: the embeddings contain NaN or infinite values")
    n, size = len(values), len(s_x)
    observed = values[:size].sum()
    # sum_Xi s - sum_Yi s = 2 sum_Xi s - total, so comparing sum_Xi s suffices; the
    # tolerance keeps rounding from splitting partitions whose sums are equal.
    threshold = observed - 1e-9 * max(1.0, float(np.abs(values).sum()))
    total = comb(n, size)
    if total <= max_partitions:
        at_least = sum(int((values[list(c)].sum(axis=1) >= threshold).sum()) for c in _combination_chunks(n, size))
        return PermutationTest(at_least / total, total, True)
    rng = np.random.default_rng(seed)
    at_least, done = 0, 0
    while done < max_partitions:
        count = min(_CHUNK, max_partitions - done)
        chosen = rng.random((count, n)).argsort(axis=1)[:, :size]
        at_least += int((values[chosen].sum(axis=1) >= threshold).sum())
        done += count
    return PermutationTest((at_least + 1) / (max_partitions + 1), max_partitions, False)


def _combination_chunks(n: int, size: int) -> Iterator[list[tuple[int, ...]]]:
    chunk: list[tuple[int, ...]] = []
    for c in combinations(range(n), size):
        chunk.append(c)
        if len(chunk) == _CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass(frozen=True)
class AssociationResult:
    effect_size: float
    p_value: float
    partitions: int
    exact: bool


def association_test(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray, max_partitions: int = 100_000,
                     seed: int = 0) -> AssociationResult:
    """WEAT on embeddings: targets x, y against attributes a, b (rows L2-normalised)."""
    for name, rows in (("X", x), ("Y", y), ("A", a), ("B", b)):
        if len(rows) < 2:
            raise DataError(f"association test: set {name} needs at least 2 members, got {len(rows)}")
        if not np.isfinite(rows).all():
            raise DataError(f"association test: the embeddings of set {name} contain NaN or infinite values "
                            "(a diverged model, or bf16 overflow: try --precision fp32)")
    s_x, s_y = differential_association(x, a, b), differential_association(y, a, b)
    test = permutation_p_value(s_x, s_y, max_partitions, seed)
    return AssociationResult(effect_size(s_x, s_y), test.p_value, test.partitions, test.exact)


# --------------------------------------------------------------------------- test definitions


@dataclass(frozen=True)
class TargetSet:
    name: str
    words: tuple[str, ...] = ()  # text targets (WEAT / SEAT)
    emoji: str = ""  # a regular expression over built-in emoji names (iEAT)
    images: str = ""  # a folder of images (iEAT)


@dataclass(frozen=True)
class TestSpec:
    name: str
    x: TargetSet
    y: TargetSet
    a: TargetSet
    b: TargetSet
    reference: str = ""

    @property
    def is_image_test(self) -> bool:
        return any(t.emoji or t.images for t in (self.x, self.y))


def builtin_tests() -> dict[str, TestSpec]:
    return parse_tests(_package_json("association_tests.json"), _package_json("association_words.json"), "built-in")


def _package_json(name: str) -> dict[str, Any]:
    return json.loads(resources.files("polymodal.eval").joinpath(name).read_text())


def load_tests(spec: str) -> dict[str, TestSpec]:
    """"all", built-in test names (comma-separated), or a JSON file of tests (which may
    name built-in word lists as attributes)."""
    available = builtin_tests()
    if spec == "all":
        return available
    path = Path(spec)
    if path.suffix == ".json":
        if not path.is_file():
            raise DataError(f"{spec}: no such file")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"{spec}: invalid JSON ({err})") from None
        return parse_tests(data, _package_json("association_words.json"), spec)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in available]
    if unknown or not names:
        raise DataError(f"unknown association test(s) {unknown}; built-in: {sorted(available)} "
                        "(or 'all', or a .json file)")
    return {n: available[n] for n in names}


def parse_tests(data: Any, words: dict[str, list[str]], where: str) -> dict[str, TestSpec]:
    if not isinstance(data, dict) or not data:
        raise DataError(f"{where}: expected an object of named tests")
    tests = {}
    for name, test in data.items():
        here = f"{where}: test {name!r}"
        if not isinstance(test, dict) or set(test) - {"targets", "attributes", "reference"}:
            raise DataError(f"{here}: needs 'targets' and 'attributes' (and optionally 'reference')")
        targets, attributes = test.get("targets"), test.get("attributes")
        if not (isinstance(targets, list) and len(targets) == 2 and isinstance(attributes, list)
                and len(attributes) == 2):
            raise DataError(f"{here}: 'targets' and 'attributes' must each list two sets")
        x, y = (_target(t, words, here) for t in targets)
        a, b = (_target(t, words, here) for t in attributes)
        if a.emoji or a.images or b.emoji or b.images:
            raise DataError(f"{here}: attributes must be words")
        tests[name] = TestSpec(name, x, y, a, b, str(test.get("reference", "")))
    return tests


def _target(item: Any, words: dict[str, list[str]], where: str) -> TargetSet:
    if isinstance(item, str):  # the name of a shipped word list
        if item not in words:
            raise DataError(f"{where}: no word list {item!r}; shipped lists: {sorted(words)}")
        return TargetSet(item, tuple(words[item]))
    if not isinstance(item, dict) or "name" not in item:
        raise DataError(f"{where}: a set is a word-list name or an object with 'name' and one of "
                        "'words', 'emoji', 'images'")
    kinds = [k for k in ("words", "emoji", "images") if k in item]
    if len(kinds) != 1 or set(item) - {"name", *kinds}:
        raise DataError(f"{where}: set {item.get('name')!r} needs exactly one of 'words', 'emoji', 'images'")
    if kinds == ["words"]:
        if not isinstance(item["words"], list) or not all(isinstance(w, str) for w in item["words"]):
            raise DataError(f"{where}: set {item['name']!r}: 'words' must be a list of strings")
        return TargetSet(str(item["name"]), words=tuple(item["words"]))
    if kinds == ["emoji"]:
        return TargetSet(str(item["name"]), emoji=str(item["emoji"]))
    return TargetSet(str(item["name"]), images=str(item["images"]))


# --------------------------------------------------------------------------- running tests on a model


def _emoji_images(pattern: str, emoji_root: Path | None) -> list[ImageRef]:
    from polymodal.data.builtin.emoji import ensure_emoji_dataset

    root = ensure_emoji_dataset(emoji_root)
    regex = re.compile(pattern)
    return [ImageRef(str(root / row["image"])) for row in read_table(root / "captions.jsonl")
            if regex.search(row["name"])]


def _folder_images(folder: str) -> list[ImageRef]:
    path = Path(folder)
    if not path.is_dir():
        raise DataError(f"{folder}: no such image folder")
    return [ImageRef(str(p)) for p in image_files(path)]


class _Embedder:
    def __init__(self, model: DualEncoder, tokenizer: Tokenizer, transform: ImageTransform, sentences: bool,
                 dtype: torch.dtype | None, emoji_root: Path | None, progress: Progress | None) -> None:
        self.model, self.tokenizer, self.transform = model, tokenizer, transform
        self.sentences, self.dtype, self.emoji_root, self.progress = sentences, dtype, emoji_root, progress
        self.skipped: list[tuple[str, str]] = []

    def __call__(self, target: TargetSet) -> np.ndarray:
        if target.words:
            texts = [t.format(w) for w in target.words for t in SEAT_TEMPLATES] if self.sentences \
                else list(target.words)
            return embed_texts(self.model, self.tokenizer, texts, dtype=self.dtype).cpu().numpy()
        refs = _emoji_images(target.emoji, self.emoji_root) if target.emoji else _folder_images(target.images)
        if not refs:
            raise DataError(f"target set {target.name!r} selects no images")
        embedded = embed_images(self.model, refs, self.transform, dtype=self.dtype, progress=self.progress)
        self.skipped += embedded.skipped
        return embedded.embeds


def evaluate_association(model: DualEncoder, tokenizer: Tokenizer, transform: ImageTransform,
                         tests: dict[str, TestSpec], sentences: bool = False, max_partitions: int = 100_000,
                         seed: int = 0, dtype: torch.dtype | None = None, emoji_root: Path | None = None,
                         progress: Progress | None = None) -> Evaluation:
    """Effect size and p-value of every test; the primary metric is their mean |d|."""
    start = time.perf_counter()
    embed = _Embedder(model, tokenizer, transform, sentences, dtype, emoji_root, progress)
    metrics: dict[str, float] = {}
    rows = []
    reserved = PRIMARY_METRIC.removesuffix("_effect_size")
    if reserved in tests:
        raise DataError(f"a test may not be named {reserved!r}: {PRIMARY_METRIC} is the summary metric")
    for name, test in tests.items():
        x, y, a, b = (embed(t) for t in (test.x, test.y, test.a, test.b))
        result = association_test(x, y, a, b, max_partitions, seed)
        metrics[f"{name}_effect_size"] = result.effect_size
        metrics[f"{name}_p_value"] = result.p_value
        rows.append({"test": name, "kind": "iEAT" if test.is_image_test else ("SEAT" if sentences else "WEAT"),
                     "X": f"{test.x.name} ({len(x)})", "Y": f"{test.y.name} ({len(y)})",
                     "A": f"{test.a.name} ({len(a)})", "B": f"{test.b.name} ({len(b)})",
                     "effect size d": result.effect_size, "p": result.p_value,
                     "partitions": f"{result.partitions}{'' if result.exact else ' sampled'}",
                     "reference": test.reference})
    metrics[PRIMARY_METRIC] = float(np.mean([abs(metrics[f"{n}_effect_size"]) for n in tests]))
    return Evaluation(
        task="weat", metrics=metrics, primary_metric=PRIMARY_METRIC,
        info={"tests": len(tests), "sentences": sentences, "seed": seed,
              "seconds": round(time.perf_counter() - start, 1)},
        skipped=embed.skipped, tables={"Association tests (d > 0: X is closer to A than Y is)": rows},
        plots=[Plot("association", "Effect sizes", {"tests": list(tests),
                                                      "effect_sizes": [metrics[f"{n}_effect_size"] for n in tests],
                                                      "p_values": [metrics[f"{n}_p_value"] for n in tests]})],
        metric_groups={name: [f"{name}_effect_size", f"{name}_p_value"] for name in tests}
        | {"summary": [PRIMARY_METRIC]})


def describe_tests(tests: dict[str, TestSpec]) -> list[tuple[str, str, str]]:
    """(name, "X vs Y / A vs B", reference) of each test, for `--list`."""
    return [(n, f"{t.x.name} vs {t.y.name} / {t.a.name} vs {t.b.name}", t.reference) for n, t in tests.items()]

