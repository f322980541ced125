"""The DRMM family (spec drmm §10 acceptance checks, reduced to test size)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import deepmix
from deepmix.data import arm_end_effector, arm_ik, drmm_sierpinski, drmm_swissroll
from deepmix.errors import ConfigError, DeepmixError, InputError, NoDensityError
from deepmix.models import DRMM, DRMMCondition, DRMMConfig, MixtureDensity
from deepmix.models.drmm import Box, GaussianPrior, Inequality, ResolvedCondition, parameter_count
from deepmix.training.objectives.drmm import lr_factor, rho_schedule

F64 = torch.float64


def _model(D=2, K=4, L=3, seed=0, **kw) -> DRMM:
    m = DRMM(DRMMConfig(n_features=D, n_components=K, n_layers=L, dtype="float64", **kw))
    g = torch.Generator().manual_seed(seed)
    return m.initialize(torch.randn(200, D, generator=g, dtype=F64), generator=g)


@pytest.fixture(scope="module")
def roll_models():
    """Swiss-roll DRMMs of depth 1 and 4 (16 components), 480 steps each."""
    x = drmm_swissroll(1024, seed=0)
    out = {}
    for L in (1, 4):
        m = DRMM(DRMMConfig(n_features=2, n_components=16, n_layers=L))
        m.fit(x, epochs=30, batch_size=64, seed=0)
        out[L] = m
    return out


@pytest.fixture(scope="module")
def small_model():
    """A 2-D DRMM with K^(L-1) = 16 paths, trained on the Swiss roll."""
    m = DRMM(DRMMConfig(n_features=2, n_components=4, n_layers=3, dtype="float64"))
    m.fit(drmm_swissroll(1000, seed=0, dtype=F64), epochs=50, batch_size=64, seed=0)
    return m


# ----------------------------------------------------------------------- 1. parameter counts
@pytest.mark.parametrize("D,K,L", [(2, 16, 3), (6, 5, 4), (1, 1, 1), (30, 8, 10)])
def test_parameter_count_of_a_flat_drmm(D, K, L):
    m = DRMM(DRMMConfig(n_features=D, n_components=K, n_layers=L))
    assert m.n_parameters == D * L * K + K * K * L * (L - 1) // 2 + L * K + L
    assert m.n_parameters == parameter_count(D, K, L)


def test_parameter_count_with_categorical_streams_and_diagonal_sigma():
    m = DRMM(DRMMConfig(n_features=3, n_components=4, n_layers=3, sigma="diagonal",
                        categorical=(5, 2), categorical_blocks=(3, 1)))
    assert m.n_parameters == parameter_count(3, 4, 3, categorical_width=17, sigma="diagonal")
    cat = DRMM(DRMMConfig(n_features=0, n_components=4, n_layers=2, categorical=(3,),
                          categorical_blocks=(9,)))
    assert cat.n_parameters == parameter_count(0, 4, 2, categorical_width=27)


def test_table1_global_blocks():
    # Global blocks of paper Table 1: all-categorical input = last grid x (L K) of the last
    # patch block; MNIST 7x7x(4*64), Quick Draw 4x4x(6*256), CelebA 4x4x(8*256).
    assert parameter_count(0, 256, 4, categorical_width=49 * 4 * 64) == 13_239_296
    assert parameter_count(0, 256, 10, categorical_width=16 * 6 * 256) == 65_866_240
    assert parameter_count(0, 256, 10, categorical_width=16 * 8 * 256) == 86_837_760


# ----------------------------------------------------------------------- 2. residual identity
def test_residual_identity_continuous_and_categorical():
    m = _model(D=3, K=5, L=4)
    x = torch.randn(50, 3, dtype=F64)
    hs, last = m.argmax_pass(x)
    xhat = sum(layer.streams[0].mu[h] for layer, h in zip(m.layers, hs))
    torch.testing.assert_close(xhat + last[0].value, x)
    torch.testing.assert_close(m.reconstruct(hs, last), x)
    mc = DRMM(DRMMConfig(n_features=2, n_components=3, n_layers=3, categorical=(4,),
                         categorical_blocks=(2,), dtype="float64"))
    g = torch.Generator().manual_seed(1)
    cat = torch.log_softmax(torch.randn(40, 2, 4, generator=g, dtype=F64), -1).reshape(40, 8)
    data = torch.cat([torch.randn(40, 2, generator=g, dtype=F64), cat], 1)
    mc.initialize(data, generator=g)
    hs, last = mc.argmax_pass(data)
    torch.testing.assert_close(mc.reconstruct(hs, last), data)


# ----------------------------------------------------------------------- 3. L = 1 is a GMM
def test_one_layer_equals_a_shared_isotropic_gmm():
    m = _model(D=3, K=4, L=1)
    with torch.no_grad():
        m.layers[0].logits.copy_(torch.tensor([0.1, -0.3, 0.7, 0.0]))
    layer = m.layers[0].streams[0]
    gmm = MixtureDensity(4, 3, "spherical", dtype=F64)
    gmm.set_moments(torch.softmax(m.layers[0].logits.detach(), 0), layer.mu.detach(),
                    layer.variances().detach()[0].expand(4))
    x = torch.randn(20, 3, dtype=F64)
    torch.testing.assert_close(m.log_prob(x), gmm.log_prob(x))


def test_one_layer_means_reach_well_separated_blobs():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    x = (centres[torch.randint(0, 3, (600,), generator=g)]
         + 0.1 * torch.randn(600, 2, generator=g))
    m = DRMM(DRMMConfig(n_features=2, n_components=3, n_layers=1))
    m.fit(x, epochs=40, batch_size=64, seed=0, lr=0.02)
    mu = m.layers[0].streams[0].mu.detach()
    dist = torch.cdist(centres, mu)
    assert float(dist.min(1).values.max()) < 0.1


# ----------------------------------------------------------------------- 4. masks
def test_all_zero_masks_give_the_weights_and_masked_values_change_nothing():
    m = _model(D=2, K=4, L=3)
    with torch.no_grad():
        m.layers[0].logits.copy_(torch.tensor([0.5, -1.0, 0.2, 0.0]))
    x = torch.randn(6, 2, dtype=F64)
    streams = m.split(x, torch.zeros_like(x))
    torch.testing.assert_close(torch.softmax(m.layers[0].membership(streams), 1),
                               torch.softmax(m.layers[0].logits, 0).expand(6, 4))
    mask = torch.tensor([1.0, 0.0], dtype=F64)
    a = m.sample(30, generator=torch.Generator().manual_seed(2),
                 condition=DRMMCondition(values=torch.tensor([0.3, 5.0]), mask=mask))
    b = m.sample(30, generator=torch.Generator().manual_seed(2),
                 condition=DRMMCondition(values=torch.tensor([0.3, -7.0]), mask=mask))
    assert torch.equal(a, b)


# ----------------------------------------------------------------------- 5. density
def test_enumeration_integrates_to_one_and_is_agrees(small_model):
    m = small_model
    sigma = float(m.layers[-1].streams[0].variances()[0].detach().sqrt())
    grid = torch.linspace(-1.5, 1.5, 301, dtype=F64)
    h = float(grid[1] - grid[0])
    assert h < sigma            # the grid resolves the narrowest component
    with torch.no_grad():
        total = float(m.log_prob(torch.cartesian_prod(grid, grid)).exp().sum()) * h * h
    assert abs(total - 1.0) < 0.02
    x = m.sample(200, generator=torch.Generator().manual_seed(3), noise=True)
    with torch.no_grad():
        exact = m.log_prob(x)
    est = m.log_prob_is(x, n_samples=1000, generator=torch.Generator().manual_seed(4))
    assert abs(float((exact - est).mean())) < 0.05


def test_log_prob_is_differentiable_and_large_models_name_the_estimator():
    m = _model(D=2, K=4, L=2)
    x = torch.randn(5, 2, dtype=F64, requires_grad=True)
    m.log_prob(x).sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())
    big = DRMM(DRMMConfig(n_features=2, n_components=32, n_layers=5))
    with pytest.raises(NoDensityError, match="log_prob_is"):
        big.log_prob(torch.zeros(2, 2))
    assert big.log_prob_is(torch.zeros(2, 2), n_samples=4).shape == (2,)


# ----------------------------------------------------------------------- 6-8. conditioning
def test_closed_form_constraint_factors_equal_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mu = torch.tensor([[0.0, 0.0], [0.5, -0.2], [-0.3, 0.4]], dtype=F64)
    var = torch.tensor([0.04, 0.09], dtype=F64)
    z = mu[None] + var.sqrt() * torch.randn(200_000, 1, 2, generator=g, dtype=F64)
    cond = DRMMCondition(inequalities=(Inequality(torch.tensor([1.0, 0.2]), 0.1),),
                         box=Box(low=torch.tensor([-0.2, -math.inf]),
                                 high=torch.tensor([0.3, 0.1])))
    r = ResolvedCondition.resolve(cond, 1, width=2, continuous=2, continuous_names=("x",),
                                  dtype=F64, device=torch.device("cpu"))
    ineq_only = ResolvedCondition.resolve(
        DRMMCondition(inequalities=cond.inequalities), 1, width=2, continuous=2,
        continuous_names=("x",), dtype=F64, device=torch.device("cpu"))
    mc_ineq = (z[..., 0] + 0.2 * z[..., 1] + 0.1 > 0).double().mean(0)
    torch.testing.assert_close(ineq_only.log_factors(mu, var)[0].exp(), mc_ineq, atol=4e-3,
                               rtol=0)
    # the box factor (spec §5) treats every limit as its own half-space: the product over
    # limits of P(x_d < max_d) and P(x_d > min_d)
    box_only = ResolvedCondition.resolve(
        DRMMCondition(box=cond.box), 1, width=2, continuous=2, continuous_names=("x",),
        dtype=F64, device=torch.device("cpu"))
    mc_box = ((z[..., 0] > -0.2).double().mean(0) * (z[..., 0] < 0.3).double().mean(0)
              * (z[..., 1] < 0.1).double().mean(0))
    torch.testing.assert_close(box_only.log_factors(mu, var)[0].exp(), mc_box, atol=4e-3,
                               rtol=0)
    # several parts add their log factors
    torch.testing.assert_close(r.log_factors(mu, var), box_only.log_factors(mu, var)
                               + ineq_only.log_factors(mu, var))
    prior = ResolvedCondition.resolve(
        DRMMCondition(prior=GaussianPrior(torch.tensor([0.2, 0.1]), torch.tensor([0.3, 0.2]))),
        1, width=2, continuous=2, continuous_names=("x",), dtype=F64,
        device=torch.device("cpu")).log_factors(mu, var)[0]
    # E_{x ~ N(mu_k, var)} N(x; m, s^2) is proportional to exp(prior factor) across k
    dens = torch.exp(-0.5 * ((z - torch.tensor([0.2, 0.1], dtype=F64)) ** 2
                             / torch.tensor([0.09, 0.04], dtype=F64)).sum(-1)).mean(0)
    torch.testing.assert_close(prior - prior[0], dens.log() - dens.log()[0], atol=0.02,
                               rtol=0)


def test_conditioning_on_a_known_value_hits_it(roll_models):
    m = roll_models[4]
    sigma = float(m.layers[-1].streams[0].variances()[0].detach().sqrt())
    cond = DRMMCondition(values=torch.tensor([0.5, 0.0]), mask=torch.tensor([1.0, 0.0]))
    s = m.sample(256, generator=torch.Generator().manual_seed(1), condition=cond)
    assert float(((s[:, 0] - 0.5).abs() <= 3 * sigma).float().mean()) >= 0.95
    c = m.sample(256, generator=torch.Generator().manual_seed(1), condition=cond,
                 clamp_observed=True)
    assert bool((c[:, 0] == 0.5).all()) and torch.equal(c[:, 1], s[:, 1])


def test_inequality_and_prior_steer_the_samples(roll_models):
    cond = DRMMCondition(inequalities=(Inequality(torch.tensor([1.0, 0.2]), 0.0),))
    rate = {}
    for L, m in roll_models.items():
        # with the output noise N(0, sigma_L^2): depth 1 alone would return component means
        s = m.sample(1000, generator=torch.Generator().manual_seed(1), condition=cond,
                     noise=True)
        rate[L] = float((s[:, 0] + 0.2 * s[:, 1] > 0).float().mean())
    assert rate[4] >= 0.9 and rate[4] >= rate[1], rate
    m = roll_models[4]
    free = m.sample(1000, generator=torch.Generator().manual_seed(1))
    prior = DRMMCondition(prior=GaussianPrior(torch.tensor([0.5, 0.5]), torch.tensor([0.1, 0.1])))
    s = m.sample(1000, generator=torch.Generator().manual_seed(1), condition=prior)
    target = torch.tensor([0.5, 0.5])
    assert float((s.mean(0) - target).norm()) < 0.5 * float((free.mean(0) - target).norm())


def test_sampling_options_and_completion():
    m = _model(D=3, K=4, L=3)
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    a = m.sample(20, generator=g(), temperature=0.0)
    assert torch.equal(a, a[:1].expand_as(a))                   # argmax path: one point
    x, scores = m.sample_with_scores(20, generator=g(), truncation=0.5)
    assert x.shape == (20, 3) and scores.shape == (20,)
    noisy = m.sample(20, generator=g(), noise=True)
    assert not torch.equal(noisy, m.sample(20, generator=g()))
    data = torch.randn(6, 3, dtype=F64)
    mask = torch.tensor([[True, False, True]]).expand(6, 3)
    for method in ("mean", "sample", "mode"):
        out = m.complete(data, mask, method=method, generator=g())
        assert out.shape == data.shape and torch.equal(out[mask], data[mask])
        assert bool(torch.isfinite(out).all())


def test_mean_completion_of_one_layer_is_the_gmm_conditional_mean():
    # L = 1 is an isotropic GMM: E[x_m | x_o] = sum_k p(k | x_o) mu_k,m with
    # p(k | x_o) proportional to w_k N(x_o; mu_k,o, sigma^2 I), whatever the draws.
    m = _model(D=3, K=4, L=1)
    data = torch.randn(6, 3, dtype=F64)
    mask = torch.tensor([[True, False, True]]).expand(6, 3)
    layer = m.layers[0]
    mu, var = layer.streams[0].mu, layer.streams[0].variances()
    o = torch.tensor([0, 2])
    logp = layer.log_weights() - 0.5 * (((data[:, None, o] - mu[None][:, :, o]) ** 2)
                                        / var[o]).sum(-1)
    expected = torch.softmax(logp, 1) @ mu[:, 1]
    out = m.complete(data, mask, method="mean", n_samples=3,
                     generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out[:, 1], expected)
    assert torch.equal(out[mask], data[mask])


def test_exact_completion_is_the_conditional_mean_of_the_density():
    # E[x_1 | x_0] = int x_1 p(x_0, x_1) dx_1 / int p(x_0, x_1) dx_1, by quadrature of the
    # enumerated log_prob on a fine grid: independent of conditional_mean's path sums.
    m = _model(D=2, K=3, L=3, seed=1)
    for layer in m.layers:
        layer.logits.data = torch.randn(layer.logits.shape, dtype=F64,
                                        generator=torch.Generator().manual_seed(2))
    x0 = torch.tensor([-0.5, 0.0, 0.7], dtype=F64)
    grid = torch.linspace(-12, 12, 48001, dtype=F64)
    expected = []
    for v in x0:
        pts = torch.stack([v.expand_as(grid), grid], 1)
        with torch.no_grad():
            p = torch.softmax(m.log_prob(pts), 0)
        expected.append((p * grid).sum())
    data = torch.stack([x0, torch.full_like(x0, 99.0)], 1)
    mask = torch.tensor([[True, False]]).expand(3, 2)
    out = m.complete(data, mask, method="exact")
    torch.testing.assert_close(out[:, 1], torch.stack(expected), rtol=1e-6, atol=1e-6)
    assert torch.equal(out[:, 0], x0)
    # L = 1: the exact mean is the isotropic GMM's conditional mean, as "mean" is.
    one = _model(D=3, K=4, L=1)
    d = torch.randn(6, 3, dtype=F64)
    mk = torch.tensor([[True, False, True]]).expand(6, 3)
    torch.testing.assert_close(one.complete(d, mk, method="exact"),
                               one.complete(d, mk, method="mean", n_samples=2))
    # Shifting model and data by 1000 shifts the completion (no cancellation in float32).
    shifted = _model(D=2, K=3, L=3, seed=1).to(torch.float32)
    shifted.load_state_dict(m.state_dict())
    with torch.no_grad():
        for layer in shifted.layers[:1]:
            layer.streams[0].mu.add_(1000.0)
    far = shifted.complete((data + torch.tensor([1000.0, 0.0], dtype=F64)).float(), mask,
                           method="exact")
    torch.testing.assert_close(far[:, 1].double() - 1000.0, out[:, 1], rtol=0, atol=2e-3)
    # Chunked paths and rows give the same numbers as one chunk.
    import deepmix.models.drmm.model as dm
    big = _model(D=3, K=5, L=3, seed=3)
    ref = big.complete(d, mk, method="exact")
    old = dm._ELEMENTS
    try:
        dm._ELEMENTS = 40
        torch.testing.assert_close(big.complete(d, mk, method="exact"), ref)
    finally:
        dm._ELEMENTS = old


# ----------------------------------------------------------------------- 11. reproducibility
def test_seeded_training_and_sampling_are_bit_reproducible(tmp_path):
    x = drmm_sierpinski(256, seed=0)
    models = []
    for _ in range(2):
        m = DRMM(DRMMConfig(n_features=2, n_components=3, n_layers=2))
        m.fit(x, epochs=3, batch_size=64, seed=5)
        models.append(m)
    for (k, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        assert torch.equal(a, b), k
    s = [m.sample(50, generator=torch.Generator().manual_seed(1)) for m in models]
    assert torch.equal(s[0], s[1])


def test_resume_equals_an_uninterrupted_run(tmp_path):
    x = drmm_sierpinski(256, seed=0)
    full = DRMM(DRMMConfig(n_features=2, n_components=3, n_layers=2))
    full.fit(x, epochs=4, batch_size=64, seed=1, out_dir=tmp_path / "a")
    part = DRMM(DRMMConfig(n_features=2, n_components=3, n_layers=2))
    part.fit(x, epochs=4, batch_size=64, seed=1, out_dir=tmp_path / "b", stop_after_steps=6)
    back = deepmix.load(tmp_path / "b")
    back.fit(x, out_dir=tmp_path / "b", resume=True)
    for a, b in zip(full.state_dict().values(), back.state_dict().values()):
        assert torch.equal(a, b)


def test_schedules():
    assert rho_schedule(0.0) < 1e-4 and abs(rho_schedule(0.5) - 0.5) < 1e-12
    assert rho_schedule(1.0, 0.5) == pytest.approx(0.5)
    assert lr_factor(0.2) == 1.0 and lr_factor(0.75) == pytest.approx(0.25)


# ----------------------------------------------------------------------- bad input
def test_bad_conditions_are_one_clear_error_each():
    m = _model(D=2, K=4, L=2)
    cases = {
        "shape": DRMMCondition(inequalities=(Inequality(torch.tensor([1.0, 0.0, 2.0]), 0.0),)),
        "empty feasible set": DRMMCondition(box=Box(low=torch.tensor([0.5, 0.0]),
                                                    high=torch.tensor([0.2, 1.0]))),
        "unknown stream 'y'": DRMMCondition(prior=GaussianPrior(0.0, 1.0, stream="y")),
        "mask has shape": DRMMCondition(values=torch.zeros(2), mask=torch.ones(3)),
        "NaN": DRMMCondition(values=torch.tensor([float("nan"), 0.0]),
                             mask=torch.tensor([1.0, 0.0])),
        "nonzero": DRMMCondition(inequalities=(Inequality(torch.zeros(2), 1.0),)),
    }
    for message, cond in cases.items():
        with pytest.raises(InputError, match=message):
            m.sample(4, condition=cond)
    # NaN where the mask says unknown is fine: those entries are never read
    m.sample(4, condition=DRMMCondition(values=torch.tensor([0.1, float("nan")]),
                                        mask=torch.tensor([1.0, 0.0])))
    with pytest.raises(InputError, match="DRMMCondition"):
        m.sample(4, condition={"x": 1})
    with pytest.raises(InputError, match="mask must be a bool"):
        m.complete(torch.zeros(3, 2), torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ConfigError):
        DRMMConfig(n_components=0)
    with pytest.raises(DeepmixError, match="features"):
        m.log_prob(torch.zeros(3, 5))


# ----------------------------------------------------------------------- data
def test_drmm_toy_data():
    a = drmm_swissroll(500, seed=3)
    assert a.shape == (500, 2) and torch.equal(a, drmm_swissroll(500, seed=3))
    assert float(a.abs().max()) <= 1.0
    r3 = drmm_swissroll(100, dims=3, generator=torch.Generator().manual_seed(0))
    assert r3.shape == (100, 3) and float(r3[:, 2].abs().max()) <= 2.0
    s = drmm_sierpinski(1000, depth=2, seed=0, dtype=F64)
    assert float(s.norm(dim=1).max()) <= 1.0 + 1e-9
    # depth 2: nothing lands in the removed middle triangle (centroid at the origin)
    assert float(s.norm(dim=1).min()) > 0.2
    arm = arm_ik(300, seed=1)
    assert arm.shape == (300, 6) and float(arm[:, :4].abs().max()) <= math.pi / 2
    torch.testing.assert_close(arm_end_effector(arm[:, :4]), arm[:, 4:])
    torch.testing.assert_close(arm_end_effector(torch.zeros(1, 4)), torch.tensor([[1.2, 0.0]]))
    with pytest.raises(DeepmixError):
        drmm_swissroll(0)


# ----------------------------------------------------------------------- 6. Sierpinski modes
def test_sierpinski_two_layers_of_three_give_nine_modes():
    x = drmm_sierpinski(1024, seed=0)
    m = DRMM(DRMMConfig(n_features=2, n_components=3, n_layers=2))
    m.fit(x, epochs=40, batch_size=64, seed=0)
    s = m.sample(3000, generator=torch.Generator().manual_seed(0))
    modes, counts = torch.unique(s, dim=0, return_counts=True)
    big = modes[counts > 3000 * 0.02]                # modes with some mass, not stray paths
    assert len(big) == 9
    d = torch.cdist(big, big) + 10 * torch.eye(9)
    assert float(d.min()) > 0.1                      # separate clusters


# ----------------------------------------------------------------------- CLI
def test_cli_train_resume_evaluate_sample(tmp_path, capsys):
    from deepmix.cli.main import main

    out = tmp_path / "run"
    base = ["--model", "drmm", "--data", "digits", "--k", "4", "--layers", "2",
            "--batch-size", "256", "--out", str(out), "--no-progress"]
    assert main(["train", *base, "--epochs", "1"]) == 0
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--no-progress"]) == 0
    model = deepmix.load(out)
    assert isinstance(model, DRMM) and model.n_layers == 2 and model.n_components == 4
    assert main(["evaluate", str(out), "--json", str(tmp_path / "e.json")]) == 0
    assert main(["sample", str(out), "--n", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0
    assert main(["inpaint", str(out), "--n", "4", "--mask", "right-half", "--out",
                 str(tmp_path / "i.png"), "--json", str(tmp_path / "i.json")]) == 0
    import json

    result = json.loads((tmp_path / "i.json").read_text())
    assert result["family"] == "drmm" and result["mse_missing"] >= 0
    assert main(["train", *base[:-3], "--preset", "mnist", "--out", str(tmp_path / "p"),
                 "--epochs", "1"]) == 2               # the preset's 28x28 is not digits' 8x8
    assert "mnist" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()                 # refused before anything is written


# ----------------------------------------------------------------------- backward sampling
def test_backward_sampling_stays_on_the_data_and_keeps_the_condition(roll_models):
    m = roll_models[4]
    x = drmm_swissroll(1024, seed=0)
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    fwd, bwd = m.sample(1000, generator=g()), m.sample_backward(1000, generator=g())
    near = {k: float(torch.cdist(v, x).min(1).values.mean()) for k, v in
            (("fwd", fwd), ("bwd", bwd))}
    assert near["bwd"] < 1.5 * near["fwd"] and near["bwd"] < 0.1, near
    assert float((bwd.mean(0) - x.mean(0)).abs().max()) < 0.2
    assert torch.equal(bwd, m.sample_backward(1000, generator=g()))
    cond = DRMMCondition(values=torch.tensor([0.5, 0.0]), mask=torch.tensor([1.0, 0.0]))
    for mode, a in (("additive", 0.5), ("average", 1 / 3)):
        s = m.sample_backward(256, generator=g(), condition=cond, skip=a, skip_mode=mode)
        assert float(((s[:, 0] - 0.5).abs() < 0.05).float().mean()) >= 0.9
    one = m.sample_backward(16, generator=g(), condition=cond, temperature=0.0)
    assert torch.equal(one, one[:1].expand_as(one))
    with pytest.raises(ConfigError, match="skip_mode"):
        m.sample_backward(4, skip_mode="concat")


# ----------------------------------------------------------------------- 10. patch hierarchy
def test_patches_follow_tf_same_and_fold_inverts_them():
    from deepmix.models.drmm import extract_patches, fold_patches, same_padding

    assert [same_padding(s) for s in (28, 14, 7)] == [(0, 1, 14), (0, 1, 7), (1, 1, 4)]
    x = torch.randn(2, 28, 28, 3, dtype=F64)
    p, m = extract_patches(x, torch.ones_like(x))
    assert p.shape == (2 * 14 * 14, 27)
    torch.testing.assert_close(p[0].reshape(3, 3, 3), x[0, :3, :3])     # no padding before
    assert float(m[13].reshape(3, 3, 3)[:, 2].sum()) == 0               # padded right column
    torch.testing.assert_close(fold_patches(p, 2, (28, 28, 3)), x)
    y = torch.randn(1, 7, 7, 2, dtype=F64)
    q, _ = extract_patches(y, torch.ones_like(y))
    assert q.shape == (16, 18)
    torch.testing.assert_close(q[0].reshape(3, 3, 2)[1:, 1:], y[0, :2, :2])  # one padded row/col
    torch.testing.assert_close(fold_patches(q, 1, (7, 7, 2)), y)


def _patch_model():
    cfg = DRMMConfig(n_features=64, n_components=8, n_layers=2, image_shape=(8, 8, 1),
                     patch_layers=(1, 2), patch_components=(4, 4))
    return DRMM.from_config(cfg)


def test_patch_drmm_builds_trains_in_stages_samples_completes_and_round_trips(tmp_path):
    from deepmix.models.drmm import PatchDRMM

    m = _patch_model()
    assert isinstance(m, PatchDRMM) and m.family == "drmm"
    assert [b.config.positions for b in m.blocks] == [16, 4, 1]         # per-position w
    # block 2 sees 9 patch pixels x 1 latent stream of 4; the global 2x2 grid x 2 streams of 4
    assert m.blocks[1].config.categorical_blocks == (9,)
    assert m.blocks[2].config.categorical_blocks == (8,)
    x = torch.rand(96, 64, generator=torch.Generator().manual_seed(0))
    before = [b.layers[0].logits.detach().clone() for b in m.blocks]
    m.fit(x, epochs=3, batch_size=32, seed=0, out_dir=tmp_path / "run")  # 9 steps, 3 stages
    assert all(not torch.equal(b, a.layers[0].logits) for b, a in zip(before, m.blocks))
    s = m.sample(5, generator=torch.Generator().manual_seed(1))
    assert s.shape == (5, 64) and bool(torch.isfinite(s).all())
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:, :4] = True
    mask = mask.reshape(1, 64).expand(3, 64)
    c = m.complete(x[:3], mask, generator=torch.Generator().manual_seed(2), n_samples=4)
    assert torch.equal(c[mask], x[:3][mask]) and bool(torch.isfinite(c).all())
    back = deepmix.load(tmp_path / "run")
    assert type(back) is PatchDRMM
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(back.sample(4, generator=g()), m.sample(4, generator=g()))
    with pytest.raises(NoDensityError):
        m.log_prob(x[:2])
    with pytest.raises(InputError, match="backward"):
        m.sample_with_scores(2)
    with pytest.raises(InputError, match="known pixels only"):
        m.sample(2, condition=DRMMCondition(box=Box(low=0.0, high=1.0)))
    with pytest.raises(ConfigError, match="n_features"):
        DRMM.from_config(DRMMConfig(n_features=10, image_shape=(8, 8, 1), patch_layers=(1,),
                                    patch_components=(4,)))


def test_patch_drmm_resume_across_a_stage_equals_an_uninterrupted_run(tmp_path):
    x = torch.rand(64, 64, generator=torch.Generator().manual_seed(0))
    full = _patch_model()
    full.fit(x, epochs=3, batch_size=32, seed=4, out_dir=tmp_path / "a")
    part = _patch_model()
    part.fit(x, epochs=3, batch_size=32, seed=4, out_dir=tmp_path / "b", stop_after_steps=3)
    back = deepmix.load(tmp_path / "b")
    back.fit(x, out_dir=tmp_path / "b", resume=True)
    for (k, a), b in zip(full.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("shape,patch,glob,total,top", [
    ((28, 28, 1), ((2, 64), (4, 64)), (4, 256), 13.6e6, 13_239_296),
    ((64, 64, 1), ((3, 32), (4, 64), (5, 128), (6, 256)), (10, 256), 77.6e6, 65_866_240),
    ((32, 32, 3), ((4, 64), (6, 128), (8, 256)), (10, 256), 104.9e6, 86_837_760)])
def test_table1_hierarchies_count_as_the_spec_says(shape, patch, glob, total, top):
    # spec §8: the paper's sizes are the global blocks alone; with patch blocks and global w
    # the totals are about 13.6M, 77.6M, 104.9M (built on the meta device: no memory)
    cfg = DRMMConfig(n_features=int(np.prod(shape)), n_components=glob[1], n_layers=glob[0],
                     image_shape=shape, patch_layers=tuple(p[0] for p in patch),
                     patch_components=tuple(p[1] for p in patch), patch_marginals="global")
    with torch.device("meta"):
        m = DRMM.from_config(cfg)
    assert m.blocks[-1].n_parameters == top
    assert abs(m.n_parameters - total) < 0.05e6


def test_membership_terms_equal_direct_differences_on_offset_data():
    from deepmix.models.drmm import ContinuousComponents

    g = torch.Generator().manual_seed(0)
    for sigma in ("scalar", "diagonal"):
        comp = ContinuousComponents(5, 3, sigma)
        x = 1000.0 + torch.randn(40, 3, generator=g)          # raw, offset data (IK-like)
        with torch.no_grad():
            comp.mu.copy_(1000.0 + torch.randn(5, 3, generator=g))
            comp.log_var.copy_(torch.randn(comp.log_var.shape, generator=g) - 3.0)
        mask = (torch.rand(40, 3, generator=g) > 0.3).float()
        d = x[:, None].double() - comp.mu[None].double()
        var = comp.variances().double()
        ref = -0.5 * ((mask[:, None].double() * d * d / var).sum(-1)
                      + (mask.double() * torch.log(var)).sum(-1, keepdim=True))
        torch.testing.assert_close(comp.log_terms(x, mask).double(), ref, rtol=1e-4, atol=1e-2)


def test_sort_by_density_orders_the_same_samples_by_score():
    m = _model(D=2, K=4, L=3)
    cond = DRMMCondition(inequalities=(Inequality(torch.tensor([1.0, 0.0]), 0.0),))
    a, sa = m.sample_with_scores(40, generator=torch.Generator().manual_seed(0), condition=cond)
    b, sb = m.sample_with_scores(40, generator=torch.Generator().manual_seed(0), condition=cond,
                                 sort_by_density=True)
    assert bool((sb[1:] <= sb[:-1]).all())
    torch.testing.assert_close(b, a[torch.argsort(sa, descending=True, stable=True)])


def test_curriculum_v2_schedules_and_end_to_end_gradients():
    from deepmix.training.objectives.drmm import CURRICULA, DRMMObjective, DRMMOptions

    v2 = CURRICULA["v2"]
    assert v2.rho(0.49, 1.0) == 0.0 and v2.rho(0.5, 1.0) == 1.0
    assert not v2.end_to_end(0.7) and v2.end_to_end(0.8) and v2.restart_step(100) == 50
    with pytest.raises(ConfigError, match="v3 is not built"):
        DRMMOptions(curriculum="v3")
    m = _model(D=2, K=3, L=2)
    obj = DRMMObjective(DRMMOptions())
    x = torch.randn(30, 2, dtype=F64)
    for end_to_end, moved in ((False, False), (True, True)):
        m.zero_grad()
        # the second layer's loss alone: with gradient stops it cannot reach layer 1's means
        losses = obj.layer_losses(m, x, 1.0, alpha=0.0, end_to_end=end_to_end)
        first = -obj.layer_losses(_only_first(m), x, 1.0, alpha=0.0)
        (losses + first).backward()
        g = m.layers[0].streams[0].mu.grad
        assert (g is not None and float(g.abs().max()) > 1e-9) == moved
    rows = DRMM(DRMMConfig(n_features=2, n_components=3, n_layers=2)).fit(
        drmm_sierpinski(128, seed=0), epochs=4, batch_size=32, seed=0, curriculum="v2")
    assert math.isfinite(rows[-1]["loss"])


def _only_first(m: DRMM) -> DRMM:
    """A 1-layer view sharing m's first layer (its loss, subtracted, leaves layer 2's)."""
    view = DRMM(DRMMConfig(n_features=2, n_components=3, n_layers=1, dtype="float64"))
    view.layers[0] = m.layers[0]
    return view


def test_a_categorical_data_stream_trains_and_conditions_both_ways():
    g = torch.Generator().manual_seed(0)
    c = torch.randint(0, 3, (1200,), generator=g)
    xv = torch.tensor([-1.0, 0.0, 1.0])[c] + 0.1 * torch.randn(1200, generator=g)
    onehot = torch.log(torch.nn.functional.one_hot(c, 3).float() * (1 - 1e-6) + 1e-6 / 3)
    m = DRMM(DRMMConfig(n_features=1, n_components=6, n_layers=2, categorical=(3,)))
    m.fit(torch.cat([xv[:, None], onehot], 1), epochs=20, batch_size=64, seed=0)
    means = []
    for k in range(3):
        v = torch.zeros(4)
        v[1:] = onehot[c == k][0]
        cond = DRMMCondition(values=v, mask=torch.tensor([0.0, 1.0, 1.0, 1.0]))
        s = m.sample(500, generator=torch.Generator().manual_seed(1), condition=cond)
        means.append(float(s[:, 0].mean()))
        assert int(s[:, 1:].softmax(1).mean(0).argmax()) == k     # the known class comes back
    assert means[1] - means[0] > 0.3 and means[2] - means[1] > 0.3
    cond = DRMMCondition(values=torch.tensor([1.0, 0.0, 0.0, 0.0]),
                         mask=torch.tensor([1.0, 0.0, 0.0, 0.0]))
    s = m.sample(500, generator=torch.Generator().manual_seed(1), condition=cond)
    assert int(s[:, 1:].softmax(1).mean(0).argmax()) == 2            # x = 1 -> class 2


def test_reference_density_scores():
    m = _model(D=2, K=4, L=1)
    x = torch.randn(30, 2, dtype=F64)
    with torch.no_grad():
        exact = m.log_prob(x)
    c = math.log(2 * math.pi)                       # D/2 log 2 pi, D = 2
    v3 = m.reference_log_density(x, "v3", 4)        # no latents to sample at L = 1
    torch.testing.assert_close(v3, exact + c)
    v1 = m.reference_log_density(x, "v1", 2)
    # relative to the batch maximum: equal to the density up to one shared constant
    torch.testing.assert_close(v1 - v1.max(), exact - exact.max())
    deep = _model(D=2, K=3, L=3)
    g = torch.Generator().manual_seed(0)
    assert bool(torch.isfinite(deep.reference_log_density(x, "v3", 8, generator=g)).all())
    with pytest.raises(ConfigError, match="v1 or v3"):
        deep.reference_log_density(x, "v2")


# ------------------------------------------------------------- training step against the spec
def test_training_loss_equals_a_direct_transcription_of_spec_section_4():
    """One drmm-em loss of a 3-layer model = spec §4 written out with direct differences:
    forward h = argmax m (rho 1, with log w), E-step e = argmax(data + rho_E latent) (no log
    w), loss -mean m[e] - alpha mean_k max_i data, residuals and one-hot latents passed on."""
    from deepmix.training.objectives import make_objective
    K, D, N, rho = 5, 3, 60, 0.37
    m = _model(D=D, K=K, L=3)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1),
                                     dtype=F64))
    x = torch.randn(N, D, generator=torch.Generator().manual_seed(2), dtype=F64)
    loss = make_objective("drmm", "drmm-em", {}).layer_losses(m, x, rho)
    r, lat, ref = x.clone(), [], torch.zeros((), dtype=F64)
    for layer in m.layers:
        mu, lv = layer.streams[0].mu, layer.streams[0].log_var
        data = -0.5 * (((r[:, None, :] - mu[None]) ** 2).sum(-1) / lv.exp() + D * lv)
        latent = torch.zeros(N, K, dtype=F64)
        log_ps = [torch.log_softmax(mod.logits, -1) for mod in layer.streams[1:]]
        for z, log_p in zip(lat, log_ps):
            latent = latent + torch.softmax(z, -1) @ log_p.T
        full = torch.log_softmax(layer.logits, -1) + data + latent
        e, h = (data + rho * latent).argmax(1), full.argmax(1)
        ref = ref - full.gather(1, e[:, None]).mean() - 0.01 * data.max(0).values.mean()
        r = r - mu[h]
        lat = [torch.log_softmax(z - log_p[h], -1) for z, log_p in zip(lat, log_ps)]
        onehot = torch.full((N, K), math.log(1e-8 / K), dtype=F64)
        onehot[torch.arange(N), h] = math.log(1 - 1e-8 + 1e-8 / K)
        lat.append(onehot)
    assert torch.allclose(loss, ref, rtol=1e-10, atol=1e-10)


def test_the_second_layer_models_the_first_layers_residuals():
    """Data = one of 4 far centres + one of 4 small offsets (16 clusters): a second layer of 4
    components, fitted to the first layer's residuals, has a smaller sigma than the first and
    brings the samples closer to the 16 clusters than the first layer alone (hard EM may merge
    two offsets, so only the improvement is asserted)."""
    g = torch.Generator().manual_seed(0)
    A = torch.tensor([[1.0, 1], [1, -1], [-1, 1], [-1, -1]])
    B = 0.15 * A
    n = 4096
    x = A[torch.randint(0, 4, (n,), generator=g)] + B[torch.randint(0, 4, (n,), generator=g)] \
        + 0.005 * torch.randn(n, 2, generator=g)
    centres = (A[:, None, :] + B[None]).reshape(-1, 2)
    err = {}
    for L in (1, 2):
        m = DRMM(DRMMConfig(n_features=2, n_components=4, n_layers=L))
        m.fit(x, epochs=20, batch_size=64, seed=0)          # 1280 steps
        s = m.sample(2000, generator=torch.Generator().manual_seed(1))
        err[L] = float(torch.cdist(s, centres).min(1).values.mean())
    mu1, mu2 = (layer.streams[0].mu.detach() for layer in m.layers)
    assert torch.cdist(mu1, A).min(1).values.max() < 0.05
    assert mu2.norm(dim=1).max() < 0.3                       # the offsets' scale, not A's
    s1, s2 = (float(layer.streams[0].variances().detach().sqrt()[0]) for layer in m.layers)
    assert s2 < 0.75 * s1
    assert err[2] < 0.6 * err[1]


@pytest.mark.parametrize("sigma", ["scalar", "diagonal"])
def test_direct_and_product_distance_paths_agree_in_value_and_gradient(sigma):
    # The small-batch fast path (broadcast differences) equals the matrix-product path on
    # offset data with fractional masks, values and gradients of every parameter.
    from deepmix.models.drmm.components import ContinuousComponents

    g = torch.Generator().manual_seed(4)
    mod = ContinuousComponents(7, 5, sigma, dtype=torch.float64)
    with torch.no_grad():
        mod.mu.copy_(3.0 + torch.randn(7, 5, generator=g, dtype=torch.float64))
        mod.log_var.copy_(0.3 * torch.randn(mod.log_var.shape, generator=g, dtype=torch.float64))
    x = 3.0 + torch.randn(40, 5, generator=g, dtype=torch.float64)
    mask = (torch.rand(40, 5, generator=g, dtype=torch.float64) > 0.3).to(torch.float64)
    mask[:5] *= 0.5
    out = []
    for path in (mod._log_terms_direct, mod._log_terms_products):
        mod.zero_grad()
        v = path(x, mask)
        (v * torch.linspace(-1, 1, 7, dtype=torch.float64)).sum().backward()
        out.append((v.detach(), mod.mu.grad.clone(), mod.log_var.grad.clone()))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-9)
    # and log_terms picks each path by size
    assert torch.equal(mod.log_terms(x, mask), mod._log_terms_direct(x, mask))
    mod.direct_limit = 0
    assert torch.equal(mod.log_terms(x, mask), mod._log_terms_products(x, mask))
