"""Gradient objectives: closed forms equal autograd, known minimisers, recovery, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deepmix.errors import ConfigError
from deepmix import GaussianMixture
from deepmix.models import MixtureDensity
from deepmix.training import fit_density
from deepmix.training.objectives import (get_objective, nll, score_matching,
                                         sliced_score_matching)


def _random_mixture(K, D, ct, seed, parametrization="covariance"):
    m = MixtureDensity(K, D, ct, parametrization=parametrization, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return m


@pytest.mark.parametrize("ct, parametrization", [("diag", "covariance"), ("full", "covariance"),
                                                 ("full", "precision")])
@pytest.mark.parametrize("D", [1, 2, 5])
@pytest.mark.parametrize("K", [1, 3])
def test_closed_form_sm_and_its_gradient_equal_autograd(ct, parametrization, D, K):
    m = _random_mixture(K, D, ct, seed=D * 10 + K, parametrization=parametrization)
    x = torch.randn(16, D, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    closed = score_matching(m, x)
    auto = score_matching(m, x, method="autograd")
    torch.testing.assert_close(closed, auto, rtol=1e-8, atol=1e-10)
    params = list(m.parameters())
    for a, b in zip(torch.autograd.grad(closed, params), torch.autograd.grad(auto, params)):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("ct", ["diag", "full"])
def test_closed_form_hessian_quadratic_equals_autograd_and_averages_to_laplacian(ct):
    m = _random_mixture(3, 4, ct, seed=5)
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    for proj in ("gaussian", "rademacher"):
        a = sliced_score_matching(m, x, n_slices=4, projection=proj,
                                  generator=torch.Generator().manual_seed(1))
        b = sliced_score_matching(m, x, n_slices=4, projection=proj, method="autograd",
                                  generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    v = torch.randn(10_000, 6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    vhv, _ = m.hessian_quadratic(x, v)
    _, lap = m.score_and_laplacian(x)
    se = vhv.std(0) / math.sqrt(v.shape[0])
    assert torch.all((vhv.mean(0) - lap).abs() < 3 * se + 1e-9)


def test_single_gaussian_sm_minimiser_is_the_sample_mean_and_variance():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(500, 3, generator=gen, dtype=torch.float64) * torch.tensor([0.5, 1.0, 2.0]) + 1.0
    m = MixtureDensity(1, 3, "diag", dtype=torch.float64)
    with torch.no_grad():
        m.means.copy_(x.mean(0, keepdim=True))
        m.log_var.copy_(torch.log(x.var(0, unbiased=False)).unsqueeze(0))
    for loss in (score_matching(m, x), nll(m, x)):
        grads = torch.autograd.grad(loss, [m.means, m.log_var])
        assert max(float(g.abs().max()) for g in grads) < 1e-10


@pytest.mark.parametrize("objective", ["mle", "sm", "ssm"])
def test_every_objective_recovers_a_two_component_mixture(objective):
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(600, 1, generator=gen) * 0.5 - 3.0,
                   torch.randn(600, 1, generator=gen) * 0.5 + 3.0])
    m = MixtureDensity(2, 1, "diag")
    with torch.no_grad():
        m.means.copy_(torch.tensor([[-1.0], [1.0]]))
    history = fit_density(m, x, objective, epochs=300, lr=0.05, seed=0,
                          **({"n_slices": 2} if objective == "ssm" else {}))
    assert history[-1] < history[0]
    means = m.means.detach().flatten().sort().values
    torch.testing.assert_close(means, torch.tensor([-3.0, 3.0]), atol=0.2, rtol=0.0)
    std = torch.exp(0.5 * m.log_var.detach()).flatten()
    torch.testing.assert_close(std, torch.tensor([0.5, 0.5]), atol=0.1, rtol=0.0)


def test_score_matching_is_blind_to_weights_of_separated_components():
    gen = torch.Generator().manual_seed(4)
    x = torch.cat([torch.randn(2000, 1, generator=gen, dtype=torch.float64) - 6.0,
                   torch.randn(2000, 1, generator=gen, dtype=torch.float64) + 6.0])
    m = MixtureDensity(2, 1, "diag", dtype=torch.float64)
    with torch.no_grad():
        m.means.copy_(torch.tensor([[-6.0], [6.0]], dtype=torch.float64))
        m.log_var.zero_()
    sm_equal, nll_equal = float(score_matching(m, x).detach()), float(nll(m, x).detach())
    with torch.no_grad():
        m.logits.copy_(torch.log(torch.tensor([0.8, 0.2], dtype=torch.float64)))
    assert abs(float(score_matching(m, x).detach()) - sm_equal) < 1e-4
    assert float(nll(m, x).detach()) - nll_equal > 0.1


def test_mixture_density_from_em_fit_has_the_same_density():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 1, (300, 2)), rng.normal(4, 0.5, (300, 2))])
    for ct, par in (("diag", "covariance"), ("full", "covariance"), ("full", "precision")):
        gm = GaussianMixture(2, covariance_type=ct, random_state=0).fit(X)
        md = MixtureDensity.from_mixture(gm, dtype=torch.float64, parametrization=par)
        np.testing.assert_allclose(md.log_prob(X).detach().numpy(), gm.score_samples(X),
                                   rtol=1e-6)


def test_autograd_route_works_for_any_log_prob_model():
    class Gaussian(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64))

        def log_prob(self, x):
            return (-0.5 * (x / self.scale) ** 2 - torch.log(self.scale)
                    - 0.5 * math.log(2 * math.pi)).sum(1)

    x = torch.randn(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    # J = sum_d (-1/s^2) + 1/2 sum_d x_d^2 / s^4 for N(0, s^2 I).
    expected = (-3 / 4.0 + 0.5 * (x ** 2).sum(1) / 16.0).mean()
    torch.testing.assert_close(score_matching(Gaussian(), x), expected)


def test_unknown_names_are_errors():
    with pytest.raises(ConfigError, match="Unknown objective 'magic'"):
        get_objective("magic")
    m = MixtureDensity(1, 2)
    with pytest.raises(ConfigError, match="Unknown projection 'uniform'"):
        sliced_score_matching(m, torch.zeros(3, 2), projection="uniform")
    with pytest.raises(ConfigError, match="Unknown covariance type 'tied'"):
        MixtureDensity(1, 2, "tied")
    with pytest.raises(ConfigError, match="Unknown optimizer"):
        fit_density(m, torch.zeros(3, 2), optimizer="lbfgs2")
