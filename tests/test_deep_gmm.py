"""The deep GMM family: the acceptance checks of the spec (shared/spec/deep-gmm.md, section 7)."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from torch.distributions import MultivariateNormal

import deepmix
from deepmix.errors import ConfigError, DeepmixError, InputError, NoDensityError, SpecError
from deepmix.layers.folding import Folding
from deepmix.metrics import bits_per_dim
from deepmix.models import DeepGMM, DeepGMMConfig
from deepmix.models.deep_gmm import (DiagonalTransform, FullTransform, HalfConvolution,
                                     SharedBlockTransform, UnsharedBlockTransform, fold,
                                     parse_layers, unfold)
from deepmix.utils.config import config_from_dict, config_to_dict

D64 = torch.float64


def _randomise(module: torch.nn.Module, seed: int, scale: float = 0.3) -> None:
    """Random, well-conditioned parameters: matrices near the identity, kernels and biases
    small."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _net(shape, fold_, layers, seed=0, **kw) -> DeepGMM:
    m = DeepGMM(DeepGMMConfig(shape=shape, fold=fold_, layers=layers, **kw))
    _randomise(m, seed)
    return m


def _all_paths(model: DeepGMM) -> torch.Tensor:
    ranges = [range(layer.n_values) for layer in model.layers for _ in range(layer.n_vars)]
    return torch.tensor(list(itertools.product(*ranges)), dtype=torch.long)


# ------------------------------------------------------------------------ 1. transforms
def _transforms():
    grid, Cb = (2, 3), 4
    return [
        ("full", FullTransform(grid, Cb, 3), torch.tensor([[2]])),
        ("diag", DiagonalTransform(grid, Cb, 2), torch.tensor([[1]])),
        ("bd", SharedBlockTransform(grid, Cb, 3), torch.tensor([[1]])),
        ("ubd", UnsharedBlockTransform(grid, Cb, 3), torch.tensor([[0, 2, 1, 1, 2, 0]])),
        ("hc-even", HalfConvolution(grid, Cb, 1, 3, parity=0), torch.tensor([[0]])),
        ("hc-odd", HalfConvolution(grid, Cb, 2, 3, parity=1), torch.tensor([[1]])),
        ("hc-bias", HalfConvolution(grid, Cb, 2, 3, parity=0, bias=True), torch.tensor([[1]])),
    ]


@pytest.mark.parametrize("index", range(7))
def test_logdet_inverse_and_dense_jacobian(index):
    name, layer, c = _transforms()[index]
    _randomise(layer, index)
    P, Cb = layer.P, layer.Cb
    g = torch.Generator().manual_seed(10 + index)
    h = torch.randn(5, P, Cb, generator=g, dtype=D64)
    cc = c.expand(5, -1)
    # Inverse of forward is the identity.
    torch.testing.assert_close(layer.inverse(layer(h, cc), cc), h, rtol=0, atol=1e-10)
    # forward_all agrees with forward for every value (shared: the whole layer; unshared:
    # every position).
    allv = layer.forward_all(h)
    for v in range(layer.n_values):
        cv = torch.full((5, layer.n_vars), v)
        torch.testing.assert_close(allv[v], layer(h, cv))
    # log|det| against slogdet of the autograd Jacobian of the flattened map.
    J = torch.autograd.functional.jacobian(lambda v: layer(v.reshape(1, P, Cb), c).reshape(-1),
                                           h[0].reshape(-1))
    sign, logabs = torch.linalg.slogdet(J)
    torch.testing.assert_close(layer.log_det(c), logabs.reshape(1), rtol=1e-8, atol=1e-12)
    if name.startswith("hc"):
        assert float(sign) == 1.0 and abs(float(logabs)) < 1e-12      # det exactly 1
        assert float(layer.log_det(c)) == 0.0


def test_logdet_is_cached_per_parameter_state():
    layer = SharedBlockTransform((2, 2), 2, 2)
    with torch.no_grad():
        first = layer.logdet_table()
        assert layer.logdet_table() is first                     # cached
        layer.weight.mul_(2.0)
        again = layer.logdet_table()
    torch.testing.assert_close(again, first + 4 * 2 * math.log(2.0))


def test_float32_inverse():
    layer = SharedBlockTransform((2, 2), 4, 2, dtype=torch.float32)
    _randomise(layer, 3)
    h = torch.randn(4, 4, 4)
    c = torch.tensor([[0], [1], [1], [0]])
    torch.testing.assert_close(layer.inverse(layer(h, c), c), h, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------ 2. folding
def test_fold_order_and_round_trip():
    # A 2x2x2 image, r = 2: one position; row-in-patch, column-in-patch, channel fastest.
    img = torch.arange(8.0).reshape(1, 2, 2, 2)          # value = 4*row + 2*col + channel
    assert fold(img, 2).tolist() == [[[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]]]
    x = torch.randn(3, 4, 6, 3, dtype=D64)
    h = fold(x, 2)
    assert h.shape == (3, 6, 12)
    torch.testing.assert_close(unfold(h, 2, (4, 6)), x, rtol=0, atol=0)
    # The same order as the DCGMM folding layer F(r, r, r, r).
    ref = Folding((4, 6, 3), 2, 2, 2, 2)(x)
    torch.testing.assert_close(h, ref.reshape(3, 6, 12), rtol=0, atol=0)
    with pytest.raises(SpecError, match="does not tile"):
        fold(torch.zeros(1, 5, 4, 1), 2)


# ------------------------------------------------------------------------ 3. path densities
def test_path_scores_are_gaussians():
    m = _net((2, 2, 2), 1, "hc3,bd2,hc3,ubd2", seed=1)         # P = 4, Cb = 2, 32 paths
    D = m.D
    paths = _all_paths(m)
    assert len(paths) == 32 and math.isclose(m.n_paths(), 32)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, D, generator=g, dtype=D64)
    for c in paths:
        cc = c[None]

        def analysis(v):
            return m.transform(m.fold(v.reshape(1, D)), cc)[0].reshape(-1)

        A = torch.autograd.functional.jacobian(analysis, torch.zeros(D, dtype=D64))
        b = analysis(torch.zeros(D, dtype=D64))
        Omega = torch.linalg.inv(A)                # generation: x = Omega (eps - b)
        mvn = MultivariateNormal(-Omega @ b, covariance_matrix=Omega @ Omega.T)
        s = m.path_score(x, cc.expand(6, -1)) - m.log_prior
        torch.testing.assert_close(s, mvn.log_prob(x), rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------ 4. normalisation
def test_two_d_net_integrates_to_one():
    m = _net((1, 1, 2), 1, "full2,full3,full2", seed=4)
    assert m.n_paths() == 12
    t = torch.linspace(-12, 12, 600, dtype=D64)
    xx, yy = torch.meshgrid(t, t, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    with torch.no_grad():
        mass = m.log_prob(pts).exp().sum() * (t[1] - t[0]) ** 2
    assert abs(float(mass) - 1.0) < 1e-3


def test_one_d_net_integrates_to_one():
    m = _net((1, 1, 1), 1, "full2,diag3,full2", seed=5)
    t = torch.linspace(-12, 12, 20001, dtype=D64)
    with torch.no_grad():
        mass = m.log_prob(t[:, None]).exp().sum() * (t[1] - t[0])
    assert abs(float(mass) - 1.0) < 1e-3


# ------------------------------------------------------------------------ 5. samples
def test_sample_moments_and_path_frequencies():
    m = _net((1, 1, 2), 1, "full2,full3,full2", seed=6)
    paths = _all_paths(m)
    means, covs = [], []
    for c in paths:
        A = torch.autograd.functional.jacobian(
            lambda v: m.transform(m.fold(v.reshape(1, 2)), c[None])[0].reshape(-1),
            torch.zeros(2, dtype=D64))
        b = m.transform(m.fold(torch.zeros(1, 2, dtype=D64)), c[None])[0].reshape(-1)
        Om = torch.linalg.inv(A)
        means.append(-Om @ b)
        covs.append(Om @ Om.T)
    mu = torch.stack(means).mean(0)
    second = torch.stack([S + torch.outer(u, u) for S, u in zip(covs, means)]).mean(0)
    cov = second - torch.outer(mu, mu)
    n = 100_000
    x, c = m.sample_with_paths(n, generator=torch.Generator().manual_seed(7))
    se = (cov.diagonal() / n).sqrt()
    assert ((x.mean(0) - mu).abs() < 5 * se).all()
    emp = torch.cov(x.T)
    assert ((emp - cov).abs() < 5 * cov.diagonal().max() * math.sqrt(2.0 / n) * 3).all()
    # Path frequencies are uniform: 12 paths, each 1/12.
    ids = torch.tensor([int("".join(map(str, r.tolist())), 4) for r in c[:20000]])
    counts = torch.bincount(ids)
    counts = counts[counts > 0].double() / 20000
    assert len(counts) == 12
    assert ((counts - 1 / 12).abs() < 5 * math.sqrt((1 / 12) * (11 / 12) / 20000)).all()
    assert m.sample(3, generator=torch.Generator().manual_seed(1)).shape == (3, 2)


# ------------------------------------------------------------------------ 6. bounds
def test_lower_exact_upper_bounds():
    m = _net((4, 4, 1), 2, "hc3,bd2,ubd2,bd3", seed=8)        # 2*16*3 = 96 paths
    x = torch.randn(20, 16, generator=torch.Generator().manual_seed(9), dtype=D64)
    with torch.no_grad():
        exact = m.log_prob(x)
        lb = m.log_prob_lower_bound(x, method="exact")
        ub = m.log_prob_upper_bound_approx(x, method="exact")
        lb_coord = m.log_prob_lower_bound(x, method="coordinate",
                                          generator=torch.Generator().manual_seed(1))
        # max_c log p_c(x) by brute force
        paths = _all_paths(m)
        per_path = torch.stack([m.path_score(x, c[None].expand(20, -1)) for c in paths])
    assert (lb <= exact + 1e-10).all() and (exact <= ub + 1e-10).all()
    torch.testing.assert_close(ub - lb, torch.full_like(lb, math.log(96)), rtol=0, atol=1e-12)
    torch.testing.assert_close(ub, per_path.max(0).values - m.log_prior)
    torch.testing.assert_close(exact, torch.logsumexp(per_path, 0))
    assert (lb_coord <= lb + 1e-10).all()


# ------------------------------------------------------------------------ 7. factorisation
@pytest.mark.parametrize("layers", ["ubd2,ubd2", "hc3,ubd2,ubd2", "ubd2,bd1,ubd2,diag1"])
def test_unshared_factorisation_equals_brute_force(layers):
    m = _net((2, 2, 2), 1, layers, seed=11)                    # P = 4, m = 2, 256 paths
    assert m.factorised_from() is not None and math.isclose(m.n_paths(), 256)
    x = torch.randn(7, 8, generator=torch.Generator().manual_seed(12), dtype=D64)
    h0 = m.fold(x)
    brute = torch.logsumexp(torch.stack([m.path_score(x, c[None].expand(7, -1))
                                         for c in _all_paths(m)]), 0)
    torch.testing.assert_close(m._factorised(h0), brute, rtol=1e-10, atol=1e-10)
    # The per-position argmax is the brute-force best path.
    c, best, _ = m._factorised_all(h0)
    per_path = torch.stack([m.path_score(x, p[None].expand(7, -1)) for p in _all_paths(m)])
    torch.testing.assert_close(best, per_path.max(0).values, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(m.path_score(x, c), best, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(m.log_prob(x), brute, rtol=1e-10, atol=1e-10)


def test_exact_density_of_a_large_unshared_stack_and_no_density_otherwise():
    m = _net((8, 8, 1), 2, "hc3,ubd4,ubd4", seed=13)           # 4^32 paths, factorises
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(1), dtype=D64)
    with torch.no_grad():
        lp = m.log_prob(x)
        lb = m.log_prob_lower_bound(x)                         # auto: exact per position
        lb_coord = m.log_prob_lower_bound(x, method="coordinate",
                                          generator=torch.Generator().manual_seed(2))
        c, _ = m.search(x)
    assert (lb <= lp + 1e-9).all() and (lp <= lb + m.log_n_paths + 1e-9).all()
    assert (lb_coord <= lb + 1e-9).all()
    torch.testing.assert_close(m.path_score(x, c), lb)
    coupled = _net((8, 8, 1), 2, "ubd4,hc3,ubd4", seed=13)
    with pytest.raises(NoDensityError, match="log_prob_lower_bound"):
        coupled.log_prob(x)


# ------------------------------------------------------------------------ 8. E step
@pytest.mark.parametrize("layers,update", [("hc3,bd3,hc3,bd2,diag2", "joint"),
                                           ("ubd2,ubd2,bd2", "joint"),
                                           ("ubd2,hc3,ubd2", "joint"),
                                           ("ubd2,hc3,ubd2", "sequential")])
def test_e_step_exact_and_coordinate(layers, update):
    m = _net((2, 2, 2), 1, layers, seed=14, coupled_update=update)
    N = 40
    x = torch.randn(N, 8, generator=torch.Generator().manual_seed(15), dtype=D64) * 1.5
    paths = _all_paths(m)
    with torch.no_grad():
        per_path = torch.stack([m.path_score(x, c[None].expand(N, -1)) for c in paths])
        c_ex, s_ex = m.search(x, method="exact")
        start = m.random_paths(N, torch.Generator().manual_seed(16))
        s_start = m.path_score(x, start)
        c1, s1 = m._coordinate(m.fold(x), start, 1)
        c_co, s_co = m.search(x, start, method="coordinate",
                              generator=torch.Generator().manual_seed(17))
    torch.testing.assert_close(s_ex, per_path.max(0).values)
    torch.testing.assert_close(m.path_score(x, c_ex), s_ex)
    torch.testing.assert_close(m.path_score(x, c_co), s_co)
    assert (s1 >= s_start - 1e-10).all()                   # one pass never lowers a score
    assert (s_co >= s_start - 1e-10).all()                 # nor the whole E step
    agree = float((s_co >= s_ex - 1e-9).double().mean())
    print(f"coordinate agrees with exact on {agree:.0%} of samples ({layers}, {update})")
    assert agree > 0.3


@pytest.mark.parametrize("prior", ["uniform", "factorised", "gating"])
def test_beam_search_is_exact_when_wide_and_a_valid_bound_when_narrow(prior):
    m = _net((4, 4, 1), 2, "hc3x2,bd3,bd2,diag2", seed=21, prior=prior)     # 24 paths
    N = 50
    x = torch.randn(N, 16, generator=torch.Generator().manual_seed(22), dtype=D64)
    with torch.no_grad():
        c_ex, s_ex = m.search(x, method="exact")
        m.config.beam_width = 24
        c_wide, s_wide = m.search(x, method="beam")
        m.config.beam_width = 2
        c_b, s_b = m.search(x, method="beam")
        start = m.random_paths(N, torch.Generator().manual_seed(23))
        c_s, s_s = m.search(x, start, method="beam")
        s_start = m.path_score(x, start)
    assert torch.equal(c_wide, c_ex)
    torch.testing.assert_close(s_wide, s_ex)
    torch.testing.assert_close(m.path_score(x, c_b), s_b)    # the score of the path returned
    assert (s_b <= s_ex + 1e-10).all() and (s_b < s_ex - 1e-6).any()
    assert (s_s >= s_start - 1e-10).all() and (s_s >= s_b - 1e-10).all()


def test_beam_search_refuses_unshared_layers_and_a_bad_width():
    m = _net((2, 2, 2), 1, "ubd2,bd2", seed=1)
    with pytest.raises(ConfigError, match="beam search takes shared layers only"):
        m.search(torch.zeros(3, 8, dtype=D64), method="beam")
    with pytest.raises(ConfigError, match="beam_width must be a positive integer"):
        DeepGMMConfig(shape=(2, 2, 2), fold=1, layers="bd2", beam_width=0)


# ------------------------------------------------------------------------ 9. hard EM
def _blobs(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[-3.0, 0.0], [3.0, 1.0], [0.0, 4.0], [0.5, -3.0]], dtype=D64)
    z = torch.randint(4, (n,), generator=g)
    A = torch.tensor([[1.0, 0.4], [0.0, 0.5]], dtype=D64)
    return centres[z] + torch.randn(n, 2, generator=g, dtype=D64) @ A


def test_hard_em_is_monotone_with_exact_search_and_full_batch():
    x = _blobs()
    m = DeepGMM(DeepGMMConfig(shape=(1, 1, 2), fold=1, layers="full2,full2", search="exact"))
    obj = deepmix.training.make_objective("deep-gmm", "hard-em", {
        "lr": 0.02, "first_m_epochs": 150, "m_epochs": 150, "min_usage": 0,
        "final_updates": 50})
    deepmix.training.fit(m, x, obj, epochs=150 * 5, batch_size=None)
    lb = obj.e_scores
    assert len(lb) == 5
    for a, b in zip(lb, lb[1:]):
        assert b >= a - 1e-6 * abs(a)
    # The final paths' mean score equals the model's LB with exact search.
    assert float(m.log_prob_lower_bound(x).mean()) >= lb[-1] - 1e-6 * abs(lb[-1])


def test_hard_em_with_the_default_minibatch_schedule_and_resume(tmp_path):
    x = _blobs(300, seed=1)
    cfg = DeepGMMConfig(shape=(1, 1, 2), fold=1, layers="full2,full2", seed=3)
    options = {"lr": 0.01, "first_m_epochs": 2, "m_epochs": 2}
    a = DeepGMM(cfg)
    obj = deepmix.training.make_objective("deep-gmm", "hard-em", options)
    deepmix.training.fit(a, x, obj, epochs=8, batch_size=50, out_dir=tmp_path / "a")
    for u, v in zip(obj.e_scores, obj.e_scores[1:]):
        assert v >= u - 0.05                   # documented tolerance, nats per image
    # Every epoch's row holds the last E step's bound (E steps at epochs 0, 2, 4, 6).
    rows = [json.loads(l) for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("e_step_lower_bound") for r in rows] == [None] + [
        obj.e_scores[(e - 1) // 2] for e in range(1, 9)]
    assert [r["reseeded"] for r in rows[1:]] == [obj.reseeded[(e - 1) // 2] for e in range(1, 9)]
    # Interrupted after 3 epochs and resumed: the same model, bit for bit.
    b = DeepGMM(cfg)
    deepmix.training.fit(b, x, deepmix.training.make_objective("deep-gmm", "hard-em", options),
                         epochs=8, batch_size=50, out_dir=tmp_path / "b", stop_after_steps=18)
    b = deepmix.load(tmp_path / "b")
    deepmix.training.fit(b, x, "hard-em", out_dir=tmp_path / "b", resume=True)
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), k
    back = deepmix.load(tmp_path / "a")
    torch.testing.assert_close(back.log_prob(x), a.log_prob(x))


# ------------------------------------------------------------------------ 10. oracle
def test_single_full_layer_m_step_recovers_the_component_moments():
    g = torch.Generator().manual_seed(20)
    n = 2000
    covs = [torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=D64),
            torch.tensor([[0.3, -0.1], [-0.1, 0.5]], dtype=D64)]
    mus = [torch.tensor([2.0, -1.0], dtype=D64), torch.tensor([-1.0, 1.5], dtype=D64)]
    x = torch.cat([MultivariateNormal(u, S).sample((n,)) for u, S in zip(mus, covs)])
    c = torch.cat([torch.zeros(n, 1), torch.ones(n, 1)]).long()
    m = DeepGMM(DeepGMMConfig(shape=(1, 1, 2), fold=1, layers="full2"))
    opt = torch.optim.Adam(m.parameters(), lr=0.02)
    for _ in range(1500):
        opt.zero_grad()
        (-m.path_score(x, c).mean()).backward()
        opt.step()
    layer = m.layers[0]
    for v in range(2):
        xs = x[c[:, 0] == v]
        W, t = layer.weight[v].detach(), layer.bias[v].detach()
        torch.testing.assert_close(W.T @ W, torch.linalg.inv(torch.cov(xs.T, correction=0)),
                                   rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(-torch.linalg.solve(W, t), xs.mean(0), rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------------ 11. units
def test_unit_conversion_matches_the_paper():
    got = [round(bits_per_dim(v, 3072), 2) for v in (4893, 5372, 6384)]
    assert got == [4.70, 4.48, 4.00]
    assert bits_per_dim(0.0, 10, data_range=1.0) == 8.0


# ------------------------------------------------------------------------ 12. gradients, config
def test_gradcheck_through_logdets_and_half_convolutions():
    m = _net((2, 2, 2), 1, "hc3b,bd2,ubd2,hc3", seed=21)                # an HC bias too
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(22), dtype=D64)
    c = m.random_paths(3, torch.Generator().manual_seed(23))
    names = [n for n, _ in m.named_parameters()]

    class PathScore(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self, x, c):
            return self.m.path_score(x, c)

    wrapper = PathScore()

    def score(*ps):
        return torch.func.functional_call(wrapper, {f"m.{k}": v for k, v in zip(names, ps)},
                                          (x, c))

    inputs = tuple(p.detach().clone().requires_grad_(True) for p in m.parameters())
    assert torch.autograd.gradcheck(score, inputs)


def test_config_round_trip_rebuilds_an_identical_model(tmp_path):
    cfg = DeepGMMConfig(shape=(4, 4, 1), fold=2, layers="hc3x2,bd2,ubd3,diag2", seed=4,
                        search="coordinate", gating=True, gate_hidden=5)
    m = DeepGMM(cfg)
    text = json.dumps(config_to_dict(cfg))
    again = DeepGMM(config_from_dict(DeepGMMConfig, json.loads(text)))
    assert config_to_dict(again.config) == config_to_dict(cfg)
    for (k, p), q in zip(m.state_dict().items(), again.state_dict().values()):
        assert torch.equal(p, q), k
    assert m.spec() == "hc3x2,bd2,ubd3,diag2"
    hc = m.layers[0]
    assert hc.n_params() == 2 * 2 * 2 * 9 and m.layers[1].n_params() == 2 * 4 * (16 + 4)
    assert m.layers[2].n_params() == 3 * (16 + 4)
    # The HC bias option: one bias per value and updated channel, in the spec string.
    b = DeepGMM(DeepGMMConfig(shape=(4, 4, 1), fold=2, layers="hc3x2b,bd2"))
    assert b.spec() == "hc3x2b,bd2" and b.layers[0].n_params() == 2 * 2 * 2 * 9 + 2 * 2
    assert [t.bias for t in parse_layers("hc3,hc5b,hc3x2b")] == [False, True, True]


# ------------------------------------------------------------------------ bad input
def test_bad_input_is_one_clear_error():
    with pytest.raises(SpecError, match="does not tile"):
        DeepGMMConfig(shape=(7, 8, 1), fold=2)
    with pytest.raises(SpecError, match="cannot parse 'bx4'"):
        DeepGMMConfig(layers="hc5,bx4")
    with pytest.raises(SpecError, match="non-empty"):
        parse_layers("")
    with pytest.raises(SpecError, match="even number of channels"):
        DeepGMM(DeepGMMConfig(shape=(3, 3, 1), fold=1, layers="hc3"))
    with pytest.raises(SpecError, match="odd kernel"):
        DeepGMM(DeepGMMConfig(shape=(4, 4, 1), fold=2, layers="hc4"))
    m = _net((4, 4, 1), 2, "hc3,bd2", seed=1)
    x = torch.randn(5, 16, dtype=D64)
    bad = x.clone()
    bad[0, 3] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        m.log_prob_lower_bound(bad)
    with pytest.raises(InputError, match="images of shape"):
        m.log_prob(torch.zeros(2, 4, 5, 1))
    # A non-invertible initialisation: constant data and no ridge.
    with pytest.raises(ConfigError, match="not positive definite"):
        m.initialize(torch.zeros(50, 16, dtype=D64), ridge=0.0)
    with torch.no_grad():
        m.layers[1].weight[1].zero_()
    with pytest.raises(ConfigError, match="not invertible"):
        m.log_prob(x)
    with pytest.raises(ConfigError, match="Unknown path search"):
        DeepGMMConfig(search="greedy")
    with pytest.raises(DeepmixError):
        deepmix.training.make_objective("deep-gmm", "hard-em", {"lr": -1})


def test_initialisation_whitens_the_first_block_layer():
    g = torch.Generator().manual_seed(30)
    A = torch.randn(16, 16, generator=g, dtype=D64) * 0.3 + torch.eye(16, dtype=D64)
    x = torch.randn(4000, 16, generator=g, dtype=D64) @ A.T + 2.0
    m = DeepGMM(DeepGMMConfig(shape=(4, 4, 1), fold=2, layers="hc3,bd1"))
    m.initialize(x, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h = m.transform(m.fold(x), torch.zeros(4000, m.n_vars, dtype=torch.long))[0]
    assert float(h.mean(0).abs().max()) < 1e-8           # t = -W mean, perturbed W or not
    cov = torch.cov(h[:, 0].T)
    torch.testing.assert_close(cov, torch.eye(4, dtype=D64), atol=0.1, rtol=0)


# ------------------------------------------------------------------------ commands
def test_train_evaluate_sample_resume_through_the_cli(tmp_path, capsys):
    from deepmix.cli.main import main

    out = tmp_path / "run"
    assert main(["train", "--model", "deep-gmm", "--data", "digits", "--layers", "hc3,bd2",
                 "--fold", "2", "--dequantize", "--epochs", "2", "--out", str(out),
                 "--gating", "--gating-epochs", "1", "--no-progress"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["family"] == "deep-gmm" and config["train"]["objective"] == "hard-em"
    model = deepmix.load(out)
    assert isinstance(model, DeepGMM) and model.spec() == "hc3,bd2" and model.config.gating
    assert config["train"]["options"]["gating_epochs"] == 1
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json", str(tmp_path / "e.json")]) == 0
    assert "lower bound" in capsys.readouterr().out
    summary = json.loads((tmp_path / "e.json").read_text())
    assert summary["exact"] and summary["lower_bound"] <= summary["log_prob"] + 1e-9
    assert abs(summary["upper_bound_approx"] - summary["lower_bound"] - math.log(2)) < 1e-9
    assert main(["sample", str(out), "--n", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").is_file()
    assert main(["train", "--out", str(out), "--resume", "--epochs", "3", "--no-progress"]) == 0
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    capsys.readouterr()
    assert main(["train", "--model", "deep-gmm", "--data", "digits", "--layers", "hc3,zz",
                 "--out", str(tmp_path / "bad"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepmix: error: deep GMM layer spec 'hc3,zz': cannot parse 'zz'")


# ------------------------------------------------------------------------ gating
def _gated(shape, fold_, layers, seed):
    m = DeepGMM(DeepGMMConfig(shape=shape, fold=fold_, layers=layers, gating=True,
                              gate_hidden=4))
    _randomise(m, seed, scale=0.3)
    with torch.no_grad():                     # gates far from uniform
        for gate in m.gates:
            if hasattr(gate, "out"):
                gate.out.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(seed))
    return m


def test_gated_net_is_normalised_and_its_sampler_matches_the_density():
    m = _gated((1, 1, 2), 1, "full2,full3,full2", seed=31)
    t = torch.linspace(-12, 12, 200, dtype=D64)
    xx, yy = torch.meshgrid(t, t, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    with torch.no_grad():
        p = m.log_prob(pts).exp() * (t[1] - t[0]) ** 2
        x = m.sample(20_000, generator=torch.Generator().manual_seed(3))
    assert abs(float(p.sum()) - 1.0) < 1e-3
    mean = (p[:, None] * pts).sum(0)
    var = (p[:, None] * (pts - mean) ** 2).sum(0)
    assert ((x.mean(0) - mean).abs() < 5 * (var / 20_000).sqrt()).all()
    # The gated prior is not uniform: the same net without gates has another density.
    plain = DeepGMM(DeepGMMConfig(shape=(1, 1, 2), fold=1, layers="full2,full3,full2"))
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if k.startswith(("layers", "offset"))})
    assert not torch.allclose(plain.log_prob(pts[:10]), m.log_prob(pts[:10]))


@pytest.mark.parametrize("layers", ["hc3,bd3,bd2", "ubd2,ubd2"])
def test_gated_e_step_exact_and_coordinate(layers):
    m = _gated((2, 2, 2), 1, layers, seed=32)
    N = 30
    x = torch.randn(N, 8, generator=torch.Generator().manual_seed(33), dtype=D64)
    with torch.no_grad():
        per_path = torch.stack([m.path_score(x, c[None].expand(N, -1)) for c in _all_paths(m)])
        c_ex, s_ex = m.search(x, method="exact")
        start = m.random_paths(N, torch.Generator().manual_seed(34))
        c_co, s_co = m.search(x, start, method="coordinate",
                              generator=torch.Generator().manual_seed(35))
        exact = m.log_prob(x)
    torch.testing.assert_close(s_ex, per_path.max(0).values)
    torch.testing.assert_close(exact, torch.logsumexp(per_path, 0))
    assert (s_co >= m.path_score(x, start) - 1e-10).all()
    torch.testing.assert_close(m.path_score(x, c_co), s_co)


def test_gates_train_after_em_and_raise_the_lower_bound():
    x = _blobs(300, seed=4)
    m = DeepGMM(DeepGMMConfig(shape=(1, 1, 2), fold=1, layers="full4", gating=True,
                              gate_hidden=8))
    obj = deepmix.training.make_objective("deep-gmm", "hard-em", {
        "lr": 0.02, "first_m_epochs": 30, "m_epochs": 30, "gating_epochs": 60,
        "gating_lr": 0.01, "min_usage": 0})
    deepmix.training.fit(m, x, obj, epochs=120, batch_size=100)
    with torch.no_grad():
        gated = m.path_score(x, obj.paths).mean()
        # the same paths under the uniform prior: swap the gates' terms for log pi
        gate_terms = sum(g.log_prob(h, c) for g, h, c in _gate_inputs(m, x, obj.paths))
        uniform = (m.path_score(x, obj.paths) - gate_terms + m.log_prior).mean()
    assert float(gated) > float(uniform) + 0.1       # the gates predict the paths
    with pytest.raises(DeepmixError, match="gating=True"):
        deepmix.training.fit(DeepGMM(DeepGMMConfig(shape=(1, 1, 2), fold=1, layers="full2")),
                             x, "hard-em", epochs=1, gating_epochs=1)


def _gate_inputs(m, x, c):
    h = m.fold(x)
    out = []
    for layer, gate, cl in zip(m.layers, m.gates, m.split(c)):
        h = layer(h, cl)
        if hasattr(gate, "out"):
            out.append((gate, h, cl))
    return out


def test_evaluation_summary_without_an_exact_density():
    from deepmix.inference.deep_gmm import evaluate_deep_gmm

    m = _net((4, 4, 2), 1, "ubd2,hc3,ubd2", seed=40)           # 2^32 paths, coupled
    x = torch.randn(6, 32, generator=torch.Generator().manual_seed(41), dtype=D64)
    summary, per = evaluate_deep_gmm(m, x, batch_size=4)
    assert not summary["exact"] and "log_prob" not in per
    assert summary["log_prob"] == summary["lower_bound"]
    assert math.isclose(summary["upper_bound_approx"] - summary["lower_bound"],
                        32 * math.log(2), rel_tol=1e-12)


def test_centring_is_a_shift_of_the_density():
    g = torch.Generator().manual_seed(50)
    x = torch.randn(300, 16, generator=g, dtype=D64) * 0.5 + 3.0
    m = DeepGMM(DeepGMMConfig(shape=(4, 4, 1), fold=2, layers="hc3,bd2"))
    m.initialize(x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(m.offset, x.mean(0))
    _randomise(m.layers, 51, scale=0.1)
    # p(x) of the centred model is the uncentred model's density at x - offset
    plain = DeepGMM(DeepGMMConfig(shape=(4, 4, 1), fold=2, layers="hc3,bd2", center=False))
    plain.load_state_dict({**m.state_dict(), "offset": torch.zeros(16, dtype=D64)})
    torch.testing.assert_close(m.log_prob(x), plain.log_prob(x - m.offset))
    s = m.sample(4000, generator=torch.Generator().manual_seed(1))
    assert float((s.mean(0) - plain.sample(4000, generator=torch.Generator().manual_seed(1))
                  .mean(0) - m.offset).abs().max()) < 1e-10
    off = DeepGMM(DeepGMMConfig(shape=(4, 4, 1), fold=2, layers="hc3,bd2", center=False))
    off.initialize(x)
    assert float(off.offset.abs().max()) == 0.0
