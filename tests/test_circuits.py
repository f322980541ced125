"""EinsumNetwork circuits: structure, exact densities and marginals, EM, objectives, sampling, errors."""

from __future__ import annotations

import math

import pytest
import torch

from deepmix.errors import ConfigError, InputError, SpecError
from deepmix.models import (EinsumNetwork, RegionGraph, poon_domingos, poon_domingos_graph, rat_spn,
                            random_binary_trees)
from deepmix.training import fit_density
from deepmix.training.objectives import score_matching

F64 = torch.float64


def _randomise(model: EinsumNetwork, seed: int, scale: float = 1.0) -> EinsumNetwork:
    """Random weights (far from uniform) so that tests see a non-trivial circuit."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "var_raw":
                p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def _grid(lo: float, hi: float, n: int) -> tuple[torch.Tensor, float]:
    t = torch.linspace(lo, hi, n, dtype=F64)
    xx, yy = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([xx.flatten(), yy.flatten()], 1), float(t[1] - t[0])


# -- structure -----------------------------------------------------------------------------------

def test_parameter_counts_match_the_reference_graphs():
    assert poon_domingos(28, 28, [7], 10).num_parameters() == 211_986
    assert rat_spn(784, 3, 20, 10).num_parameters() == 435_620
    # leaves: D * K * R * 2; every partition K*K*K_out; the root mixes R repetitions
    assert rat_spn(8, 2, 3, 4).num_parameters() == 8 * 4 * 3 * 2 + 3 * (2 * 64 + 16) + 3


def test_builders_give_smooth_decomposable_reproducible_graphs():
    g = poon_domingos_graph(28, 28, [7])
    assert len(g.scopes) == 100 and len(g.partitions) == 200 and len(g.leaves) == 16
    assert sorted(len(g.scopes[r]) for r in g.leaves) == [49] * 16
    a = random_binary_trees(20, 2, 4, seed=1)
    b = random_binary_trees(20, 2, 4, seed=1)
    c = random_binary_trees(20, 2, 4, seed=2)
    assert a.scopes == b.scopes and a.partitions == b.partitions
    assert a.scopes != c.scopes
    assert len(a.leaves) == 4 * 4 and a.num_replicas == 4
    for graph in (a, g):  # validate() checked these; check them independently here
        for p, left, right in graph.partitions:
            sl, sr = set(graph.scopes[left]), set(graph.scopes[right])
            assert not sl & sr and sl | sr == set(graph.scopes[p])
    fine = poon_domingos_graph(4, 4, [2, 1])
    assert sorted(len(fine.scopes[r]) for r in fine.leaves) == [1] * 16


@pytest.mark.parametrize("num_var, scopes, partitions, message", [
    (2, [(0, 1), (0, 1), (1,)], [(0, 1, 2)], "not decomposable"),
    (3, [(0, 1, 2), (0,), (1,)], [(0, 1, 2)], "not smooth"),
    (2, [(0, 1), (0,), (1,), (1,)], [(0, 1, 2)], "not reachable"),
    (2, [(0,), (1,)], [], "root scope"),
    (2, [(0, 1), (0,), (1,)], [(0, 1, 5)], "does not exist"),
    (2, [(0, 1), (0,), (1,)], [(0, 1, 2), (1, 0, 2)], "not decomposable"),
    (2, [(0, 1), (0,), (1,), (0, 1)], [(0, 1, 2), (3, 1, 2), (1, 3, 2)], "not (smooth|decomposable)"),
    (2, [(0, 3), (0,), (3,)], [(0, 1, 2)], "outside"),
])
def test_invalid_region_graphs_are_rejected(num_var, scopes, partitions, message):
    with pytest.raises(SpecError, match=message):
        RegionGraph(num_var, scopes, partitions, 0)


def test_overlapping_leaves_need_different_replicas():
    scopes, parts = [(0, 1), (0,), (1,), (0,), (1,)], [(0, 1, 2), (0, 3, 4)]
    with pytest.raises(SpecError, match="overlap"):
        RegionGraph(2, scopes, parts, 0)
    g = RegionGraph(2, scopes, parts, 0, replicas={3: 1, 4: 1})
    assert g.num_replicas == 2
    m = _randomise(EinsumNetwork(g, 2, dtype=F64), seed=12)
    pts, h = _grid(-9.0, 9.0, 361)
    assert abs(float(m.log_prob(pts).detach().exp().sum()) * h * h - 1.0) < 1e-3


def test_invalid_builder_and_network_options_are_rejected():
    with pytest.raises(SpecError, match="2\\*\\*depth"):
        random_binary_trees(3, 2, 1)
    with pytest.raises(SpecError, match="no partition"):
        EinsumNetwork(RegionGraph(1, [(0,)], [], 0))
    with pytest.raises(ConfigError, match="init"):
        rat_spn(4, 1, 1, 2, init="zeros")
    with pytest.raises(ConfigError, match="min_var"):
        rat_spn(4, 1, 1, 2, min_var=1.0, max_var=0.5)


def test_bad_inputs_get_clear_errors():
    m = rat_spn(4, 1, 2, 3)
    with pytest.raises(InputError, match=r"shape \(5, 3\)"):
        m.log_prob(torch.zeros(5, 3))
    with pytest.raises(InputError, match="NaN"):
        m.log_prob(torch.tensor([[0.0, float("nan"), 0.0, 0.0]]))
    with pytest.raises(InputError, match="mask"):
        m.log_prob(torch.zeros(2, 4), mask=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(InputError, match="one sample per row"):
        m.sample(3, condition=(torch.zeros(2, 4), torch.ones(2, 4, dtype=torch.bool)))
    with pytest.raises(ConfigError, match="em_update"):
        m.em_update()
    # NaN at a missing entry is fine: it is marginalised
    x = torch.tensor([[0.1, float("nan"), 0.2, 0.3]])
    mask = torch.tensor([[True, False, True, True]])
    assert torch.isfinite(m.log_prob(x, mask)).all()


# -- exact densities -------------------------------------------------------------------------------

def test_rat_spn_integrates_to_one_and_full_marginal_is_zero():
    m = _randomise(rat_spn(2, 1, 3, 4, max_var=1.0, dtype=F64), seed=0)
    pts, h = _grid(-9.0, 9.0, 451)
    total = float(m.log_prob(pts).detach().exp().sum()) * h * h
    assert abs(total - 1.0) < 1e-3
    x = torch.randn(7, 2, dtype=F64)
    torch.testing.assert_close(m.log_prob(x, torch.zeros(7, 2, dtype=torch.bool)),
                               torch.zeros(7, dtype=F64), atol=1e-12, rtol=0)


def test_pd_marginal_equals_numerical_integration():
    # 1 x 3 image: variables 0, 1, 2; marginalise variable 2 and integrate it out numerically
    m = _randomise(poon_domingos(1, 3, [1], 3, max_var=1.0, dtype=F64), seed=1)
    t = torch.linspace(-9, 9, 3001, dtype=F64)
    for x01 in ([0.3, -0.7], [1.5, 0.2]):
        pts = torch.cat([torch.tensor(x01, dtype=F64).expand(len(t), 2), t[:, None]], 1)
        numeric = torch.trapezoid(m.log_prob(pts).detach().exp(), t)
        mask = torch.tensor([[True, True, False]])
        exact = m.log_prob(pts[:1], mask).detach().exp()[0]
        assert abs(float(numeric / exact) - 1.0) < 1e-6


def test_closed_form_score_and_laplacian_match_autograd_and_finite_differences():
    for m in (_randomise(rat_spn(5, 2, 2, 3, dtype=F64), seed=2),
              _randomise(poon_domingos(2, 3, [1], 2, dtype=F64), seed=3),
              _randomise(poon_domingos(2, 2, [1], 2, num_dims=3, dtype=F64), seed=4)):
        D = m.num_var * m.num_dims
        x = torch.randn(4, D, dtype=F64, generator=torch.Generator().manual_seed(5))
        s, lap = m.score_and_laplacian(x)
        xg = x.clone().requires_grad_(True)
        s_auto = torch.autograd.grad(m.log_prob(xg).sum(), xg, create_graph=True)[0]
        lap_auto = sum(torch.autograd.grad(s_auto[:, d].sum(), xg, retain_graph=True)[0][:, d]
                       for d in range(D))
        torch.testing.assert_close(s, s_auto, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(lap, lap_auto, rtol=1e-10, atol=1e-10)
        eps = 1e-6
        for d in range(D):
            e = torch.zeros_like(x)
            e[:, d] = eps
            fd = (m.log_prob(x + e) - m.log_prob(x - e)) / (2 * eps)
            torch.testing.assert_close(s[:, d].detach(), fd.detach(), rtol=1e-5, atol=1e-7)
        # the SM loss and its parameter gradient: closed form == per-dimension autograd
        a, b = score_matching(m, x), score_matching(m, x, method="autograd")
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
        params = list(m.parameters())
        for ga, gb in zip(torch.autograd.grad(a, params), torch.autograd.grad(b, params)):
            torch.testing.assert_close(ga, gb, rtol=1e-8, atol=1e-9)


def test_multichannel_inputs_accept_both_layouts():
    m = _randomise(poon_domingos(2, 2, [1], 2, num_dims=3, dtype=F64), seed=6)
    x = torch.randn(5, 4, 3, dtype=F64)
    torch.testing.assert_close(m.log_prob(x), m.log_prob(x.reshape(5, 12)))
    assert m.sample(3).shape == (3, 4, 3)


# -- EM ------------------------------------------------------------------------------------------------

def _two_cluster_data(n: int, seed: int, D: int = 4) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    lab = torch.randint(0, 2, (n, 1), generator=gen).to(F64)
    return (lab * 3.0 - 1.5) + 0.5 * torch.randn(n, D, generator=gen, dtype=F64)


def test_batch_em_never_decreases_the_likelihood_and_respects_variance_bounds():
    x = _two_cluster_data(200, 0)
    m = rat_spn(4, 2, 2, 3, init="em", min_var=1e-3, max_var=5.0, dtype=F64)
    lls = [m.em_step(x) for _ in range(50)]
    lls.append(float(m.log_prob(x).detach().mean()))
    diffs = torch.tensor(lls).diff()
    assert float(diffs.min()) >= -1e-9
    assert lls[-1] > lls[0] + 1.0
    var = m.variance.detach()
    assert float(var.min()) >= 1e-3 - 1e-12 and float(var.max()) <= 5.0 + 1e-12


def test_em_statistics_are_posteriors_and_full_stepsize_equals_batch_em():
    x = _two_cluster_data(50, 1)
    m = _randomise(rat_spn(4, 1, 3, 2, dtype=F64), seed=7)
    m.em_accumulate(x)
    # responsibilities over (replica, k) sum to one per sample and variable
    torch.testing.assert_close(m._em_stats["leaf_n"].sum((1, 2)), torch.full((4,), 50.0, dtype=F64))
    m2 = _randomise(rat_spn(4, 1, 3, 2, dtype=F64), seed=7)
    m.em_update()
    m2.em_step(x, stepsize=1.0)
    for a, b in zip(m.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b)


def test_em_through_the_gradient_equals_the_classical_mixture_m_step():
    # D = 2, depth 1, R = 1: p(x) = sum_ij W_ij N(x0; mu0_i, v0_i) N(x1; mu1_j, v1_j), a mixture
    # of K*K product components whose classical EM update is written out below.
    m = _randomise(rat_spn(2, 1, 1, 3, min_var=1e-6, max_var=50.0, dtype=F64), seed=8)
    x = _two_cluster_data(40, 2, D=2)
    (left, right) = m.graph.partitions[0][1:]
    first = m.graph.scopes[left][0]                     # the variable of the "a" child
    W = torch.softmax(next(p for n, p in m.named_parameters() if n.startswith("einsum")), 1)[0, :, 0]
    mu, var = m.mean.detach()[:, 0], m.variance.detach()[:, 0, :, 0]                # (2, K, 1), (2, K)
    mu = mu[..., 0]
    logn = -0.5 * (math.log(2 * math.pi) + var.log() + (x[:, :, None] - mu) ** 2 / var)   # (N, 2, K)
    a, b = logn[:, first], logn[:, 1 - first]
    r = torch.softmax((W.log().view(3, 3) + a[:, :, None] + b[:, None, :]).flatten(1), 1).view(-1, 3, 3)
    W_new = r.sum(0) / r.sum()
    ra, rb = r.sum(2), r.sum(1)                        # (N, K) responsibilities of the factors
    mean_new = torch.zeros(2, 3, dtype=F64)
    var_new = torch.zeros(2, 3, dtype=F64)
    for var_idx, resp in ((first, ra), (1 - first, rb)):
        nk = resp.sum(0)
        mean_new[var_idx] = (resp * x[:, var_idx:var_idx + 1]).sum(0) / nk
        var_new[var_idx] = (resp * (x[:, var_idx:var_idx + 1] - mean_new[var_idx]) ** 2).sum(0) / nk
    m.em_step(x)
    W_em = torch.softmax(next(p for n, p in m.named_parameters() if n.startswith("einsum")), 1)[0, :, 0]
    torch.testing.assert_close(W_em, W_new.flatten(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(m.mean.detach()[:, 0, :, 0], mean_new, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(m.variance.detach()[:, 0, :, 0], var_new, rtol=1e-6, atol=1e-10)


def test_online_em_improves_a_pd_circuit():
    x = _two_cluster_data(300, 3, D=6)
    m = poon_domingos(2, 3, [1], 3, init="em", min_var=1e-3, max_var=5.0, dtype=F64)
    before = float(m.log_prob(x).detach().mean())
    hist = m.fit_em(x, epochs=4, batch_size=30, stepsize=0.1, frequency=1)
    assert len(hist) == 4 and hist[-1] > hist[0]
    assert float(m.log_prob(x).detach().mean()) > before + 2.0


# -- gradient objectives -------------------------------------------------------------------------------

@pytest.mark.parametrize("objective, K", [("mle", 2), ("sm", 1), ("ssm", 1)])
def test_gradient_objectives_recover_a_gaussian(objective, K):
    # SM/SSM use K = 1: with K > 1 a component away from the data keeps an unidentified weight
    # (weight blindness, spec section 8) and the fitted density leaks mass there.
    gen = torch.Generator().manual_seed(11)
    mean, sd = torch.tensor([2.0, -1.0], dtype=F64), torch.tensor([0.5, 1.0], dtype=F64)
    data = mean + sd * torch.randn(400, 2, generator=gen, dtype=F64)
    test = mean + sd * torch.randn(400, 2, generator=gen, dtype=F64)
    m = rat_spn(2, 1, 2, K, min_var=1e-3, max_var=5.0, dtype=F64, seed=1)
    before = float(m.log_prob(test).detach().mean())
    fit_density(m, data, objective, epochs=150, lr=0.05, clip=10.0, seed=0)
    after = float(m.log_prob(test).detach().mean())
    entropy = float(-(0.5 * math.log(2 * math.pi * math.e) + sd.log()).sum())   # about -2.145
    assert after > before + 0.5 and after > entropy - 0.1, (before, after, entropy)
    s = m.sample(4000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(s.mean(0), mean, atol=0.1, rtol=0)
    torch.testing.assert_close(s.std(0), sd, atol=0.1, rtol=0)


def test_ssm_runs_on_a_pd_circuit_and_lowers_its_loss():
    x = _two_cluster_data(200, 4, D=4)
    m = poon_domingos(2, 2, [1], 3, min_var=1e-2, max_var=5.0, dtype=F64)
    hist = fit_density(m, x, "ssm", epochs=30, lr=0.05, batch_size=50, clip=10.0)
    assert hist[-1] < hist[0]


# -- sampling and completion ---------------------------------------------------------------------------

def test_samples_and_conditional_samples_match_the_density():
    m = _randomise(rat_spn(2, 1, 3, 3, max_var=1.0, dtype=F64), seed=9)
    pts, h = _grid(-9.0, 9.0, 361)
    p = m.log_prob(pts).detach().exp() * h * h
    mean = (p[:, None] * pts).sum(0)
    cov = ((pts - mean).T * p) @ (pts - mean)
    s = m.sample(20_000, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(s.mean(0), mean, atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(s.T), cov, atol=0.1, rtol=0.05)
    # p(x1 | x0 = c): compare the conditional sample mean with numerical integration
    c = float(mean[0])
    t = torch.linspace(-9, 9, 2001, dtype=F64)
    joint = m.log_prob(torch.stack([torch.full_like(t, c), t], 1)).detach().exp()
    cond_mean = float(torch.trapezoid(joint * t, t) / torch.trapezoid(joint, t))
    n = 20_000
    x = torch.stack([torch.full((n,), c, dtype=F64), torch.full((n,), float("nan"), dtype=F64)], 1)
    mask = torch.tensor([True, False]).expand(n, 2)
    cs = m.sample(condition=(x, mask), generator=torch.Generator().manual_seed(2))
    assert torch.all(cs[:, 0] == c)
    assert abs(float(cs[:, 1].mean()) - cond_mean) < 0.05


def test_completion_keeps_observed_values_and_mpe_is_deterministic():
    m = _randomise(poon_domingos(3, 3, [1], 3), seed=10)
    x = torch.randn(6, 9)
    mask = torch.rand(6, 9, generator=torch.Generator().manual_seed(0)) > 0.5
    x_missing = torch.where(mask, x, torch.full_like(x, float("nan")))
    a = m.complete(x_missing, mask)
    b = m.complete(x_missing, mask)
    assert torch.isfinite(a).all()
    assert torch.equal(a[mask], x[mask]) and torch.equal(a, b)
    # MPE fills in leaf means, so every filled value is one of the variable's component means
    means = m.mean.detach()[:, 0, :, 0]                                   # (D, K)
    filled = (a[:, :, None] - means[None]).abs().min(-1).values
    assert float(filled[~mask].max()) < 1e-6
    c = m.complete(x_missing, mask, method="sample", generator=torch.Generator().manual_seed(0))
    assert torch.equal(c[mask], x[mask]) and not torch.equal(c, a)


# -- Binomial leaves (the thesis' image setup) -----------------------------------------------------------

def test_binomial_leaves_parameter_count_normalisation_and_moments():
    assert poon_domingos(28, 28, [7], 10, leaf="binomial").num_parameters() == 204_146
    n = 6
    m = _randomise(rat_spn(2, 1, 3, 3, leaf="binomial", total_count=n, dtype=F64), seed=13, scale=3.0)
    t = torch.arange(n + 1, dtype=F64)
    pts = torch.cartesian_prod(t, t)
    p = m.log_prob(pts).detach().exp()
    assert abs(float(p.sum()) - 1.0) < 1e-12                       # a discrete distribution
    mean = (p[:, None] * pts).sum(0)
    s = m.sample(20_000, generator=torch.Generator().manual_seed(3))
    assert torch.all(s == s.round()) and float(s.min()) >= 0 and float(s.max()) <= n
    torch.testing.assert_close(s.mean(0), mean, atol=0.06, rtol=0)
    # the marginal of x0 equals the sum over x1
    mask = torch.tensor([True, False]).expand(n + 1, 2)
    marg = m.log_prob(torch.stack([t, torch.zeros_like(t)], 1), mask).detach().exp()
    torch.testing.assert_close(marg, p.view(n + 1, n + 1).sum(1), rtol=1e-10, atol=1e-12)
    with pytest.raises(InputError, match=r"\[0, 6\]"):
        m.log_prob(torch.tensor([[7.0, 1.0]], dtype=F64))


def test_binomial_em_is_monotone_and_score_matches_autograd():
    gen = torch.Generator().manual_seed(4)
    x = torch.binomial(torch.full((200, 4), 20.0, dtype=F64),
                       torch.where(torch.rand(200, 1, generator=gen) < 0.5, 0.2, 0.7).to(F64).expand(200, 4),
                       generator=gen)
    m = rat_spn(4, 2, 2, 3, leaf="binomial", total_count=20, init="em", dtype=F64)
    lls = [m.em_step(x) for _ in range(30)] + [float(m.log_prob(x).detach().mean())]
    assert float(torch.tensor(lls).diff().min()) >= -1e-9 and lls[-1] > lls[0] + 5.0
    m = _randomise(poon_domingos(2, 2, [1], 2, leaf="binomial", total_count=20, dtype=F64), seed=5)
    xc = x[:5] + 0.3                                                # continuous x in the score (thesis)
    s, lap = m.score_and_laplacian(xc)
    xg = xc.clone().requires_grad_(True)
    s_auto = torch.autograd.grad(m.log_prob(xg).sum(), xg, create_graph=True)[0]
    lap_auto = sum(torch.autograd.grad(s_auto[:, d].sum(), xg, retain_graph=True)[0][:, d] for d in range(4))
    torch.testing.assert_close(s, s_auto, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(lap, lap_auto, rtol=1e-9, atol=1e-10)
    mask = torch.tensor([True, False, True, False]).expand(5, 4)
    filled = m.complete(xc, mask)                                   # Binomial modes at the missing pixels
    assert torch.equal(filled[mask], xc[mask]) and torch.equal(filled[~mask], filled[~mask].round())


def test_dtype_conversion_and_state_dict_round_trip():
    m = _randomise(rat_spn(6, 2, 2, 3, seed=3), seed=14)
    x = torch.randn(5, 6)
    ref = m.log_prob(x).detach()
    m64 = m.double()
    torch.testing.assert_close(m64.log_prob(x.double()).detach().float(), ref, rtol=1e-5, atol=1e-4)
    other = rat_spn(6, 2, 2, 3, seed=3, dtype=F64)
    other.load_state_dict(m64.state_dict())
    torch.testing.assert_close(other.log_prob(x.double()), m64.log_prob(x.double()))
