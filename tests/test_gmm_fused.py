"""Fused flat-GMM EM: the fast path equals the reference path; k-means equals plain Lloyd; EM
stops where scikit-learn's does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.mixture import GaussianMixture as SkGMM

import deepmix
from deepmix import GaussianMixture
from deepmix.models import MixtureDensity, kmeans
from deepmix.training import FitConfig, fit
from deepmix.training.gmm_em import MixtureEM


def _data(n: int = 3000, d: int = 12, seed: int = 0) -> torch.Tensor:
    # Far from the origin, with nearly constant features shared by every component (images:
    # background pixels) and one component nearly constant in one more feature: float32
    # products cancel badly there unless the design matrix is shifted well.
    g = torch.Generator().manual_seed(seed)
    centres = 5.0 + torch.randn(4, d, generator=g, dtype=torch.float64)
    centres[:, : d // 3] = 5.0
    scale = torch.full((4, d), 0.3, dtype=torch.float64)
    scale[:, : d // 3] = 1e-3
    scale[0, -1] = 1e-3
    scale = scale[torch.arange(n) % 4]
    return centres[torch.arange(n) % 4] + torch.randn(n, d, generator=g,
                                                       dtype=torch.float64) * scale


def _engine(ct: str, x: torch.Tensor) -> MixtureEM:
    gm = GaussianMixture(4, covariance_type=ct, random_state=0, max_iter=3, tol=0.0,
                         compute_dtype=torch.float64)
    with pytest.warns(RuntimeWarning):
        gm.fit(x)
    e = MixtureEM(4, ct)
    e.weights_, e.means_, e.covariances_ = gm.weights_, gm.means_, gm.covariances_
    return e


def _fused_iteration(e: MixtureEM, x: torch.Tensor, cdt: torch.dtype, chunk: int = 700):
    f = e.fused_rows(x, cdt, shift=e.precision_weighted_shift())
    terms = e.fused_terms(f.shift, cdt)
    total, stats = 0.0, None
    for start in range(0, x.shape[0], chunk):
        t, s = e.fused_statistics(f[start:start + chunk], terms)
        total += float(t)
        stats = list(s) if stats is None else [a + b for a, b in zip(stats, s)]
    return total / x.shape[0], stats


@pytest.mark.parametrize("ct", ["diag", "spherical"])
def test_fused_em_iteration_equals_the_reference_path(ct):
    x = _data()
    e = _engine(ct, x)
    XX = e.squares(x)
    ll_ref, resp = e.e_step(x, XX)
    ref = e.statistics(x, resp, XX)
    ll64, st64 = _fused_iteration(e, x, torch.float64)
    # (1e-9: the reference's uncentred square itself cancels at precisions of 1e6)
    assert ll64 == pytest.approx(ll_ref, rel=1e-9)
    for a, b in zip(st64, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    # float32 products: float32 rounding of the log-densities and of the centred moments.
    ll32, st32 = _fused_iteration(e, x, torch.float32)
    assert ll32 == pytest.approx(ll_ref, rel=1e-6)
    for a, b in zip(st32, ref):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # ... and the M-step from them: variances of 1e-6 survive (the centring at work).
    ours, theirs = MixtureEM(4, ct), MixtureEM(4, ct)
    ours.set_from_statistics(*st32)
    theirs.set_from_statistics(*ref)
    torch.testing.assert_close(ours.covariances_, theirs.covariances_, rtol=1e-3, atol=0.0)
    torch.testing.assert_close(ours.means_, theirs.means_, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("ct", ["diag", "spherical"])
def test_float32_products_fit_what_float64_fits(ct):
    x = _data(seed=1)
    fits = {cdt: GaussianMixture(4, covariance_type=ct, random_state=0, compute_dtype=cdt)
            .fit(x) for cdt in (torch.float32, torch.float64)}
    a, b = fits[torch.float32], fits[torch.float64]
    assert a.converged_ and b.converged_ and a.means_.dtype == torch.float64
    assert a.score(x) == pytest.approx(b.score(x), rel=1e-6)
    torch.testing.assert_close(a.means_, b.means_, rtol=1e-5, atol=1e-6)


def test_auto_compute_dtype_is_float64_on_small_data_and_checked():
    x = _data(n=200)
    a = GaussianMixture(4, random_state=0).fit(x)
    b = GaussianMixture(4, random_state=0, compute_dtype=torch.float64).fit(x)
    assert a.history_ == b.history_
    twin = clone(GaussianMixture(3, compute_dtype=torch.float32))
    assert twin.get_params()["compute_dtype"] is torch.float32
    with pytest.raises(deepmix.DeepmixError, match="compute_dtype"):
        GaussianMixture(3, compute_dtype="half")


@pytest.mark.parametrize("ct", ["diag", "spherical"])
def test_em_stops_where_scikit_learn_stops(ct):
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(c, s, (300, 3)) for c, s in [(0, 1.0), (3, 0.5), (6, 2.0)]])
    start = {}

    def keep(i, ll, gm):
        if i == 0:
            start.update(w=gm.weights_.numpy().copy(), m=gm.means_.numpy().copy(),
                         c=gm.covariances_.numpy().copy())

    ours = GaussianMixture(3, covariance_type=ct, random_state=0, tol=1e-3).fit(X, callback=keep)
    sk = SkGMM(3, covariance_type=ct, random_state=0, tol=1e-3, weights_init=start["w"],
               means_init=start["m"], precisions_init=1.0 / start["c"]).fit(X)
    assert ours.n_iter_ == sk.n_iter_ and ours.converged_ == sk.converged_
    assert ours.lower_bound_ == pytest.approx(sk.lower_bound_, rel=1e-10)
    h = ours.history_
    assert len(h) == ours.n_iter_ and abs(h[-1] - h[-2]) < 1e-3
    assert all(abs(b - a) >= 1e-3 for a, b in zip(h[:-2], h[1:-1]))


def _plain_lloyd(X: torch.Tensor, C: torch.Tensor, tol: float = 1e-4):
    threshold = tol * float(X.double().var(0, unbiased=False).mean())
    labels = torch.cdist(X.double(), C.double()).argmin(1)
    for _ in range(300):
        new = torch.stack([X[labels == j].double().mean(0) if bool((labels == j).any())
                           else C[j].double() for j in range(C.shape[0])]).to(X.dtype)
        shift = float(((new.double() - C.double()) ** 2).sum())
        C = new
        again = torch.cdist(X.double(), C.double()).argmin(1)
        same, labels = torch.equal(again, labels), again
        if shift <= threshold or same:
            break
    return C, labels


@pytest.mark.parametrize("k", [1, 3, 12])
def test_kmeans_with_bounds_equals_plain_lloyd(k):
    g = torch.Generator().manual_seed(0)
    X = (torch.randn(2000, 10, generator=g)
         + 3.0 * torch.randn(12, 10, generator=g)[torch.randint(12, (2000,), generator=g)])
    seeds, _ = kmeans(X, k, n_iter=0, generator=torch.Generator().manual_seed(1))
    C, labels = kmeans(X, k, generator=torch.Generator().manual_seed(1))
    C_ref, labels_ref = _plain_lloyd(X, seeds)
    assert torch.equal(labels, labels_ref)
    torch.testing.assert_close(C, C_ref, rtol=1e-5, atol=1e-5)
    # ... on a strided view (the centred columns of the fused design matrix) alike.
    wide = torch.cat([X, X * X], 1)
    C2, labels2 = kmeans(wide[:, :10], k, generator=torch.Generator().manual_seed(1))
    assert torch.equal(labels2, labels)


def test_float32_products_resume_like_an_uninterrupted_run(tmp_path):
    x = _data(n=600)
    cfg = FitConfig(epochs=4, batch_size=250, seed=0)
    ref = MixtureDensity(4, x.shape[1], "diag", dtype=torch.float64)
    fit(ref, x, "em", config=cfg, out_dir=tmp_path / "a", compute_dtype="float32")
    part = MixtureDensity(4, x.shape[1], "diag", dtype=torch.float64)
    fit(part, x, "em", config=cfg, out_dir=tmp_path / "b", compute_dtype="float32",
        stop_after_steps=4)
    again = deepmix.load(tmp_path / "b")
    fit(again, x, "em", config=cfg, out_dir=tmp_path / "b", resume=True)
    for k, v in ref.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_auto_keeps_float32_only_where_its_rounding_is_small(monkeypatch):
    from deepmix.training import gmm_em
    from deepmix.training.objectives import GaussianMixtureEM

    monkeypatch.setattr(gmm_em, "AUTO_FLOAT32_ENTRIES", 0)   # "large data" from the first row
    g = torch.Generator().manual_seed(0)
    benign = _data(n=800)
    # Components nearly constant (sd 1e-4) at very different values in every feature: the
    # float32 products cannot resolve their log-densities.
    centres = 100.0 * torch.randn(4, 12, generator=g, dtype=torch.float64)
    hard = centres[torch.arange(800) % 4] + 1e-4 * torch.randn(800, 12, generator=g,
                                                               dtype=torch.float64)
    chosen = {}
    for name, x in (("benign", benign), ("hard", hard)):
        objective = GaussianMixtureEM({})
        fit(MixtureDensity(4, 12, "diag", dtype=torch.float64), x, objective,
            config=FitConfig(epochs=2, seed=0))
        chosen[name] = objective._fused.z.dtype
    assert chosen == {"benign": torch.float32, "hard": torch.float64}


def test_design_matrix_holds_no_number_that_would_make_a_denormal_product():
    e = MixtureEM(2, "diag")
    x = torch.tensor([[1.0, 2.0], [1.0 + 1e-17, 2.0 + 1e-9], [3.0, 4.0]], dtype=torch.float64)
    f = e.fused_rows(x, torch.float32)
    e.fused_rows(x, shift=torch.tensor([1.0, 2.0], dtype=torch.float64), out=f)  # rebuilt
    small = f.z.abs()
    assert f.z.dtype == torch.float32
    assert bool(((small == 0) | (small >= torch.finfo(torch.float32).tiny ** 0.4)).all())
    assert float(f.z[1, 1]) == pytest.approx(1e-9, rel=1e-6) and float(f.z[1, 3]) == 0.0


def _overlapping(n: int = 3000, d: int = 6, seed: int = 0) -> np.ndarray:
    # Eight overlapping clusters fitted with fewer components: EM runs dozens of iterations
    # and k-means has several local optima, so agreement is not an accident of easy data.
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 2.0, (8, d))
    scales = rng.uniform(0.3, 1.5, (8, d))
    lab = rng.integers(8, size=n)
    return centres[lab] + rng.normal(size=(n, d)) * scales[lab]


@pytest.mark.parametrize("ct", ["diag", "spherical", "full"])
@pytest.mark.parametrize("seed", [0, 3])
def test_em_from_scikit_learns_kmeans_is_scikit_learns_fit(ct, seed):
    # The same start (scikit-learn's KMeans labels), then deepmix's EM: scikit-learn's fit of
    # the same random_state, iteration count and parameters (EM's arithmetic, M-step,
    # reg_covar and stopping rule, apart from the luck of the k-means partition).
    X = _overlapping(seed=seed)
    ours = GaussianMixture(5, covariance_type=ct, random_state=seed,
                           init_params="sklearn-kmeans").fit(X)
    sk = SkGMM(5, covariance_type=ct, random_state=seed).fit(X)
    assert ours.n_iter_ == sk.n_iter_ and ours.converged_ == sk.converged_
    assert ours.lower_bound_ == pytest.approx(sk.lower_bound_, rel=1e-9)
    np.testing.assert_allclose(ours.means_.numpy(), sk.means_, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(ours.covariances_.numpy(), sk.covariances_, rtol=1e-6, atol=1e-9)


def test_float32_products_from_scikit_learns_kmeans_reach_its_fit():
    # The default products on large data (float32, float64 sums): scikit-learn's optimum to
    # float32 rounding, still stopping where it stops.
    X = _overlapping(seed=1)
    ours = GaussianMixture(5, random_state=1, init_params="sklearn-kmeans",
                           compute_dtype=torch.float32).fit(X)
    sk = SkGMM(5, covariance_type="diag", random_state=1).fit(X)
    assert ours.n_iter_ == sk.n_iter_
    assert ours.score(X) == pytest.approx(sk.score(X), rel=1e-6)
    np.testing.assert_allclose(ours.means_.numpy(), sk.means_, rtol=1e-4, atol=1e-5)


def test_kmeans_init_is_as_good_as_scikit_learns():
    # deepmix's k-means (greedy k-means++ seeding, Lloyd to scikit-learn's tolerance) against
    # scikit-learn's KMeans(n_init=1) over seeds: the same mean inertia within 1 %.
    from sklearn.cluster import KMeans

    X = _overlapping(n=2000, d=8, seed=2)
    Xt = torch.from_numpy(X)
    ours, theirs = [], []
    for seed in range(8):
        C, labels = kmeans(Xt, 12, generator=torch.Generator().manual_seed(seed))
        ours.append(float(((Xt - C[labels]) ** 2).sum()))
        theirs.append(KMeans(12, n_init=1, random_state=seed).fit(X).inertia_)
    assert np.mean(ours) <= 1.01 * np.mean(theirs)


@pytest.mark.parametrize("ct", ["diag", "spherical"])
def test_design_matrix_built_in_small_chunks_equals_the_formula(ct, monkeypatch):
    from deepmix.training import gmm_em

    x = _data(n=1000)
    e = MixtureEM(4, ct)
    c = x.mean(0)
    xc = x - c
    want = torch.cat([xc, xc * xc if ct == "diag" else (xc * xc).sum(1, keepdim=True)], 1)
    tiny = torch.finfo(torch.float32).tiny ** 0.4
    want32 = want.float().masked_fill(want.float().abs() < tiny, 0.0)
    whole = e.fused_rows(x, torch.float32)
    monkeypatch.setattr(gmm_em, "_TEMP_BYTES", 37 * 8 * want.shape[1])  # 37-row chunks (X is float64)
    pieces = e.fused_rows(x, torch.float32)
    assert torch.equal(pieces.z, whole.z) and torch.equal(pieces.z, want32)
    torch.testing.assert_close(pieces.shift, c)
    # ... so a whole fit is bit for bit the same.
    fits = []
    for size in (8 << 20, 37 * 8 * want.shape[1]):
        monkeypatch.setattr(gmm_em, "_TEMP_BYTES", size)
        fits.append(GaussianMixture(4, covariance_type=ct, random_state=0,
                                    compute_dtype=torch.float32).fit(x))
    assert fits[0].history_ == fits[1].history_
    assert torch.equal(fits[0].means_, fits[1].means_)


@pytest.mark.parametrize("cdt", [torch.float32, torch.float64])
def test_em_log_likelihood_never_falls_on_the_fused_path(cdt):
    x = torch.from_numpy(_overlapping(seed=4))
    gm = GaussianMixture(6, random_state=0, tol=0.0, max_iter=40, compute_dtype=cdt)
    with pytest.warns(RuntimeWarning):
        gm.fit(x)
    h = np.asarray(gm.history_)
    # float32 products: per-sample rounding ~1e-7 relative; float64: exact to rounding.
    slack = 1e-6 if cdt == torch.float32 else 1e-10
    assert len(h) == 40 and bool((np.diff(h) >= -slack * np.abs(h[1:])).all())
