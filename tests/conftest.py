"""Shared fixtures of the core tests (layers, spec, training, checkpoints).

Torch runs single-threaded here: the tensors are tiny, and on a loaded 2-core machine the OpenMP
thread pool makes every small kernel hundreds of times slower (spinning threads competing for
the same cores), which would blow the runtime budget of the suite.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits as float32 images (N, 8, 8, 1) in [0, 1] and int64 labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images / 16.0, dtype=torch.float32).unsqueeze(-1)
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    return images, labels


def _blobs(centres, n: int, std: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.as_tensor(np.asarray(centres), dtype=torch.float32)
    lab = torch.randint(0, centres.shape[0], (n,), generator=gen)
    x = centres[lab] + std * torch.randn(n, centres.shape[1], generator=gen)
    return x.view(n, 1, 1, -1), lab


@pytest.fixture
def make_blobs():
    """``make_blobs(centres, n, std, seed)``: n points (n, 1, 1, D) around the rows of
    ``centres`` (K, D), and the index of each point's blob."""
    return _blobs
