"""The oneDNN route for large float32 products changes the kernel, never the precision."""

from __future__ import annotations

import pytest
import torch

from deepmix.utils import blas


def _flags():
    return torch.backends.mkldnn.matmul


def test_fast_matmul_equals_reference_within_float32_rounding():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3000, 400, generator=g), torch.randn(400, 25, generator=g)
    ref = a.double() @ b.double()
    with blas.fast_matmul():
        fast = a @ b
        fast_t = torch.addmm(torch.zeros(25), a, b)
    scale = float(ref.abs().max())
    assert float((fast.double() - ref).abs().max()) / scale < 1e-5
    assert float((fast_t.double() - ref).abs().max()) / scale < 1e-5
    # exact float32 arithmetic: bfloat16 inputs could not give 256 (1 + 2^-12)
    x = torch.full((64, 256), 1.0 + 2.0 ** -12)
    with blas.fast_matmul():
        assert bool(((x @ torch.ones(256, 8)) == 256.0 * (1.0 + 2.0 ** -12)).all())


def test_fast_matmul_restores_the_flag_even_on_error():
    before = _flags().fp32_precision
    with pytest.raises(RuntimeError):
        with blas.fast_matmul():
            raise RuntimeError("boom")
    assert _flags().fp32_precision == before


def test_opt_out_keeps_the_default_route(monkeypatch):
    monkeypatch.setenv("DEEPMIX_ONEDNN", "0")
    monkeypatch.setattr(blas, "_CHECKED", [])
    assert blas.onednn_is_exact() is False
    with blas.fast_matmul():
        assert _flags().fp32_precision == "none"


def test_probe_is_a_bool_and_cached(monkeypatch):
    monkeypatch.setattr(blas, "_CHECKED", [])
    first = blas.onednn_is_exact()
    assert isinstance(first, bool) and blas._CHECKED == [first]
    assert blas.onednn_is_exact() is first
