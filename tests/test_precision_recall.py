"""k-NN manifold precision/recall against a brute-force NumPy version of Kynkäänniemi et al."""

import numpy as np
import pytest
import torch

from deepmix.errors import InputError
from deepmix.metrics import precision_recall


def _brute(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def radii(a):
        d = np.sqrt(((a[:, None, :] - a[None, :, :]) ** 2).sum(-1))
        return np.sort(d, axis=1)[:, k]          # column 0 is the point itself
    d = np.sqrt(((real[:, None, :] - fake[None, :, :]) ** 2).sum(-1))     # (N real, M fake)
    precision = (d < radii(real)[:, None]).any(axis=0).mean()
    recall = (d < radii(fake)[None, :]).any(axis=1).mean()
    return float(precision), float(recall)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_chunked_equals_brute_force(k):
    rng = np.random.default_rng(k)
    real = rng.normal(size=(150, 4))
    fake = rng.normal(loc=0.7, scale=1.3, size=(120, 4))
    got = precision_recall(real, fake, k=k, chunk_size=17)
    p, r = _brute(real, fake, k)
    assert got["precision"] == pytest.approx(p) and got["recall"] == pytest.approx(r)
    assert got["f1"] == pytest.approx(2 * p * r / (p + r + 1e-8))
    assert 0 < p < 1 and 0 < r < 1              # the case is not trivial


def test_limits():
    x = torch.randn(80, 3, generator=torch.Generator().manual_seed(0))
    same = precision_recall(x, x.clone())
    assert same["precision"] == 1.0 and same["recall"] == 1.0
    far = precision_recall(x, x + 100.0)
    assert far["precision"] == 0.0 and far["recall"] == 0.0 and far["f1"] == 0.0
    # Samples collapsed on one real point: precise but with no recall to speak of.
    collapsed = precision_recall(x, x[:1].repeat(10, 1) + 1e-9)
    assert collapsed["precision"] == 1.0 and collapsed["recall"] < 0.1


def test_bad_input_is_one_clear_error():
    x = np.zeros((10, 3))
    with pytest.raises(InputError, match="same dimension"):
        precision_recall(x, np.zeros((10, 4)))
    with pytest.raises(InputError, match="NaN"):
        precision_recall(x, np.full((10, 3), np.nan))
    with pytest.raises(InputError, match="k must be"):
        precision_recall(x[:3], x, k=3)
