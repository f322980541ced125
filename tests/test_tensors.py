"""utils.tensors: the finiteness check the input checks of every family rely on."""

import pytest
import torch

from deepmix.utils.tensors import all_finite


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_all_finite_agrees_with_isfinite(dtype):
    big = torch.finfo(dtype).max
    cases = [torch.zeros(0, dtype=dtype), torch.rand(50, 7, dtype=dtype),
             # finite entries whose sum overflows: the entry-wise look must decide
             torch.full((4,), big, dtype=dtype), torch.tensor([big, -big, big], dtype=dtype)]
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.rand(30, 3, dtype=dtype)
        x[17, 1] = bad
        cases.append(x)
    x = torch.rand(6, dtype=dtype)
    x[0], x[1] = float("inf"), -float("inf")     # a sum of NaN from two infinities
    cases.append(x)
    for x in cases:
        assert all_finite(x) == bool(torch.isfinite(x).all()), x


def test_all_finite_integers_are_finite():
    assert all_finite(torch.arange(10))
