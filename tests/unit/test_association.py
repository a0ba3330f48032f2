"""WEAT statistics on constructed embeddings with known effect sizes and p-values."""

import numpy as np
import pytest

from polymodal.errors import DataError
from polymodal.eval.association import (
    association_test,
    differential_association,
    effect_size,
    permutation_p_value,
)


def _unit(*rows: list[float]) -> np.ndarray:
    array = np.array(rows, dtype=float)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def test_differential_association_and_effect_size_by_hand() -> None:
    a, b = _unit([1, 0], [1, 0]), _unit([0, 1], [0, 1])
    targets = _unit([1, 0], [0, 1], [1, 1])
    assert differential_association(targets, a, b) == pytest.approx([1.0, -1.0, 0.0])
    # s_x = [1, 2], s_y = [0, 1]: d = (1.5 - 0.5) / std([1, 2, 0, 1], ddof=1)
    assert effect_size(np.array([1.0, 2.0]), np.array([0.0, 1.0])) == pytest.approx(1 / np.std([1, 2, 0, 1], ddof=1))
    assert effect_size(np.ones(3), np.ones(3)) == 0.0


def _biased_sets(n: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """X near A, Y near B in 8 dimensions, with a little noise."""
    base = np.eye(8)
    noisy = lambda axis, k: base[axis] + 0.05 * rng.normal(size=(k, 8))  # noqa: E731
    norm = lambda m: m / np.linalg.norm(m, axis=1, keepdims=True)  # noqa: E731
    return norm(noisy(0, n)), norm(noisy(1, n)), norm(noisy(0, 6) + 0.5 * base[2]), norm(noisy(1, 6) + 0.5 * base[2])


def test_strong_association_has_large_effect_and_p_near_zero() -> None:
    x, y, a, b = _biased_sets(8, np.random.default_rng(0))
    result = association_test(x, y, a, b)
    # Perfectly separated associations: d approaches 2 sqrt((n - 1) / n) for 2n = 16 words.
    assert 1.8 < result.effect_size <= 2 * np.sqrt(15 / 16) + 1e-9
    assert result.exact and result.partitions == 12870  # C(16, 8)
    assert result.p_value == 1 / 12870  # only the observed split is as extreme


def test_reversed_targets_give_p_near_one() -> None:
    x, y, a, b = _biased_sets(8, np.random.default_rng(1))
    result = association_test(y, x, a, b)
    assert result.effect_size < -1.8
    assert result.p_value == 1.0  # every split is at least as large


def test_no_association_has_p_in_the_middle() -> None:
    rng = np.random.default_rng(2)
    x, y, a, b = (m / np.linalg.norm(m, axis=1, keepdims=True) for m in rng.normal(size=(4, 10, 16)))
    result = association_test(x, y, a, b)
    assert abs(result.effect_size) < 1.2 and 0.01 < result.p_value < 0.99


def test_large_sets_are_sampled_with_the_plus_one_correction() -> None:
    s_x, s_y = np.ones(20), -np.ones(20)  # C(40, 20) partitions: too many to enumerate
    test = permutation_p_value(s_x, s_y, max_partitions=1000, seed=0)
    assert not test.exact and test.partitions == 1000
    assert test.p_value == pytest.approx(1 / 1001)
    again = permutation_p_value(s_x + 0.01 * np.arange(20), s_y, max_partitions=1000, seed=3)
    assert again.p_value == pytest.approx(1 / 1001)


def test_ties_count_the_same_in_float32_and_float64() -> None:
    # Repeated values make many partition sums equal in exact arithmetic: the exact
    # p-value must not depend on rounding: of C(6, 3) = 20 splits, 8 tie with the observed
    # sum (one each of 0.1, 0.2, 0.3) and 6 of the other 12 exceed it: p = 14/20.
    s_x, s_y = np.array([0.1, 0.2, 0.3]), np.array([0.1, 0.2, 0.3])
    for dtype in (np.float32, np.float64):
        assert permutation_p_value(s_x.astype(dtype), s_y.astype(dtype)).p_value == pytest.approx(14 / 20)


def test_non_finite_embeddings_are_an_error() -> None:
    two = _unit([1, 0], [0, 1])
    with pytest.raises(DataError, match="NaN"):
        association_test(np.full((2, 2), np.nan), two, two, two)


def test_too_small_sets_are_an_error() -> None:
    one = _unit([1, 0])
    two = _unit([1, 0], [0, 1])
    with pytest.raises(DataError, match="set X needs at least 2"):
        association_test(one, two, two, two)
