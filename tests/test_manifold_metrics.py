"""k-NN manifold precision/recall (Kynkäänniemi et al. 2019) against a brute-force version."""

from __future__ import annotations

import numpy as np
import pytest

from deepmix.errors import InputError
from deepmix.metrics import constraint_satisfaction, knn_radii, manifold_precision_recall


def _brute(g: np.ndarray, r: np.ndarray, k: int) -> tuple[float, float]:
    def radii(x):
        out = []
        for i in range(len(x)):
            d = sorted(float(np.linalg.norm(x[i] - x[j])) for j in range(len(x)) if j != i)
            out.append(d[k - 1])
        return out

    def frac(points, centres, rad):
        return float(np.mean([any(np.linalg.norm(p - c) <= rc for c, rc in zip(centres, rad))
                              for p in points]))

    return frac(g, r, radii(r)), frac(r, g, radii(g))


@pytest.mark.parametrize("k", [1, 3])
def test_equals_brute_force(k):
    rng = np.random.default_rng(0)
    r = rng.normal(size=(60, 3))
    g = rng.normal(size=(50, 3)) * 0.8 + 1.0
    got = manifold_precision_recall(g, r, k=k, row_batch=7)
    p, q = _brute(g, r, k)
    assert got["precision"] == pytest.approx(p) and got["recall"] == pytest.approx(q)
    assert got["f1"] == pytest.approx(2 * p * q / (p + q + 1e-8))
    assert 0 < p < 1 and 0 < q < 1


def test_extremes_and_errors():
    rng = np.random.default_rng(1)
    r = rng.normal(size=(40, 2))
    same = manifold_precision_recall(r, r)
    assert same["precision"] == 1.0 and same["recall"] == 1.0
    far = manifold_precision_recall(r + 100.0, r)
    assert far["precision"] == 0.0 and far["recall"] == 0.0 and far["f1"] == 0.0
    assert knn_radii(np.array([[0.0], [1.0], [3.0]]), 1).tolist() == [1.0, 1.0, 2.0]
    with pytest.raises(InputError, match="columns"):
        manifold_precision_recall(r[:, :1], r)
    with pytest.raises(InputError, match="k must"):
        knn_radii(r, 40)
    x = np.array([[1.0, 0.0], [-1.0, 0.0], [0.5, -5.0]])
    assert constraint_satisfaction(x, [1.0, 0.2], 0.0) == pytest.approx(1 / 3)
