"""The deep GMM's factorised path prior and its warm start from a flat diagonal GMM."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

import deepmix
from deepmix.errors import ConfigError
from deepmix.models import DeepGMM, DeepGMMConfig, MixtureDensity
from deepmix.utils.config import config_from_dict, config_to_dict

D64 = torch.float64


def _net(shape, fold_, layers, seed=0, **kw) -> DeepGMM:
    """A factorised-prior net with random, well-conditioned maps and random, non-uniform
    weights."""
    m = DeepGMM(DeepGMMConfig(shape=shape, fold=fold_, layers=layers, prior="factorised", **kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            scale = 1.0 if name.startswith("prior") else 0.3
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return m


def _all_paths(model: DeepGMM) -> torch.Tensor:
    ranges = [range(layer.n_values) for layer in model.layers for _ in range(layer.n_vars)]
    return torch.tensor(list(itertools.product(*ranges)), dtype=torch.long)


def _log_pi(model: DeepGMM, c: torch.Tensor) -> torch.Tensor:
    """log pi_c by hand: the product of every variable's weight."""
    out = torch.zeros(c.shape[0], dtype=D64)
    for i, part in enumerate(model.split(c)):
        lw = torch.log_softmax(model.prior.logits[i].detach(), -1)
        for v in range(part.shape[1]):
            out += lw[v, part[:, v]]
    return out


def test_two_d_net_with_non_uniform_weights_integrates_to_one():
    m = _net((1, 1, 2), 1, "full2,full3,full2", seed=4)
    t = torch.linspace(-12, 12, 600, dtype=D64)
    xx, yy = torch.meshgrid(t, t, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    with torch.no_grad():
        mass = m.log_prob(pts).exp().sum() * (t[1] - t[0]) ** 2
        # not the uniform prior: the weights matter
        uniform = DeepGMM(DeepGMMConfig(shape=(1, 1, 2), fold=1, layers="full2,full3,full2"))
        uniform.load_state_dict({k: v for k, v in m.state_dict().items()
                                 if not k.startswith("prior")})
        assert (uniform.log_prob(pts[:50]) - m.log_prob(pts[:50])).abs().max() > 1e-2
    assert abs(float(mass) - 1.0) < 1e-3


@pytest.mark.parametrize("layers", ["hc3,bd2,ubd2,bd3", "ubd2,hc3,ubd2"])
def test_scores_enumeration_and_bounds_use_the_weights(layers):
    m = _net((2, 2, 2), 1, layers, seed=8)
    x = torch.randn(9, 8, generator=torch.Generator().manual_seed(9), dtype=D64)
    paths = _all_paths(m)
    with torch.no_grad():
        uniform = DeepGMM(DeepGMMConfig(shape=(2, 2, 2), fold=1, layers=layers))
        uniform.load_state_dict({k: v for k, v in m.state_dict().items()
                                 if not k.startswith("prior")})
        per_path = torch.stack([m.path_score(x, c[None].expand(9, -1)) for c in paths])
        ref = torch.stack([uniform.path_score(x, c[None].expand(9, -1)) - uniform.log_prior
                           + _log_pi(m, c[None]) for c in paths])
        torch.testing.assert_close(per_path, ref)
        exact = m.log_prob(x)
        torch.testing.assert_close(exact, torch.logsumexp(per_path, 0))
        c, lb = m.search(x, method="exact")
        torch.testing.assert_close(lb, per_path.max(0).values)
        torch.testing.assert_close(m.path_score(x, c), lb)
        _, lb_coord = m.search(x, method="coordinate", generator=torch.Generator().manual_seed(1))
        ub = m.log_prob_upper_bound_approx(x, method="exact")
    assert (lb_coord <= lb + 1e-10).all()
    assert (lb <= exact + 1e-10).all() and (exact <= ub + 1e-10).all()


def test_per_position_factorisation_with_weights_equals_brute_force():
    m = _net((2, 2, 2), 1, "hc3,ubd2,ubd2", seed=11)              # 256 paths, factorises
    x = torch.randn(7, 8, generator=torch.Generator().manual_seed(12), dtype=D64)
    with torch.no_grad():
        per_path = torch.stack([m.path_score(x, c[None].expand(7, -1)) for c in _all_paths(m)])
        h0 = m.fold(x)
        torch.testing.assert_close(m._factorised(h0), torch.logsumexp(per_path, 0))
        c, best, _ = m._factorised_all(h0)
        torch.testing.assert_close(best, per_path.max(0).values)
        torch.testing.assert_close(m.path_score(x, c), best)


def test_sampled_path_frequencies_match_the_weights():
    m = _net((1, 1, 2), 1, "full2,full3", seed=6)
    n = 40_000
    _, c = m.sample_with_paths(n, generator=torch.Generator().manual_seed(7))
    ids = c[:, 0] * 3 + c[:, 1]
    freq = torch.bincount(ids, minlength=6).double() / n
    paths = _all_paths(m)
    pi = _log_pi(m, paths).exp()
    torch.testing.assert_close(pi.sum(), torch.tensor(1.0, dtype=D64))
    assert ((freq - pi).abs() < 5 * (pi * (1 - pi) / n).sqrt()).all()


def test_hard_em_m_step_sets_the_weights_to_the_usage_frequencies():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-3.0, 0.0], [3.0, 1.0]], dtype=D64)
    z = (torch.rand(400, generator=g) < 0.8).long()                 # 80 / 20
    x = centres[z] + 0.5 * torch.randn(400, 2, generator=g, dtype=D64)
    m = DeepGMM(DeepGMMConfig(shape=(1, 1, 2), fold=1, layers="full2,diag3", search="exact",
                              prior="factorised"))
    obj = deepmix.training.make_objective("deep-gmm", "hard-em", {
        "lr": 0.02, "first_m_epochs": 3, "m_epochs": 3, "min_usage": 0,
        "prior_smoothing": 0.5})
    deepmix.training.fit(m, x, obj, epochs=6, batch_size=100)
    for i, layer in enumerate(m.layers):
        counts = torch.bincount(obj.paths[:, m.var_slices[i]].reshape(-1),
                                minlength=layer.n_values).double()
        want = (counts + 0.5) / (counts.sum() + 0.5 * layer.n_values)
        got = torch.softmax(m.prior.logits[i].detach(), -1)[0]
        torch.testing.assert_close(got, want)
    assert not torch.allclose(torch.softmax(m.prior.logits[1].detach(), -1),
                              torch.full((1, 3), 1 / 3, dtype=D64))
    # The objective's E-step bound is monotone with exact search and the closed-form weights.
    for a, b in zip(obj.e_scores, obj.e_scores[1:]):
        assert b >= a - 0.05


def test_reseeded_copies_share_their_sources_weight():
    x = torch.randn(300, 2, generator=torch.Generator().manual_seed(3), dtype=D64)
    m = DeepGMM(DeepGMMConfig(shape=(1, 1, 2), fold=1, layers="full3", search="exact",
                              prior="factorised"))
    obj = deepmix.training.make_objective("deep-gmm", "hard-em", {
        "lr": 0.01, "min_usage": 1000, "prior_smoothing": 1.0})     # every value is "rare"
    deepmix.training.fit(m, x, obj, epochs=1, batch_size=100)
    w = torch.softmax(m.prior.logits[0].detach(), -1)[0]
    # The most used value and its two copies share its count: equal weights.
    torch.testing.assert_close(w, torch.full((3,), 1 / 3, dtype=D64))
    assert obj.reseeded[0] == 3


@pytest.mark.parametrize("source", ["deepmix", "sklearn", "density"])
def test_warm_start_from_a_flat_gmm_has_its_density(source):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(300, 16, generator=g, dtype=D64) ** 2
    if source == "sklearn":
        from sklearn.mixture import GaussianMixture
        gm = GaussianMixture(5, covariance_type="diag", random_state=0).fit(x.numpy())
        ref = torch.as_tensor(gm.score_samples(x.numpy()))
    else:
        gm = deepmix.GaussianMixture(5, covariance_type="diag", random_state=0).fit(x)
        ref = torch.as_tensor(gm.score_samples(x))
        if source == "density":
            gm = MixtureDensity.from_mixture(gm, dtype=D64)
    for center in (True, False):
        m = DeepGMM.from_gaussian_mixture(gm, (4, 4, 1), fold=2, layers="hc3,hc3,diag5,hc3",
                                          center=center)
        with torch.no_grad():
            torch.testing.assert_close(m.log_prob(x), ref, rtol=0, atol=1e-6)
    assert m.config.prior == "factorised" and m.n_paths() == pytest.approx(5)
    # Sampling runs the inverses: the warm-started model's samples have the mixture's mean.
    s = m.sample(20_000, generator=torch.Generator().manual_seed(1))
    mean = torch.as_tensor(gm.weights_ if source != "density" else gm.weights.detach()) @ \
        torch.as_tensor(gm.means_ if source != "density" else gm.means.detach())
    assert (s.mean(0) - mean).abs().max() < 0.02
    # Gradients reach the half-convolutions from the exact log_prob (so training can move them).
    m.log_prob(x).mean().backward()
    assert m.layers[0].weight.grad.abs().max() > 0


def test_warm_start_refuses_what_it_cannot_represent():
    x = torch.rand(100, 16, generator=torch.Generator().manual_seed(0), dtype=D64)
    gm = deepmix.GaussianMixture(3, covariance_type="diag", random_state=0).fit(x)
    with pytest.raises(ConfigError, match="exactly one diag3"):
        DeepGMM.from_gaussian_mixture(gm, (4, 4, 1), fold=2, layers="hc3,diag4")
    with pytest.raises(ConfigError, match="factorised"):
        DeepGMM.from_gaussian_mixture(gm, (4, 4, 1), fold=2, layers="diag3", prior="uniform")
    full = deepmix.GaussianMixture(2, covariance_type="full", random_state=0).fit(x)
    with pytest.raises(ConfigError, match="diag or spherical"):
        DeepGMM.from_gaussian_mixture(full, (4, 4, 1), fold=2, layers="diag2")


def test_variance_floor_adds_a_wide_twin_to_every_component():
    """p(x) = sum_k w_k [(1 - eps) N(mu_k, s2_k) + eps N(mu_k, c s2_k)], c = max(1, f / median)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(300, 16, generator=g, dtype=D64) ** 4
    x[:, :3] = 0.5 + 1e-3 * torch.rand(300, 3, generator=g, dtype=D64)   # near-constant pixels
    gm = deepmix.GaussianMixture(4, covariance_type="diag", random_state=0).fit(x)
    w, mu, var = (torch.as_tensor(np.asarray(a), dtype=D64)
                  for a in (gm.weights_, gm.means_, gm.covariances_))
    f, eps = 1e-2, 0.05
    c = (f / var.median(0).values).clamp(min=1.0)
    assert (c[:3] > 1).all() and (c > 1).sum() < 16          # widened where narrow only
    comp = torch.distributions.Normal(mu[None], var.sqrt()[None])
    wide = torch.distributions.Normal(mu[None], (c * var).sqrt()[None])
    ref = torch.logsumexp(torch.cat([
        (w * (1 - eps)).log() + comp.log_prob(x[:, None]).sum(-1),
        (w * eps).log() + wide.log_prob(x[:, None]).sum(-1)], 1), 1)
    for center in (True, False):
        m = DeepGMM.from_gaussian_mixture(gm, (4, 4, 1), fold=2, layers="hc3,diag4,diag2",
                                          variance_floor=f, floor_weight=eps, center=center)
        with torch.no_grad():
            torch.testing.assert_close(m.log_prob(x), ref, rtol=0, atol=1e-6)
    # An ink stroke where the training pixels were constant costs far less under the twins.
    y = x[:5].clone()
    y[:, 0] = 0.9
    with torch.no_grad():
        assert (m.log_prob(y) > torch.as_tensor(gm.score_samples(y)) + 10).all()
    with pytest.raises(ConfigError, match="one diag2 layer after"):
        DeepGMM.from_gaussian_mixture(gm, (4, 4, 1), fold=2, layers="diag2,diag4",
                                      variance_floor=f)
    with pytest.raises(ConfigError, match="floor_weight"):
        DeepGMM.from_gaussian_mixture(gm, (4, 4, 1), fold=2, layers="diag4,diag2",
                                      variance_floor=f, floor_weight=1.0)
    with pytest.raises(ConfigError, match="variance_floor"):
        DeepGMM.from_gaussian_mixture(gm, (4, 4, 1), fold=2, layers="diag4,diag2",
                                      variance_floor=float("nan"))


def test_prior_config_round_trip_and_old_gating_configs():
    cfg = DeepGMMConfig(shape=(4, 4, 1), fold=2, layers="hc3,bd2,ubd3", prior="factorised")
    m = _net((4, 4, 1), 2, "hc3,bd2,ubd3")
    again = DeepGMM(config_from_dict(DeepGMMConfig, json.loads(json.dumps(config_to_dict(cfg)))))
    again.load_state_dict(m.state_dict())
    assert again.prior is not None and again.prior.logits[2].shape == (4, 3)
    # A config written before ``prior`` existed: gating=True means prior="gating".
    old = config_to_dict(DeepGMMConfig(shape=(4, 4, 1), fold=2, gating=True))
    old.pop("prior")
    assert config_from_dict(DeepGMMConfig, old).prior == "gating"
    assert DeepGMMConfig(prior="gating").gating is True
    with pytest.raises(ConfigError, match="contradicts"):
        DeepGMMConfig(gating=True, prior="factorised")
    with pytest.raises(ConfigError, match="Unknown deep GMM prior"):
        DeepGMMConfig(prior="dirichlet")
    with pytest.raises(ConfigError, match="prior_smoothing"):
        deepmix.training.make_objective("deep-gmm", "hard-em", {"prior_smoothing": 0})


def test_saved_run_with_the_factorised_prior_loads(tmp_path):
    m = _net((4, 4, 1), 2, "hc3,bd2")
    m.save(tmp_path / "run")
    back = deepmix.load(tmp_path / "run")
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(2), dtype=D64)
    with torch.no_grad():
        torch.testing.assert_close(back.log_prob(x), m.log_prob(x))
        assert math.isfinite(float(back.log_prob(x).sum()))


def test_prior_flag_of_the_cli(tmp_path, capsys):
    from deepmix.cli.main import main

    out = tmp_path / "run"
    assert main(["train", "--model", "deep-gmm", "--data", "digits", "--layers", "hc3,bd2",
                 "--fold", "2", "--dequantize", "--epochs", "2", "--out", str(out),
                 "--prior", "factorised", "--no-progress"]) == 0
    model = deepmix.load(out)
    assert model.config.prior == "factorised" and model.prior is not None
    assert json.loads((out / "config.json").read_text())["model"]["prior"] == "factorised"
    capsys.readouterr()
    assert main(["train", "--model", "deep-gmm", "--data", "digits", "--layers", "hc3,bd2",
                 "--out", str(tmp_path / "bad"), "--prior", "factorised", "--gating",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepmix: error: ") and "prior" in err and len(err.splitlines()) == 1
