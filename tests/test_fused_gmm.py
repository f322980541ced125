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
# 64-byte vectors of scores (16 floats, 8 doubles). Pixel patches at most 8 wide are compacted
# two rows at a time (an even and an odd number of rows here), and K = 25 in float32 takes the
# separable annealing (sigma 1.5: dense g; 0.25: g with exact zeros).
CASES = [((10, 10, 1), (4, 4, 2, 2), 9), ((6, 6, 3), (3, 3, 1, 1), 5),
         ((3, 3, 2), (3, 3, 1, 1), 17), ((3, 3, 4), None, 33), ((9, 7, 1), (3, 1, 3, 2), 1),
         ((14, 12, 1), (8, 8, 2, 2), 25), ((11, 9, 1), (5, 7, 2, 1), 25)]


@pytest.mark.parametrize("mode", [True, None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sigma", [1.5, 0.25, 1e-4])
@pytest.mark.parametrize("shape, patch, K", CASES)
def test_fused_winner_statistics_equal_reference(fused_mode, dtype, sigma, shape, patch, K, mode):
    # mode True: the kernel scores the patches itself; None (default): pixel input does, and a
    # multi-channel map is scored by the convolution, which the kernel then finishes.
    x = _images(shape, 7, dtype, seed=1)
    fold = Folding(shape, *patch).to(dtype) if patch is not None else None
    gshape = fold.output_shape if fold is not None else shape
    layer = _layer(gshape, K, dtype, seed=2, sigma=sigma)
    assert (layer.annealing_matrix() is None) == (sigma < 0.1 or K == 1)
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


@pytest.mark.parametrize("winners", ["many", "few"])
@pytest.mark.parametrize("independent", [False, True])
@pytest.mark.parametrize("sigma", [2.0, 0.2, 1e-4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_update_equals_the_formula(fused_mode, winners, independent, sigma, dtype):
    # Winners' statistics with components that never won (count 0, zero sums: the annealing
    # skips them; with few winners it is formed row by row in the update pass), an annealing
    # matrix that is dense (sigma 2), has exact zeros (0.2) or is the identity (1e-4), and
    # 2D = 80: a full block of columns and a tail.
    gen = torch.Generator().manual_seed(21)
    K, D = 25, 40
    layer = GMM((2, 1, D), K, independent, sigma=sigma).to(dtype)
    P = layer.mu.shape[0]
    with torch.no_grad():
        layer.mu.uniform_(-0.5, 1.5, generator=gen)
        layer.d.uniform_(0.5, 4.4, generator=gen)
        layer.xi.normal_(generator=gen)
    counts = torch.randint(0, 4, (P, K), generator=gen).to(dtype)
    counts[:, ::3] = 0
    if winners == "few":
        counts[:, 3:] = 0
        counts[:, 1] = 2.0
    sums = torch.rand(P, K, 2 * D, generator=gen, dtype=dtype) * counts.unsqueeze(-1)
    g = layer.annealing_matrix()
    if sigma == 0.2:
        assert g is not None and (g == 0).any()
    if g is not None:   # not symmetric (as every toroidal g is): catches a transposed read
        g = g * torch.rand(K, K, generator=gen, dtype=dtype)
    mu, d, xi = (p.detach().clone() for p in (layer.mu, layer.d, layer.xi))
    n, S = (counts, sums) if g is None else (counts @ g, torch.matmul(g.T, sums))
    step = 0.3
    t = S[..., :D] - n.unsqueeze(-1) * mu
    e = S[..., D:] - mu * (S[..., :D] + t)
    d_ref = (d + step * 0.1 * (n.unsqueeze(-1) / d - d * e)).clamp(0.1, 4.4)
    mu_ref = mu + step * 1.0 * d * d * t
    xi_ref = xi + step * 0.2 * (n - torch.softmax(xi, -1) * n.sum(-1, keepdim=True))
    buf = torch.empty(P, K, 2 * D, dtype=dtype)
    c = fused_gmm.fused_update(mu, d, xi, sums, counts, g, step, 1.0, 0.1, 0.2, True, 0.1, 4.4,
                               linear_form=buf)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    for got, ref in ((mu, mu_ref), (d, d_ref), (xi, xi_ref)):
        torch.testing.assert_close(got, ref, **tol)
    # The refilled linear form is the kernel's fill of the new parameters, to the bit.
    fill = torch.empty_like(buf)
    assert torch.equal(fused_gmm.linear_form(mu, d, xi, fill), c) and torch.equal(fill, buf)


def _background_maps(shape, n, dtype, seed, live=0.6):
    """Maps (n, H, W, C) that repeat one random vector except at about ``live`` of the
    positions (a responsibility map of digits repeats the background's responsibilities);
    the first image's top-left position is background, as the kernel assumes for speed."""
    gen = torch.Generator().manual_seed(seed)
    H, W, C = shape
    r0 = torch.rand(C, generator=gen, dtype=dtype)
    x = r0.expand(n, H, W, C).clone()
    # Live positions lie in the middle half (a digit), so border patches are all background.
    mask = torch.zeros(n, H, W, dtype=torch.bool)
    mask[:, H // 4:H - H // 4, W // 4:W - W // 4] = True
    mask &= torch.rand(n, H, W, generator=gen) < live
    x[mask] = torch.rand(int(mask.sum()), C, generator=gen, dtype=dtype)
    # Live positions may equal r0 in some channels: only all-equal positions are skipped.
    x[mask.nonzero()[::3].unbind(1)] = torch.where(
        torch.arange(C) % 2 == 0, r0, torch.rand(C, generator=gen, dtype=dtype))
    return x


# (map shape, fold (fy, fx, sy, sx), K): overlapping strided patches (E's second layer),
# stride 1, non-overlapping, strides above the patch size (positions no patch covers).
BG_CASES = [((12, 12, 5), (4, 4, 2, 2), 25), ((7, 6, 3), (3, 3, 1, 1), 17),
            ((8, 8, 2), (2, 2, 2, 2), 1), ((9, 7, 4), (3, 1, 3, 2), 33)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape, patch, K", BG_CASES)
def test_background_scores_equal_the_convolution(dtype, shape, patch, K):
    from deepmix.layers.gmm import _conv_weight, _with_squares

    x = _background_maps(shape, 6, dtype, seed=5)
    fold = Folding(shape, *patch).to(dtype)
    layer = _layer(fold.output_shape, K, dtype, seed=6, sigma=1.0)
    Ho, Wo, _ = fold.output_shape
    with torch.no_grad():
        Wl, c = layer._linear_form()
        ref = torch.nn.functional.conv2d(_with_squares(x), _conv_weight(Wl[0], fold), c[0],
                                         stride=patch[2:])
        ref = ref.permute(0, 2, 3, 1).reshape(-1, K)
    bg = fused_gmm.background_scores(x, (*patch, Ho, Wo), Wl[0], c[0])
    assert bg is not None and bg.scores.dtype == dtype
    got = bg.scores
    # A patch is live iff one of its positions differs from the background vector.
    diff = (x != x[0, 0, 0]).any(-1, keepdim=True).to(dtype).permute(0, 3, 1, 2)
    hit = torch.nn.functional.conv2d(diff, torch.ones(1, 1, patch[0], patch[1], dtype=dtype),
                                     stride=patch[2:]).reshape(-1) > 0
    assert torch.equal(bg.live.bool(), hit)
    if patch == (4, 4, 2, 2):
        assert 0 < int(bg.live.sum()) < bg.live.numel()
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    if not hit.all():
        torch.testing.assert_close(bg.patch_scores, ref[~hit][0], **tol)
    torch.testing.assert_close(got, ref, **tol)
    # Exact whatever r0 is: a first position that is not background only costs speed.
    y = x.clone()
    y[0, 0, 0] += 0.25
    with torch.no_grad():
        ref_y = torch.nn.functional.conv2d(_with_squares(y), _conv_weight(Wl[0], fold), c[0],
                                           stride=patch[2:]).permute(0, 2, 3, 1).reshape(-1, K)
    assert fused_gmm.background_scores(y, (*patch, Ho, Wo), Wl[0], c[0]) is None
    got_y = fused_gmm.background_scores(y, (*patch, Ho, Wo), Wl[0], c[0], max_live=1.0)
    torch.testing.assert_close(got_y.scores, ref_y, **tol)


def test_background_scores_decline_dense_maps():
    x = _background_maps((10, 10, 3), 4, torch.float32, seed=7, live=1.0)
    x[:, :, :, 0] += torch.rand(4, 10, 10)   # most positions differ from the first
    fold = Folding((10, 10, 3), 4, 4, 2, 2)
    layer = _layer(fold.output_shape, 9, torch.float32, seed=8, sigma=1.0)
    Wl, c = layer._linear_form()
    assert fused_gmm.background_scores(x, (4, 4, 2, 2, 4, 4), Wl[0], c[0]) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sigma", [1.5, 1e-4])
def test_winner_statistics_on_background_maps_equal_reference(fused_mode, dtype, sigma):
    # The default path on a mostly-background map: background scores, then the kernel's finish.
    x = _background_maps((12, 12, 5), 7, dtype, seed=9)
    fold = Folding((12, 12, 5), 4, 4, 2, 2).to(dtype)
    layer = _layer(fold.output_shape, 25, dtype, seed=10, sigma=sigma)
    fused_mode(False)
    ref = layer.winner_statistics(x, fold=fold)
    fused_mode(None)
    calls = []
    real = fused_gmm.background_scores

    def spy(*a, **k):
        calls.append(real(*a, **k))
        return calls[-1]

    fused_gmm.background_scores = spy
    try:
        got = layer.winner_statistics(x, fold=fold)
    finally:
        fused_gmm.background_scores = real
    assert calls and calls[0] is not None
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got.counts, ref.counts, rtol=0, atol=0)
    torch.testing.assert_close(got.sums, ref.sums, **tol)
    torch.testing.assert_close(got.loss_sum, ref.loss_sum, **tol)
    torch.testing.assert_close(got.resp, ref.resp, **tol)


@pytest.mark.parametrize("update_d", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_apply_refills_the_linear_form(fused_mode, update_d, dtype):
    # The fused update writes the new [d^2 mu, -d^2/2] and offsets c into the cache: the same
    # bits as the kernel's fill from the updated parameters (what a loaded model computes), and
    # torch's fill up to rounding (D = 37: vector body and scalar tail).
    x = _images((4, 3, 37), 9, dtype, seed=11)
    layer = GMM((4, 3, 37), 7, sigma=1.2).to(dtype)
    with torch.no_grad():
        layer.d.uniform_(0.5, 4.4)
        layer.mu.uniform_(-0.5, 1.5)
    fused_mode(None)
    st = layer.winner_statistics(x)
    layer.apply_statistics(st, 9, 0.5, update_d=update_d)
    assert layer._lf_key == layer._params_key()     # the cache was refilled, not invalidated
    W, c = layer._lf
    W, c = W.clone(), c.clone()
    with torch.no_grad():
        W_fill, c_fill = layer._fill_linear_form()       # the kernel's fill: the same bits
        assert torch.equal(W, W_fill) and torch.equal(c, c_fill)
        fused_mode(False)
        W_ref, c_ref = layer._fill_linear_form()         # torch's
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(W, W_ref, **tol)
    torch.testing.assert_close(c, c_ref, **(dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32
                                             else tol))


def test_portable_kernel_equals_reference(monkeypatch, tmp_path, fused_mode):
    # The kernel built for x86-64-v3 (AVX2, no AVX-512): the generic C++ paths that CPUs
    # without AVX-512 run (compaction and winner search by scalar loops). -O1: the test is
    # about results, and the build takes a third of the time.
    import platform

    from deepmix.utils import native

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("x86-64 only")
    monkeypatch.setattr(native, "FLAGS", [
        {"-march=native": "-march=x86-64-v3", "-O3": "-O1"}.get(f, f) for f in native.FLAGS])
    monkeypatch.setenv("DEEPMIX_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_LOADED", {})
    if fused_gmm.kernel() is None:
        pytest.skip("the compiler cannot build for x86-64-v3")
    # Pixel patches (compaction, winner search) and a background map (background scores).
    for (shape, patch, K, make), sigma in zip(
            [((10, 10, 1), (4, 4, 2, 2), 9, _images),
             ((12, 12, 5), (4, 4, 2, 2), 25, _background_maps)] * 2, [1.5, 1.5, 1e-4, 1e-4]):
        x = make(shape, 7, torch.float32, seed=12)
        fold = Folding(shape, *patch)
        layer = _layer(fold.output_shape, K, torch.float32, seed=13, sigma=sigma)
        fused_mode(False)
        ref = layer.winner_statistics(x, fold=fold)
        fused_mode(True)
        got = layer.winner_statistics(x, fold=fold)
        torch.testing.assert_close(got.counts, ref.counts, rtol=0, atol=0)
        for a, b in ((got.sums, ref.sums), (got.loss_sum, ref.loss_sum), (got.resp, ref.resp)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_pixels_give_the_reference_results(fused_mode, bad):
    # torch's max takes the first NaN and propagates it, threshold keeps NaN, an infinite pixel
    # must not turn the kernel's padding lanes into NaN.
    x = torch.zeros(2, 6, 6, 1)
    x[0, 2, 2, 0] = bad
    x[1, 3, 1, 0] = 0.5
    fold = Folding((6, 6, 1), 3, 3, 1, 1)
    for sigma in (1.5, 1e-4):
        layer = _layer(fold.output_shape, 5, torch.float32, seed=14, sigma=sigma)
        fused_mode(False)
        ref = layer.winner_statistics(x, fold=fold)
        fused_mode(True)
        got = layer.winner_statistics(x, fold=fold)
        assert torch.equal(got.counts, ref.counts)
        torch.testing.assert_close(got.resp, ref.resp, equal_nan=True, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.loss_sum, ref.loss_sum, equal_nan=True)


def test_linear_form_of_unusual_precisions_equals_torch():
    # log16 covers normal positive floats; 0, subnormal, negative and NaN d take exact logs.
    mu = torch.rand(1, 4, 32)
    for bad in (0.0, 1e-40, -1.0, float("nan")):
        d = 1.0 + torch.rand(1, 4, 32)
        d[0, 1, 5] = bad
        out = torch.empty(1, 4, 64)
        xi = torch.tensor([[0.5, -1.0, 2.0, 0.0]])
        c = fused_gmm.linear_form(mu, d, xi, out)
        ref = (torch.log_softmax(xi.double(), -1) + torch.log(d.double()).sum(-1)
               - 0.5 * (d.double() ** 2 * mu.double() ** 2).sum(-1))
        torch.testing.assert_close(c, ref.float(), equal_nan=True, rtol=1e-6, atol=1e-4)


def test_kernel_wrappers_refuse_inconsistent_arguments():
    x = torch.rand(2, 4, 4, 1)
    Wl, c = torch.rand(18, 3), torch.rand(3)
    with pytest.raises(ValueError, match="do not fit"):
        fused_gmm.fused_statistics(x, (3, 3, 1, 1, 3, 3), Wl, c, None)     # 3 + 2 > 4
    with pytest.raises(ValueError, match="do not fit"):
        fused_gmm.fused_statistics(x, (3, 3, 1, 1, 2, 2), Wl[:8], c, None)  # 8 != 2 * 9 rows
    assert fused_gmm.background_scores(x[:0], (3, 3, 1, 1, 2, 2), Wl, c) is None
    mu, d, xi = torch.rand(1, 3, 4), torch.ones(1, 3, 4), torch.zeros(1, 3)
    with pytest.raises(ValueError, match="do not match"):
        fused_gmm.fused_update(mu, d, xi, torch.zeros(1, 3, 7), torch.zeros(1, 3), None, 0.1,
                               1.0, 0.1, 0.2, True, 0.1, 10.0)
    # counts in another dtype are converted, not read as raw bytes of mu's dtype
    a, b = mu.clone(), mu.clone()
    sums, counts = torch.rand(1, 3, 8), torch.tensor([[2.0, 0.0, 1.0]])
    for m, cnt in ((a, counts), (b, counts.double())):
        fused_gmm.fused_update(m, d.clone(), xi.clone(), sums, cnt, None, 0.1, 1.0, 0.1, 0.2,
                               False, 0.1, 10.0)
    assert torch.equal(a, b)
