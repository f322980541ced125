"""Completion from a mask: the flat GMM's closed-form conditional, against references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepmix import GaussianMixture
from deepmix.errors import DeepmixError
from deepmix.inference import flat_gmm_inpaint
from deepmix.models import MixtureDensity


def _fitted(ct: str) -> tuple[MixtureDensity, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 4, generator=g, dtype=torch.float64) @ torch.tensor(
        [[1.0, 0.6, 0.0, 0.2], [0.0, 1.0, 0.4, 0.0], [0.0, 0.0, 1.0, 0.5], [0.0, 0.0, 0.0, 1.0]],
        dtype=torch.float64)
    x[:200] += 3.0
    gm = GaussianMixture(2, covariance_type=ct, random_state=0).fit(x)
    return gm.model_, x


@pytest.mark.parametrize("ct", ["diag", "spherical"])
def test_diagonal_completion_is_the_in_painting_baseline(ct):
    model, x = _fitted(ct)
    mask = torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) > 0.5
    gm = GaussianMixture.from_model(model)
    ref = flat_gmm_inpaint(gm, x[:, None, :, None].float(), mask[:, None, :, None])
    got = model.complete(x, mask)
    torch.testing.assert_close(got.float(), ref[:, 0, :, 0], atol=1e-5, rtol=1e-5)
    assert torch.equal(got[mask], x[mask])


def test_full_completion_equals_the_gaussian_conditional_by_hand():
    model, x = _fitted("full")
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[:, :2] = True                                   # observe x0, x1; complete x2, x3
    got = model.complete(x[:5], mask[:5])
    w, mu, S = model.weights.detach(), model.means.detach(), model.covariances.detach()
    for n in range(5):
        xo = x[n, :2]
        logs, means = [], []
        for k in range(2):
            Soo, Suo = S[k][:2, :2], S[k][2:, :2]
            d = xo - mu[k, :2]
            logs.append(torch.log(w[k]) + torch.distributions.MultivariateNormal(
                mu[k, :2], Soo).log_prob(xo))
            means.append(mu[k, 2:] + Suo @ torch.linalg.solve(Soo, d))
        post = torch.softmax(torch.stack(logs), 0)
        torch.testing.assert_close(got[n, 2:], post @ torch.stack(means))


@pytest.mark.parametrize("ct", ["full", "diag"])
def test_sampled_completions_have_the_conditional_mean(ct):
    model, x = _fitted(ct)
    row = x[:1].repeat(4000, 1)
    mask = torch.zeros_like(row, dtype=torch.bool)
    mask[:, 0] = True
    draws = model.complete(row, mask, method="sample", generator=torch.Generator().manual_seed(3))
    mean = model.complete(row[:1], mask[:1])
    assert torch.equal(draws[:, 0], row[:, 0])
    torch.testing.assert_close(draws[:, 1:].mean(0), mean[0, 1:], atol=0.06, rtol=0.0)


def test_missing_entries_may_be_nan_and_bad_masks_are_named():
    model, x = _fitted("diag")
    holes = x[:3].clone()
    mask = torch.ones_like(holes, dtype=torch.bool)
    mask[:, 3] = False
    holes[:, 3] = float("nan")
    assert bool(torch.isfinite(model.complete(holes, mask)).all())
    with pytest.raises(DeepmixError, match="mask must be a bool array"):
        model.complete(holes, mask.float())
    with pytest.raises(DeepmixError, match="Unknown completion method 'mode'"):
        model.complete(holes, mask, method="mode")
