"""Tests of the DCGMM layers: Folding, Pooling, GMM and Classifier (forward and backwards maps).

Every expected value is computed independently of the layer under test: hand-written loops,
torch.nn.functional, torch.distributions, autograd, or numerical integration.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Independent, Normal

from deepmix.errors import InputError, SpecError
from deepmix.layers import GMM, Classifier, Folding, Pooling
from deepmix.training.annealing import annealing_matrix

D_MAX = math.sqrt(20.0)


# ------------------------------------------------------------------------------------ Folding
def _fold_by_loop(x: torch.Tensor, fy: int, fx: int, sy: int, sx: int) -> torch.Tensor:
    """Reference folding: vector index (i * fx + j) * C + c, i.e. patch-row, patch-col, channel."""
    N, H, W, C = x.shape
    Ho, Wo = 1 + (H - fy) // sy, 1 + (W - fx) // sx
    out = torch.empty(N, Ho, Wo, fy * fx * C, dtype=x.dtype)
    for oy in range(Ho):
        for ox in range(Wo):
            for i in range(fy):
                for j in range(fx):
                    for c in range(C):
                        out[:, oy, ox, (i * fx + j) * C + c] = x[:, oy * sy + i, ox * sx + j, c]
    return out


@pytest.mark.parametrize("args", [(3, 3, 1, 1), (2, 3, 2, 1), (2, 2, 2, 2), (4, 2, 2, 4),
                                  (6, 6, 1, 1)])
def test_folding_forward_matches_loop(args):
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 6, 6, 2, generator=gen)
    layer = Folding((6, 6, 2), *args)
    fy, fx, sy, sx = args
    expected = _fold_by_loop(x, *args)
    assert layer.output_shape == (1 + (6 - fy) // sy, 1 + (6 - fx) // sx, fy * fx * 2)
    out = layer(x)
    assert out.shape == (2, *layer.output_shape)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("args", [(3, 3, 1, 1), (2, 3, 2, 1), (4, 2, 2, 4)])
def test_folding_forward_on_views_and_under_autograd(args):
    """Strided views, storage offsets and autograd take other paths; all give the same patches,
    and the gradient through folding sums each pixel's patch copies."""
    gen = torch.Generator().manual_seed(6)
    big = torch.rand(3, 6, 6, 4, generator=gen)
    layer = Folding((6, 6, 2), *args)
    for x in (big[1:, :, :, :2], big[1:, :, :, 2:], big[1:].permute(0, 2, 1, 3)[..., :2].contiguous(),
              big[1:, :, :, :2].contiguous()[1:]):
        assert torch.equal(layer(x), _fold_by_loop(x, *args))
        assert torch.equal(layer.forward_design(x)[:, :layer.output_shape[2]],
                           _fold_by_loop(x, *args).reshape(-1, layer.output_shape[2]))
    x = big[:, :, :, :2].contiguous().requires_grad_()
    weights = torch.rand(3, *layer.output_shape, generator=gen)
    (layer(x) * weights).sum().backward()
    expected = torch.autograd.grad((_fold_by_loop(x, *args) * weights).sum(), x)[0]
    torch.testing.assert_close(x.grad, expected)


@pytest.mark.parametrize("args", [(2, 2, 2, 2), (3, 3, 3, 3), (6, 6, 1, 1), (1, 1, 1, 1),
                                  (2, 3, 2, 3)])
def test_folding_backwards_inverts_forward_exactly_when_patches_tile(args):
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(3, 6, 6, 2, generator=gen)
    layer = Folding((6, 6, 2), *args)
    assert torch.equal(layer.backwards(layer(x)), x)


@pytest.mark.parametrize("args", [(3, 3, 1, 1), (4, 4, 2, 2), (2, 4, 1, 2)])
def test_folding_backwards_averages_overlaps(args):
    # Overlapping patches: the average of k identical copies is x up to float rounding (1 ulp;
    # the sum is multiplied by 1/k, which is not bit-exact in float32).
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(3, 6, 6, 2, generator=gen)
    layer = Folding((6, 6, 2), *args)
    torch.testing.assert_close(layer.backwards(layer(x)), x, rtol=0, atol=1e-6)


def test_folding_backwards_is_overlap_average_of_distinct_vectors():
    # Different values per patch: each pixel must get the mean of the values its patches give it.
    layer = Folding((4, 4, 1), 2, 2, 1, 1)                   # 3x3 positions, 4-vectors
    gen = torch.Generator().manual_seed(4)
    control = torch.rand(2, 3, 3, 4, generator=gen)
    expected = torch.zeros(2, 4, 4, 1)
    count = torch.zeros(4, 4)
    for oy in range(3):
        for ox in range(3):
            for i in range(2):
                for j in range(2):
                    expected[:, oy + i, ox + j, 0] += control[:, oy, ox, i * 2 + j]
                    count[oy + i, ox + j] += 1
    expected /= count.view(1, 4, 4, 1)
    torch.testing.assert_close(layer.backwards(control), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("args", [(3, 3, 1, 1), (2, 2, 2, 2), (6, 6, 1, 1), (2, 3, 2, 1)])
def test_folding_forward_design_is_patches_and_squares(args):
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(2, 6, 6, 2, generator=gen)
    layer = Folding((6, 6, 2), *args)
    p = layer(x).reshape(-1, layer.output_shape[2])
    Z = layer.forward_design(x)
    assert Z.shape == (p.shape[0], 2 * p.shape[1])
    assert torch.equal(Z, torch.cat([p, p * p], dim=1))
    assert torch.equal(Z, GMM.design(layer(x)))


@pytest.mark.parametrize("args, shape", [((3, 3, 2, 2), (6, 6, 1)), ((2, 2, 3, 3), (6, 6, 1)),
                                         ((4, 4, 3, 3), (8, 9, 1)), ((7, 7, 1, 1), (6, 6, 1)),
                                         ((0, 2, 1, 1), (6, 6, 1))])
def test_folding_rejects_patches_that_do_not_tile(args, shape):
    with pytest.raises(SpecError, match=r"F\(%d,%d,%d,%d\)" % args):
        Folding(shape, *args)


# ------------------------------------------------------------------------------------ Pooling
def _pool_by_loop(x: torch.Tensor, ky: int, kx: int, sy: int, sx: int) -> torch.Tensor:
    N, H, W, C = x.shape
    Ho, Wo = 1 + -(-(H - ky) // sy), 1 + -(-(W - kx) // sx)
    out = torch.empty(N, Ho, Wo, C)
    for oy in range(Ho):
        for ox in range(Wo):
            # Slicing clips partial windows to the input: only in-range cells are read.
            win = x[:, oy * sy:oy * sy + ky, ox * sx:ox * sx + kx, :]
            assert win.shape[1] >= 1 and win.shape[2] >= 1
            out[:, oy, ox] = win.amax(dim=(1, 2))
    return out


@pytest.mark.parametrize("hw, args", [((6, 6), (2, 2, 2, 2)), ((7, 5), (2, 2, 2, 2)),
                                      ((11, 11), (2, 2, 2, 2)), ((7, 7), (3, 3, 2, 2)),
                                      ((6, 8), (2, 3, 1, 2))])
def test_pooling_forward_is_max_pool(hw, args):
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, *hw, 3, generator=gen)
    layer = Pooling((*hw, 3), *args)
    out = layer(x)
    ky, kx, sy, sx = args
    ref = F.max_pool2d(x.permute(0, 3, 1, 2), (ky, kx), (sy, sx), ceil_mode=True)
    ref = ref.permute(0, 2, 3, 1)
    assert layer.output_shape == (1 + -(-(hw[0] - ky) // sy), 1 + -(-(hw[1] - kx) // sx), 3)
    assert out.shape == (2, *layer.output_shape)
    assert torch.equal(out, ref)
    assert torch.equal(out, _pool_by_loop(x, *args))


def test_pooling_odd_size_keeps_partial_windows_without_reading_out_of_range():
    # The last partial row/column of windows is kept and takes the max over in-range cells
    # only: pixel (0, 0) must not stand in for out-of-range cells (the reference's bug).
    x = -torch.ones(1, 5, 5, 1)
    x[0, 4, 0, 0] = 7.0
    x[0, 0, 0, 0] = 50.0
    out = Pooling((5, 5, 1), 2, 2, 2, 2)(x)
    assert out.shape == (1, 3, 3, 1)
    assert out[0, :, :, 0].tolist() == [[50.0, -1.0, -1.0], [-1.0, -1.0, -1.0], [7.0, -1.0, -1.0]]


def test_pooling_backwards_dense_constant_windows():
    gen = torch.Generator().manual_seed(7)
    layer = Pooling((6, 6, 2), 2, 2, 2, 2)
    control = torch.rand(3, 3, 3, 2, generator=gen)
    up = layer.backwards(control, mode="dense")
    assert up.shape == (3, 6, 6, 2)
    expected = control.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    assert torch.equal(up, expected)


def test_pooling_backwards_dense_crops_partial_windows():
    gen = torch.Generator().manual_seed(8)
    layer = Pooling((11, 11, 2), 2, 2, 2, 2)
    assert layer.output_shape == (6, 6, 2)
    control = torch.rand(2, 6, 6, 2, generator=gen)
    up = layer.backwards(control, mode="dense")
    assert up.shape == (2, 11, 11, 2)
    expected = control.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    assert torch.equal(up, expected[:, :11, :11])


def test_pooling_backwards_dense_fills_cells_no_window_covers():
    layer = Pooling((5, 5, 1), 1, 1, 2, 2)                 # stride > window: gaps
    assert layer.output_shape == (3, 3, 1)
    control = torch.arange(9.0).view(1, 3, 3, 1)
    up = layer.backwards(control, mode="dense")[0, :, :, 0]
    assert up.shape == (5, 5) and torch.equal(up[::2, ::2], control[0, :, :, 0])


def test_pooling_backwards_dense_averages_overlapping_windows():
    layer = Pooling((5, 5, 1), 3, 3, 2, 2)                    # 2x2 windows overlapping
    control = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 2, 2, 1)
    up = layer.backwards(control, mode="dense")[0, :, :, 0]
    assert up[0, 0] == 1.0 and up[0, 4] == 2.0 and up[4, 0] == 3.0 and up[4, 4] == 4.0
    assert up[2, 2] == pytest.approx(2.5)                   # all four windows
    assert up[0, 2] == pytest.approx(1.5)                   # windows 0 and 1


def test_pooling_backwards_sparse_one_cell_per_window():
    gen = torch.Generator().manual_seed(9)
    layer = Pooling((6, 6, 2), 2, 2, 2, 2)
    control = torch.rand(4, 3, 3, 2, generator=gen) + 0.5
    up = layer.backwards(control, mode="sparse", generator=torch.Generator().manual_seed(0))
    assert up.shape == (4, 6, 6, 2)
    win = up.reshape(4, 3, 2, 3, 2, 2)
    assert torch.equal((win != 0).sum(dim=(2, 4)), torch.ones(4, 3, 3, 2, dtype=torch.long))
    torch.testing.assert_close(win.sum(dim=(2, 4)), control)
    with pytest.raises(ValueError, match="bogus"):
        layer.backwards(control, mode="bogus")


# ---------------------------------------------------------------------------------------- GMM
def _random_gmm(shape, K, independent, seed, dtype=torch.float64, sigma=None) -> GMM:
    gen = torch.Generator().manual_seed(seed)
    layer = GMM(shape, K, independent, sigma=sigma).to(dtype)
    with torch.no_grad():
        layer.mu.copy_(torch.rand(layer.mu.shape, generator=gen, dtype=dtype))
        layer.d.copy_(1.0 + 3.0 * torch.rand(layer.d.shape, generator=gen, dtype=dtype))
        layer.xi.copy_(torch.randn(layer.xi.shape, generator=gen, dtype=dtype))
    return layer


def _reference_log_joint(layer: GMM, x: torch.Tensor) -> torch.Tensor:
    """log pi_k + log N(x; mu_k, diag(1/d_k^2)) with torch.distributions, (N, H, W, K)."""
    N = x.shape[0]
    H, W, D = layer.input_shape
    dist = Independent(Normal(layer.mu.detach(), 1.0 / layer.d.detach()), 1)  # batch (P, K)
    lp = dist.log_prob(x.reshape(N, H * W, 1, D))                         # (N, HW, K)
    lp = lp + torch.log_softmax(layer.xi.detach(), dim=-1)
    return lp.reshape(N, H, W, layer.K)


@pytest.mark.parametrize("independent", [False, True])
def test_gmm_log_scores_match_torch_distributions(independent):
    layer = _random_gmm((2, 3, 4), 5, independent, seed=10)
    assert layer.mu.shape == (6 if independent else 1, 5, 4)
    x = torch.rand(7, 2, 3, 4, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    ref = _reference_log_joint(layer, x)
    s = layer.log_scores(x)
    torch.testing.assert_close(s - 0.5 * 4 * math.log(2 * math.pi), ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(layer.log_likelihood(x), torch.logsumexp(ref, dim=-1),
                               rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(layer(x), torch.softmax(ref, dim=-1), rtol=1e-10, atol=1e-12)
    # pi is normalised per position (the reference normalises over all positions: a bug).
    torch.testing.assert_close(layer.pi.sum(-1), torch.ones(layer.pi.shape[0], dtype=x.dtype))


def test_gmm_independent_positions_use_their_own_parameters():
    layer = _random_gmm((1, 2, 3), 4, True, seed=12)
    x = torch.rand(5, 1, 2, 3, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    s = layer.log_scores(x)
    for p in range(2):
        single = GMM((1, 1, 3), 4).to(torch.float64)
        with torch.no_grad():
            single.mu.copy_(layer.mu[p:p + 1])
            single.d.copy_(layer.d[p:p + 1])
            single.xi.copy_(layer.xi[p:p + 1])
        torch.testing.assert_close(s[:, 0, p], single.log_scores(x[:, :, p:p + 1])[:, 0, 0])


def test_gmm_default_initialisation():
    layer = GMM((3, 3, 5), 9, generator=torch.Generator().manual_seed(0))
    assert torch.all(layer.xi == 0)
    assert torch.all(layer.mu.abs() <= 0.1)
    assert torch.allclose(layer.d, torch.full_like(layer.d, D_MAX))
    assert float(layer.sigma) == pytest.approx(math.sqrt(2 * 9) / 4)
    assert layer.output_shape == (3, 3, 9)


def test_gmm_likelihood_integrates_to_one():
    layer = GMM((1, 1, 2), 3).to(torch.float64)
    with torch.no_grad():
        layer.mu.copy_(torch.tensor([[[0.2, 0.3], [0.7, 0.6], [0.4, 0.9]]]))
        layer.d.copy_(torch.tensor([[[4.0, 3.0], [2.5, 4.4], [3.5, 2.0]]]))
        layer.xi.copy_(torch.tensor([[0.3, -0.5, 1.0]]))
    h = 0.005
    g = torch.arange(-2.5, 3.5, h, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1).view(-1, 1, 1, 2)
    ll = layer.log_likelihood(pts)
    assert ll.shape == (pts.shape[0], 1, 1)
    integral = float(ll.detach().exp().sum() * h * h)
    assert integral == pytest.approx(1.0, abs=1e-3)


def _autograd_step(layer: GMM, x, lr, lr_mu, lr_d, lr_xi, sigma):
    """One plain SGD ascent step on the batch-mean annealed loss, by autograd, on a copy."""
    N = x.shape[0]
    H, W, D = layer.input_shape
    mu = layer.mu.detach().clone().requires_grad_(True)
    d = layer.d.detach().clone().requires_grad_(True)
    xi = layer.xi.detach().clone().requires_grad_(True)
    # log-scores written out directly (no matrix-product trick): (N, HW, K)
    xf = x.reshape(N, H * W, 1, D)
    s = (torch.log_softmax(xi, -1) + torch.log(d).sum(-1)
         - 0.5 * (d * d * (xf - mu) ** 2).sum(-1))
    g = annealing_matrix(layer.K, sigma, dtype=x.dtype)
    loss = (s @ g.T).max(dim=-1).values - 0.5 * D * math.log(2 * math.pi)   # (N, HW)
    # Shared: mean over all N*H*W terms. Independent: each position's own batch mean.
    objective = loss.mean() if not layer.independent else loss.sum() / N
    objective.backward()
    with torch.no_grad():
        new_mu = mu + lr * lr_mu * mu.grad
        new_d = (d + lr * lr_d * d.grad).clamp(layer.d_min, layer.d_max)
        new_xi = xi + lr * lr_xi * xi.grad
    return new_mu, new_d, new_xi, loss.detach()


@pytest.mark.parametrize("independent", [False, True])
@pytest.mark.parametrize("sigma", [2.0, 1e-4])
def test_gmm_train_step_equals_autograd_sgd(independent, sigma):
    layer = _random_gmm((2, 3, 4), 9, independent, seed=14, sigma=sigma)
    with torch.no_grad():                  # a few d at the upper clamp exercise the clamp
        layer.d[..., 0] = D_MAX
    g = layer.annealing_matrix()
    if sigma > 1:
        assert g is not None and not torch.allclose(g, torch.eye(9, dtype=g.dtype), atol=1e-3)
    else:
        assert g is None
    x = torch.rand(16, 2, 3, 4, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    lr, lr_mu, lr_d, lr_xi = 0.05, 1.0, 0.1, 0.2
    exp_mu, exp_d, exp_xi, exp_loss = _autograd_step(layer, x, lr, lr_mu, lr_d, lr_xi, sigma)
    resp_expected = layer(x)
    mu0 = layer.mu.detach().clone()
    loss_sum, resp = layer.train_step(x, lr, lr_mu, lr_d, lr_xi)
    torch.testing.assert_close(layer.mu.detach(), exp_mu, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(layer.d.detach(), exp_d, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(layer.xi.detach(), exp_xi, rtol=1e-9, atol=1e-9)
    assert float(loss_sum) == pytest.approx(float(exp_loss.sum()), rel=1e-10)
    torch.testing.assert_close(resp, resp_expected)
    assert (layer.d <= D_MAX).all() and (layer.d >= layer.d_min).all()
    assert (layer.mu.detach() - mu0).abs().max() > 1e-3        # the step is not a no-op


@pytest.mark.parametrize("independent", [False, True])
@pytest.mark.parametrize("chunk_rows", [16384, 20, 1])
@pytest.mark.parametrize("channels, f", [(1, 3), (3, 3), (1, 6)])
def test_gmm_train_step_with_fold_and_chunks_equals_plain_input(independent, chunk_rows,
                                                                 channels, f):
    # Training from the Folding layer's input (convolution or patch matrix built in place),
    # and in chunks, must give the same step as the plain input in one piece.
    fold = Folding((6, 6, channels), f, f, 1, 1).to(torch.float64)
    img = torch.rand(5, 6, 6, channels, generator=torch.Generator().manual_seed(16),
                     dtype=torch.float64)
    Ho = 7 - f
    a = _random_gmm((Ho, Ho, f * f * channels), 4, independent, seed=17, sigma=1.0)
    b = _random_gmm((Ho, Ho, f * f * channels), 4, independent, seed=17, sigma=1.0)
    la, ra = a.train_step(fold(img), 0.05)
    lb, rb = b.train_step(img, 0.05, fold=fold, chunk_rows=chunk_rows)
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(ra, rb)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


def test_gmm_train_step_update_d_false_freezes_d():
    layer = _random_gmm((1, 1, 3), 4, False, seed=18, sigma=0.5)
    d0, mu0 = layer.d.detach().clone(), layer.mu.detach().clone()
    layer.train_step(torch.rand(20, 1, 1, 3, dtype=torch.float64), 0.1, update_d=False)
    assert torch.equal(layer.d.detach(), d0)
    assert not torch.equal(layer.mu.detach(), mu0)


def _distinct_centroid_gmm(shape, K, d_value=2.0):
    layer = GMM(shape, K)
    P = layer.mu.shape[0]
    with torch.no_grad():
        centres = torch.arange(K, dtype=torch.float32).view(1, K, 1) * 10.0
        layer.mu.copy_(centres.expand(P, K, layer.D) + torch.arange(P).view(P, 1, 1) * 1000.0)
        layer.d.fill_(d_value)
    return layer


def _which_component(layer: GMM, out: torch.Tensor) -> torch.Tensor:
    """Index of the centroid each output vector sits on, (N, H, W); asserts exact equality."""
    N = out.shape[0]
    H, W, D = layer.input_shape
    o = out.reshape(N, H * W, 1, D)
    mu = layer.mu.detach().unsqueeze(0)                                   # (1, P, K, D)
    hit = (o == mu).all(-1)                                               # (N, HW, K)
    assert torch.equal(hit.sum(-1), torch.ones(N, H * W, dtype=torch.long))
    return hit.float().argmax(-1).view(N, H, W)


@pytest.mark.parametrize("independent", [False, True])
def test_gmm_backwards_top_s_keeps_the_s_largest(independent):
    layer = _distinct_centroid_gmm((2, 2, 3), 6)
    if independent:
        layer = GMM((2, 2, 3), 6, True)
        with torch.no_grad():
            layer.mu.copy_(torch.randn(layer.mu.shape, generator=torch.Generator().manual_seed(0)))
    gen = torch.Generator().manual_seed(19)
    control = torch.rand(300, 2, 2, 6, generator=gen)
    out = layer.backwards(control, generator=gen, top_s=2, divisor=float("inf"))
    assert out.shape == (300, 2, 2, 3)
    k = _which_component(layer, out)
    top2 = control.topk(2, dim=-1).indices
    assert ((top2 == k.unsqueeze(-1)).any(-1)).all()
    # Both kept entries are used, not only the largest.
    assert (k != top2[..., 0]).any()
    # top_s = 1: the arg-max component, deterministically.
    k1 = _which_component(layer, layer.backwards(control, generator=gen, top_s=1,
                                                  divisor=float("inf")))
    assert torch.equal(k1, control.argmax(-1))


def test_gmm_backwards_probabilities_follow_renormalised_control():
    layer = _distinct_centroid_gmm((1, 1, 2), 6)
    control = torch.tensor([0.05, 0.5, 0.1, 0.3, 0.01, 0.04]).expand(6000, 1, 1, 6)
    out = layer.backwards(control, generator=torch.Generator().manual_seed(20), top_s=2,
                          divisor=0)
    k = _which_component(layer, out).reshape(-1)
    assert set(k.tolist()) == {1, 3}
    assert float((k == 1).float().mean()) == pytest.approx(0.5 / 0.8, abs=0.03)
    # Entries below 1e-6 are clipped to 1e-6, never to zero probability.
    control = torch.zeros(2000, 1, 1, 6)
    k = _which_component(layer, layer.backwards(control, generator=torch.Generator()
                                                .manual_seed(21), top_s=6, divisor=0))
    assert len(set(k.reshape(-1).tolist())) == 6


def test_gmm_backwards_top_layer_uniform_or_pi():
    layer = _distinct_centroid_gmm((1, 1, 2), 4)
    gen = torch.Generator().manual_seed(22)
    k = _which_component(layer, layer.backwards(None, n=4000, generator=gen,
                                                divisor=float("inf"))).reshape(-1)
    freq = torch.bincount(k, minlength=4).float() / 4000
    torch.testing.assert_close(freq, torch.full((4,), 0.25), atol=0.03, rtol=0)
    with torch.no_grad():
        layer.xi.copy_(torch.tensor([[0.0, 3.0, 0.0, 0.0]]))
    k = _which_component(layer, layer.backwards(None, n=4000, generator=gen, use_pi=True,
                                                divisor=float("inf"))).reshape(-1)
    freq = torch.bincount(k, minlength=4).float() / 4000
    torch.testing.assert_close(freq, layer.pi.detach()[0], atol=0.03, rtol=0)
    with pytest.raises(ValueError):
        layer.backwards(None)


def test_gmm_backwards_noise_std_is_one_over_d_divisor():
    layer = GMM((1, 1, 3), 3)
    with torch.no_grad():
        layer.mu.copy_(torch.tensor([0.0, 100.0, 200.0]).view(1, 3, 1).expand(1, 3, 3))
        layer.d.copy_(torch.tensor([1.0, 4.0, D_MAX]).view(1, 3, 1).expand(1, 3, 3))
    out = layer.backwards(None, n=9000, generator=torch.Generator().manual_seed(23), divisor=5.0)
    out = out.reshape(-1, 3)
    k = (out[:, 0] / 100.0).round().long()
    for comp, std in [(0, 1 / (1.0 * 5)), (1, 1 / (4.0 * 5))]:
        noise = out[k == comp] - 100.0 * comp
        assert noise.shape[0] > 2000
        assert float(noise.mean()) == pytest.approx(0.0, abs=0.02 * std * 5)
        assert float(noise.std()) == pytest.approx(std, rel=0.05)
    # No noise where d still sits at its upper clamp.
    assert torch.equal(out[k == 2], torch.full_like(out[k == 2], 200.0))


def test_gmm_backwards_same_seed_same_sample():
    layer = GMM((2, 2, 3), 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.d.fill_(2.0)
    control = torch.rand(5, 2, 2, 4, generator=torch.Generator().manual_seed(1))
    a = layer.backwards(control, generator=torch.Generator().manual_seed(7), top_s=3)
    b = layer.backwards(control, generator=torch.Generator().manual_seed(7), top_s=3)
    c = layer.backwards(control, generator=torch.Generator().manual_seed(8), top_s=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("bad", [dict(K=0), dict(d_min=0.0), dict(d_min=5.0, d_max=4.0)])
def test_gmm_rejects_bad_parameters(bad):
    K = bad.pop("K", 4)
    with pytest.raises(SpecError, match=r"G\(%d\)" % K):
        GMM((1, 1, 2), K, **bad)


# --------------------------------------------------------------------------------- Classifier
def test_classifier_forward_shape_and_no_gradient_below():
    clf = Classifier((2, 2, 3), 4)
    assert clf.output_shape == (1, 1, 4)
    x = torch.rand(5, 2, 2, 3, requires_grad=True)
    assert clf(x).shape == (5, 1, 1, 4)
    loss = clf.loss(x, torch.tensor([0, 1, 2, 3, 0]))
    loss.backward()
    assert x.grad is None
    assert clf.linear.weight.grad is not None and clf.linear.weight.grad.abs().sum() > 0
    assert float(loss.detach()) == pytest.approx(math.log(4))  # zero start: uniform logits


def test_classifier_backwards_formula_and_label_check():
    clf = Classifier((1, 2, 3), 3)
    gen = torch.Generator().manual_seed(24)
    with torch.no_grad():
        clf.linear.weight.copy_(torch.randn(3, 6, generator=gen))
        clf.linear.bias.copy_(torch.randn(3, generator=gen))
    labels = torch.tensor([2, 0])
    out = clf.backwards(labels)
    assert out.shape == (2, 1, 2, 3)
    t = torch.full((2, 3), math.log(0.025))
    t[0, 2] = t[1, 0] = math.log(0.95)
    t = t - t.min(dim=1, keepdim=True).values
    expected = (t - clf.linear.bias.detach()) @ clf.linear.weight.detach()
    torch.testing.assert_close(out.reshape(2, 6), expected)
    for bad in ([3], [-1]):
        with pytest.raises(InputError, match="0..2"):
            clf.backwards(torch.tensor(bad))
    with pytest.raises(SpecError, match=r"C\(1\)"):
        Classifier((1, 1, 2), 1)
