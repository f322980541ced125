"""Flat GaussianMixture: scikit-learn parity, EM properties, densities, sampling, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture as SkGMM

from deepmix.errors import ConfigError, InputError
from deepmix import GaussianMixture
from deepmix.models import kmeans

TYPES = ["diag", "spherical", "full"]


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    a = rng.normal([0.0, 0.0, 0.0], [1.0, 0.5, 2.0], (400, 3))
    b = rng.normal([6.0, -4.0, 1.0], [0.5, 1.0, 0.3], (200, 3))
    return np.concatenate([a, b])


@pytest.mark.parametrize("ct", TYPES)
def test_transfer_to_and_from_sklearn_gives_equal_densities(blobs, ct):
    ours = GaussianMixture(3, covariance_type=ct, random_state=1).fit(blobs)
    sk = ours.to_sklearn()
    np.testing.assert_allclose(sk.score_samples(blobs), ours.score_samples(blobs), rtol=1e-10)
    np.testing.assert_allclose(sk.predict_proba(blobs), ours.predict_proba(blobs), atol=1e-10)
    assert sk.bic(blobs) == pytest.approx(ours.bic(blobs), rel=1e-10)
    assert sk.aic(blobs) == pytest.approx(ours.aic(blobs), rel=1e-10)
    theirs = SkGMM(3, covariance_type=ct, random_state=2).fit(blobs)
    back = GaussianMixture.from_sklearn(theirs)
    np.testing.assert_allclose(back.score_samples(blobs), theirs.score_samples(blobs), rtol=1e-10)


@pytest.mark.parametrize("ct", TYPES)
def test_fit_is_as_good_as_sklearn(blobs, ct):
    ours = GaussianMixture(2, covariance_type=ct, random_state=0).fit(blobs)
    sk = SkGMM(2, covariance_type=ct, random_state=0).fit(blobs)
    assert ours.converged_
    assert ours.score(blobs) >= sk.score(blobs) - 1e-3


@pytest.mark.parametrize("init", ["kmeans", "k-means++", "random"])
@pytest.mark.parametrize("ct", TYPES)
def test_em_never_lowers_the_likelihood(blobs, init, ct):
    gm = GaussianMixture(4, covariance_type=ct, init_params=init, random_state=3, tol=0.0,
                         max_iter=30)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        gm.fit(blobs)
    h = np.array(gm.history_)
    # one E-step per iteration, under the parameters of the one before (scikit-learn's lower bounds)
    assert len(h) == 30 and np.all(np.diff(h) >= -1e-9)


def test_recovers_a_known_two_component_mixture(blobs):
    gm = GaussianMixture(2, covariance_type="diag", random_state=0).fit(blobs)
    order = np.argsort(gm.means_[:, 0].numpy())
    np.testing.assert_allclose(gm.means_.numpy()[order], [[0, 0, 0], [6, -4, 1]], atol=0.25)
    np.testing.assert_allclose(gm.weights_.numpy()[order], [2 / 3, 1 / 3], atol=0.02)
    np.testing.assert_allclose(np.sqrt(gm.covariances_.numpy()[order]),
                               [[1.0, 0.5, 2.0], [0.5, 1.0, 0.3]], rtol=0.15)


@pytest.mark.parametrize("ct", TYPES)
def test_density_integrates_to_one_in_2d(ct):
    rng = np.random.default_rng(4)
    X = np.concatenate([rng.normal(0, 0.5, (300, 2)), rng.normal([2, 1], [0.3, 0.8], (300, 2))])
    gm = GaussianMixture(3, covariance_type=ct, random_state=0).fit(X)
    h = 0.02
    g = np.arange(-4, 6, h)
    xx, yy = np.meshgrid(g, g, indexing="ij")
    grid = np.stack([xx.ravel(), yy.ravel()], 1)
    assert np.exp(gm.score_samples(grid)).sum() * h * h == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("ct", TYPES)
def test_samples_reproduce_the_mixture_moments(blobs, ct):
    gm = GaussianMixture(2, covariance_type=ct, random_state=0).fit(blobs)
    X, labels = gm.sample(40_000, seed=5)
    w = gm.weights_.numpy()
    mu = gm.means_.numpy()
    cov = gm.covariances_.numpy()
    if ct == "diag":
        cov = np.stack([np.diag(c) for c in cov])
    elif ct == "spherical":
        cov = np.stack([c * np.eye(3) for c in cov])
    mean = (w[:, None] * mu).sum(0)
    second = sum(w[k] * (cov[k] + np.outer(mu[k], mu[k])) for k in range(2))
    np.testing.assert_allclose(X.numpy().mean(0), mean, atol=0.05)
    np.testing.assert_allclose(np.cov(X.numpy().T, bias=True), second - np.outer(mean, mean),
                               atol=0.15)
    assert np.bincount(labels.numpy(), minlength=2) / 40_000 == pytest.approx(w, abs=0.01)
    assert torch.equal(gm.sample(7, seed=9)[0], gm.sample(7, seed=9)[0])


def test_chunked_statistics_equal_one_chunk(blobs):
    a = GaussianMixture(3, random_state=0, batch_size=10_000).fit(blobs)
    b = GaussianMixture(3, random_state=0, batch_size=37).fit(blobs)
    np.testing.assert_allclose(a.score_samples(blobs), b.score_samples(blobs), rtol=1e-9)


def test_float32_model_agrees_with_float64(blobs):
    a = GaussianMixture(2, random_state=0).fit(blobs)
    b = GaussianMixture(2, random_state=0, dtype=torch.float32).fit(blobs)
    assert b.log_prob(blobs).dtype == torch.float32
    assert b.score(blobs) == pytest.approx(a.score(blobs), abs=1e-3)


def test_kmeans_finds_separated_centres():
    rng = np.random.default_rng(6)
    centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], dtype=np.float64)
    X = torch.from_numpy(np.concatenate([c + rng.normal(0, 0.3, (100, 2)) for c in centres]))
    C, labels = kmeans(X, 4, generator=torch.Generator().manual_seed(0))
    key = lambda a: np.lexsort((a[:, 1], a[:, 0]))  # noqa: E731
    np.testing.assert_allclose(C.numpy()[key(C.numpy())], centres[key(centres)], atol=0.1)
    assert len(set(labels.tolist())) == 4


@pytest.mark.parametrize("make, X, message", [
    (lambda: GaussianMixture(2), np.zeros(10), "shape"),
    (lambda: GaussianMixture(20), np.zeros((5, 2)), "n_samples >= n_components"),
    (lambda: GaussianMixture(2), np.array([[0.0, np.nan], [1.0, 2.0], [3.0, 4.0]]), "NaN"),
    (lambda: GaussianMixture(2), [[1.0, 2.0]], "numpy array or torch tensor"),
])
def test_bad_input_is_named(make, X, message):
    with pytest.raises(InputError, match=message):
        make().fit(X)


def test_bad_options_and_unfitted_use_are_named(blobs):
    with pytest.raises(ConfigError, match="Unknown covariance type 'tied'"):
        GaussianMixture(2, covariance_type="tied")
    with pytest.raises(ConfigError, match="Unknown init_params 'magic'"):
        GaussianMixture(2, init_params="magic")
    with pytest.raises(InputError, match="not fitted"):
        GaussianMixture(2).score_samples(blobs)
    gm = GaussianMixture(2, random_state=0).fit(blobs)
    with pytest.raises(InputError, match="fitted on 3"):
        gm.score_samples(np.zeros((4, 2)))


@pytest.mark.parametrize("ct", TYPES)
def test_stepwise_em_gets_close_to_batch_em(blobs, ct):
    batch = GaussianMixture(2, covariance_type=ct, random_state=0).fit(blobs)
    step = GaussianMixture(2, covariance_type=ct, random_state=0, em="stepwise",
                           stepwise_batch=50, max_iter=30, tol=1e-4).fit(blobs)
    assert step.score(blobs) == pytest.approx(batch.score(blobs), abs=0.02)


def test_partial_fit_over_batches_fits_data_seen_in_pieces(blobs):
    rng = np.random.default_rng(1)
    gm = GaussianMixture(2, random_state=0)
    for _ in range(20):
        for part in np.array_split(rng.permutation(blobs), 12):
            gm.partial_fit(part)
    reference = GaussianMixture(2, random_state=0).fit(blobs)
    assert gm.score(blobs) == pytest.approx(reference.score(blobs), abs=0.02)
    with pytest.raises(InputError, match="first batch"):
        GaussianMixture(5).partial_fit(blobs[:3])
    with pytest.raises(ConfigError, match="Unknown EM mode"):
        GaussianMixture(2, em="online")
