"""The fused CPU kernel of a GMM layer's training pass equals the pure-torch reference path."""

from __future__ import annotations

import warnings

import pytest
import torch

import deepmix
from deepmix.layers import GMM, Folding, fused_gmm

pytestmark = pytest.mark.skipif(fused_gmm.kernel() is None,
                                reason="no C++ compiler: the fused kernel is not built")


@pytest.fixture
def fused_mode():
    """Set GMM.use_fused for one test and restore the default afterwards."""
    old = GMM.use_fused
    yield lambda mode: setattr(GMM, "use_fused", mode)
    GMM.use_fused = old


def _layer(shape, K, dtype, seed, sigma):
    gen = torch.Generator().manual_seed(seed)
    layer = GMM(shape, K, sigma=sigma).to(dtype)
    with torch.no_grad():
        layer.mu.copy_(torch.rand(layer.mu.shape, generator=gen, dtype=dtype))
        layer.d.copy_(1.0 + 3.0 * torch.rand(layer.d.shape, generator=gen, dtype=dtype))
        layer.xi.copy_(torch.randn(layer.xi.shape, generator=gen, dtype=dtype))
    return layer


def _images(shape, n, dtype, seed):
    """Sparse images: about 70% exact zeros, one all-zero image, values in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=gen, dtype=dtype)
    x = torch.where(torch.rand(x.shape, generator=gen) < 0.7, torch.zeros_like(x), x)
    x[0] = 0
    return x


# (input shape, fold (fy, fx, sy, sx) or None, K): pixel patches with strides, patches of a
# multi-channel map, the whole-input fold (a reshape), no fold; K across one and several
# 64-byte vectors of scores (16 floats, 8 doubles).
CASES = [((10, 10, 1), (4, 4, 2, 2), 9), ((6, 6, 3), (3, 3, 1, 1), 5),
         ((3, 3, 2), (3, 3, 1, 1), 17), ((3, 3, 4), None, 33), ((9, 7, 1), (3, 1, 3, 2), 1)]


@pytest.mark.parametrize("mode", [True, None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sigma", [1.5, 1e-4])
@pytest.mark.parametrize("shape, patch, K", CASES)
def test_fused_winner_statistics_equal_reference(fused_mode, dtype, sigma, shape, patch, K, mode):
    # mode True: the kernel scores the patches itself; None (default): pixel input does, and a
    # multi-channel map is scored by the convolution, which the kernel then finishes.
    x = _images(shape, 7, dtype, seed=1)
    fold = Folding(shape, *patch).to(dtype) if patch is not None else None
    gshape = fold.output_shape if fold is not None else shape
    layer = _layer(gshape, K, dtype, seed=2, sigma=sigma)
    assert (layer.annealing_matrix() is None) == (sigma < 1 or K == 1)
    fused_mode(False)
    ref = layer.winner_statistics(x, fold=fold)
    fused_mode(mode)
    if mode or shape[2] == 1:
        assert layer._fused_applies(x, fold)
    elif patch == (3, 3, 1, 1) and shape[:2] == (6, 6):
        assert layer._fused_finish_applies(x, fold)
    got = layer.winner_statistics(x, fold=fold)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got.counts, ref.counts, rtol=0, atol=0)
    torch.testing.assert_close(got.sums, ref.sums, **tol)
    torch.testing.assert_close(got.loss_sum, ref.loss_sum, **tol)
    torch.testing.assert_close(got.resp, ref.resp, **tol)
    assert got.resp.dtype == dtype and got.sums.dtype == dtype


def test_fused_path_is_the_default_for_pixel_input_only():
    fold = Folding((10, 10, 1), 4, 4, 2, 2)
    layer = GMM(fold.output_shape, 4)
    assert GMM.use_fused is None
    assert layer._fused_applies(torch.rand(2, 10, 10, 1), fold)
    assert not layer._fused_applies(torch.rand(2, 10, 10, 1, dtype=torch.float64), fold)
    maps = Folding((6, 6, 3), 3, 3, 1, 1)
    assert not GMM(maps.output_shape, 4)._fused_applies(torch.rand(2, 6, 6, 3), maps)
    assert not GMM((2, 2, 3), 4, independent=True)._fused_applies(torch.rand(2, 2, 2, 3), None)


def _train(arch, x, dtype, mode, fused_mode, steps_batch=60):
    fused_mode(mode)
    model = deepmix.DCGMM(arch, input_shape=tuple(x.shape[1:]), seed=0).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # sigma cannot anneal in 6 steps: intended here
        deepmix.train(model, x.to(dtype), config=deepmix.TrainConfig(
            epochs=1, batch_size=steps_batch, delay=0.0), progress=False)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("arch", ["F(4,4,2,2)-G(9)-F(3,3,1,1)-G(16)",
                                  "F(3,3,1,1)-G(4)-F(2,2,2,2)-G(9)-F(3,3,1,1)-G(9)"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("data", ["digits", "random"])
def test_fused_training_equals_reference_over_steps(fused_mode, digits, dtype, data, arch):
    # 6 SGD steps of a 2L-c-like stack (strided pixel patches, then the whole map as one patch)
    # and of an E-like one (a strided fold of responsibility maps: the convolution path).
    # In float32 the two paths round differently, and the reference's own rounding error (its
    # distance to the float64 reference) reaches 1e-4 on these data: the fast path must be
    # within that error + 1e-5 of both the float64 and the float32 reference (in float64 the
    # error is ~1e-15, so this is 1e-5 to the reference).
    x = digits[0][:360] if data == "digits" else _images((8, 8, 1), 360, torch.float32, seed=3)
    ref = _train(arch, x, dtype, False, fused_mode)
    exact = _train(arch, x, torch.float64, False, fused_mode)
    for mode in (None, True):      # pixel layer only (the default) and every layer
        got = _train(arch, x, dtype, mode, fused_mode)
        for k in ref:
            if not ref[k].is_floating_point():
                assert torch.equal(got[k], ref[k]), k
                continue
            own = (ref[k].double() - exact[k]).abs().max().item()
            torch.testing.assert_close(got[k].double(), exact[k], rtol=0, atol=own + 1e-5, msg=k)
            torch.testing.assert_close(got[k], ref[k], rtol=0, atol=own + 1e-5, msg=k)
    start = _train(arch, x[:0 + 60], dtype, False, fused_mode)
    assert any(not torch.equal(start[k], ref[k]) for k in ref if ref[k].is_floating_point())


def test_kernel_off_keeps_the_reference_path_bit_identical(fused_mode, digits, monkeypatch):
    x = digits[0][:240]
    arch = "F(4,4,2,2)-G(9)-F(3,3,1,1)-G(16)"
    ref = _train(arch, x, torch.float32, False, fused_mode)
    monkeypatch.setenv("DEEPMIX_FUSED", "0")
    assert fused_gmm.kernel() is None
    off = _train(arch, x, torch.float32, None, fused_mode)
    for k in ref:
        assert torch.equal(off[k], ref[k]), k


@pytest.mark.parametrize("independent", [False, True])
@pytest.mark.parametrize("update_d", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_apply_statistics_equals_reference(fused_mode, independent, update_d, dtype):
    x = _images((3, 2, 5), 11, dtype, seed=4)
    a = GMM((3, 2, 5), 6, independent, sigma=1.2).to(dtype)
    with torch.no_grad():
        a.d.uniform_(0.5, 4.4)                 # some steps cross the clamps
        a.mu.uniform_(-0.5, 1.5)
    b = GMM((3, 2, 5), 6, independent, sigma=1.2).to(dtype)
    b.load_state_dict(a.state_dict())
    fused_mode(False)
    st = a.winner_statistics(x)
    a.apply_statistics(st, 11, 0.5, update_d=update_d)
    fused_mode(None)
    mu0 = b.mu.detach().clone()
    with torch.no_grad():
        b.log_scores(x)                        # fills the linear-form cache at the old values
    b.apply_statistics(st, 11, 0.5, update_d=update_d)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(q, p, **tol)
    assert (b.mu.detach() - mu0).abs().max() > 1e-3
    # The linear-form cache sees the in-place update (version counters bumped).
    with torch.no_grad():
        # log-scores sum D terms of size ~1e2, so float32 rounding reaches a few 1e-6 there.
        score_tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else tol
        torch.testing.assert_close(b.log_scores(x), a.log_scores(x), **score_tol)
