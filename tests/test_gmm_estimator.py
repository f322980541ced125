"""GaussianMixture as a scikit-learn estimator over the flat-GMM family's nn.Module."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, KFold

import deepmix
from deepmix import GaussianMixture
from deepmix.models import MixtureDensity
from deepmix.training.checkpoint import load_model, save_model


@pytest.fixture(scope="module")
def blobs() -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0, 0.0], [4.0, 4.0, 0.0], [0.0, 5.0, 5.0]])
    return np.concatenate([c + rng.normal(size=(150, 3)) * (i + 1) * 0.4
                           for i, c in enumerate(centres)])


def test_get_set_params_and_clone_keep_every_argument():
    gm = GaussianMixture(3, covariance_type="full", tol=1e-4, random_state=7, max_iter=20,
                         dtype=torch.float32, batch_size=64)
    params = gm.get_params()
    assert params["n_components"] == 3 and params["dtype"] is torch.float32
    twin = clone(gm)
    assert twin is not gm and twin.get_params() == params
    twin.set_params(n_components=5)
    assert twin.n_components == 5 and gm.n_components == 3


def test_clone_of_a_fitted_estimator_is_unfitted(blobs):
    gm = GaussianMixture(3, random_state=0).fit(blobs)
    twin = clone(gm)
    assert twin.means_ is None
    with pytest.raises(deepmix.DeepmixError, match="not fitted"):
        twin.score(blobs)


def test_grid_search_picks_the_true_number_of_components(blobs):
    search = GridSearchCV(GaussianMixture(random_state=0, covariance_type="full"),
                          {"n_components": [1, 3, 6]},
                          cv=KFold(3, shuffle=True, random_state=0))
    search.fit(blobs)
    assert search.best_params_ == {"n_components": 3}
    assert np.isfinite(search.best_score_)


@pytest.mark.parametrize("ct", ["full", "diag", "spherical"])
def test_fitted_state_is_a_registered_module(blobs, ct, tmp_path):
    gm = GaussianMixture(3, covariance_type=ct, random_state=0).fit(blobs)
    module = gm.model_
    assert isinstance(module, MixtureDensity)
    # Every fitted number is in state_dict: a fresh module loaded from it scores the same.
    fresh = MixtureDensity.from_config(module.config)
    fresh.load_state_dict(module.state_dict())
    x = torch.as_tensor(blobs)
    ref = torch.as_tensor(gm.score_samples(blobs))
    torch.testing.assert_close(fresh.log_prob(x).detach(), ref, rtol=1e-9, atol=1e-9)
    # ... and through a run folder and deepmix.load.
    save_model(module, tmp_path / "run")
    back = deepmix.load(tmp_path / "run")
    assert isinstance(back, MixtureDensity) and back.covariance_type == ct
    torch.testing.assert_close(back.log_prob(x).detach(), ref, rtol=1e-9, atol=1e-9)
    again = GaussianMixture.from_model(back)
    np.testing.assert_allclose(again.score_samples(blobs), ref.numpy(), rtol=1e-9)
    np.testing.assert_allclose(again.predict_proba(blobs), gm.predict_proba(blobs), atol=1e-9)


def test_model_follows_a_refit(blobs):
    gm = GaussianMixture(2, random_state=0).fit(blobs)
    first = gm.model_
    assert gm.model_ is first           # cached while the fit stands
    gm.set_params(n_components=3).fit(blobs)
    assert gm.model_ is not first and gm.model_.n_components == 3


def test_from_model_refuses_other_families():
    with pytest.raises(deepmix.DeepmixError, match="MixtureDensity"):
        GaussianMixture.from_model(torch.nn.Linear(2, 2))


def test_bad_parameters_are_named_at_the_door():
    with pytest.raises(deepmix.DeepmixError, match="n_components must be an integer"):
        GaussianMixture(0)
    with pytest.raises(deepmix.DeepmixError, match="max_iter"):
        GaussianMixture(2, max_iter=2.5)
    gm = GaussianMixture(2)
    gm.set_params(covariance_type="tied")
    with pytest.raises(deepmix.DeepmixError, match="Unknown covariance type 'tied'"):
        gm.fit(np.zeros((10, 2)))


def test_degenerate_data_get_scikit_learns_advice_not_a_linalg_traceback():
    X = np.repeat(np.array([[0.0, 1.0], [2.0, 3.0]]), 5, axis=0)
    with pytest.raises(deepmix.DeepmixError, match="ill-defined.*covariance.*reg_covar"):
        GaussianMixture(3, covariance_type="full", reg_covar=0.0, random_state=0).fit(X)
