"""Tests of DCGMM inference: sharpening, class-conditional sampling (also with C(S, n)), variants,
known- and unknown-mask in-painting and the masked GMM scores behind them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deepmix.errors import InputError, SpecError
from deepmix.inference import (Sharpening, as_observed, flat_gmm_inpaint, inpaint,
                               inpaint_unknown, make_mask, mask_iou, missing_mse, sharpen,
                               variants)
from deepmix.inference.sharpening import sharpening_objective
from deepmix.layers import GMM
from deepmix import GaussianMixture
from deepmix.models import DCGMM
from deepmix.models.spec import format_spec, parse_spec
from deepmix.training.checkpoint import load_model


@pytest.fixture(scope="module")
def digit_model(digits):
    images, _ = digits
    model = DCGMM("F(4,2)-G(16)-F(3,1)-G(25)", input_shape=(8, 8, 1), seed=0)
    model.fit(images[::2], epochs=70, batch_size=20, progress=False)
    return model


@pytest.fixture(scope="module")
def pooled_model(digits):
    images, _ = digits
    model = DCGMM("F(3,1)-G(16)-P(2,2)-F(3,1)-G(16)", input_shape=(8, 8, 1), seed=0)
    model.fit(images[::2], epochs=15, batch_size=20, progress=False)
    return model


def _two_class_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: bright left half; class 1: bright right half (8x8, light noise)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=gen)
    x = 0.1 * torch.rand(n, 8, 8, 1, generator=gen)
    left = labels == 0
    x[left, :, :4] += 0.8
    x[~left, :, 4:] += 0.8
    return x.clamp(0, 1), labels


# ------------------------------------------------------------------------------- masked scores
@pytest.mark.parametrize("independent", [False, True])
def test_masked_scores_marginalise_exactly(independent):
    """All observed = the usual scores; a hidden dimension = the GMM over the other dimensions."""
    torch.manual_seed(0)
    g = GMM((2, 3, 4), 5, independent=independent)
    with torch.no_grad():
        g.mu.normal_()
        g.d.uniform_(0.5, 2.0)
        g.xi.normal_()
    x = torch.randn(3, 2, 3, 4)
    full = g.log_scores_observed(x, torch.ones_like(x))
    assert torch.allclose(full - (-0.5 * 4 * math.log(2 * math.pi)), g.log_scores(x), atol=1e-4)
    m = torch.ones_like(x)
    m[..., 1] = 0
    part = g.log_scores_observed(x, m, prior=False)
    keep = [0, 2, 3]
    mu, d = g.mu[..., keep], g.d[..., keep]
    xk = x[..., keep]
    P = mu.shape[0]
    xs = xk.reshape(3, -1, 1, 3) if P > 1 else xk.reshape(3, -1, 1, 3)
    ref = (torch.log(d) - 0.5 * math.log(2 * math.pi) - 0.5 * d * d * (xs - mu) ** 2).sum(-1)
    assert torch.allclose(part.reshape(3, -1, 5), ref, atol=1e-4)
    none = g.log_scores_observed(x, torch.zeros_like(x))
    assert torch.allclose(none, torch.log_softmax(g.xi, -1).expand(6, 5).reshape(1, 2, 3, 5)
                          .expand(3, 2, 3, 5) if independent else
                          torch.log_softmax(g.xi[0], -1).expand(3, 2, 3, 5), atol=1e-5)


def test_backwards_mean_mode_is_the_expected_centroid():
    torch.manual_seed(1)
    g = GMM((1, 2, 3), 4)
    with torch.no_grad():
        g.mu.normal_()
    t = torch.rand(5, 1, 2, 4)
    out = g.backwards(t, mode="mean", top_s=4)
    w = t.clamp_min(1e-6) / t.clamp_min(1e-6).sum(-1, keepdim=True)
    assert torch.allclose(out, w @ g.mu[0], atol=1e-6)
    top1 = g.backwards(t, mode="mean", top_s=1)
    assert torch.allclose(top1, g.mu[0][t.argmax(-1)], atol=1e-6)
    with pytest.raises(ValueError, match="mode"):
        g.backwards(t, mode="median")


# ---------------------------------------------------------------------------------- sharpening
@pytest.mark.parametrize("layer", [2, 3])
def test_sharpening_increases_the_target_loss(pooled_model, layer):
    """After Pooling (2) and Folding (3) backward steps the next GMM's loss goes up."""
    m = pooled_model
    gen = torch.Generator().manual_seed(0)
    x = m.layers[4].backwards(None, n=6, generator=gen)
    x = m.layers[3].backwards(x)
    if layer == 2:
        x = m.layers[2].backwards(x)
    with torch.no_grad():
        before = sharpening_objective(m, x, layer, 4)
        after = sharpening_objective(m, sharpen(m, x, layer, iterations=30, rate=0.1), layer, 4)
    assert (after >= before - 1e-4).all()
    assert float(after.mean()) > float(before.mean()) + 0.1
    if layer == 2:
        # The reconstruction weight holds the result closer to the start.
        loose = sharpen(m, x, layer, iterations=30, rate=0.1)
        tight = sharpen(m, x, layer, iterations=30, rate=0.1, w_rec=1000.0)
        assert (tight - x).pow(2).mean() < 0.5 * (loose - x).pow(2).mean()


def test_sharpening_with_a_huge_step_stays_a_valid_activity(digit_model):
    """A step far too large for the concave objective overshoots; the result stays in [0, 1]
    (pixels and responsibilities alike) instead of running off to inf/NaN."""
    from deepmix.inference import Sharpening

    x = digit_model.sample(16, seed=0, sharpen=Sharpening(iterations=50, rate=100.0))
    assert torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1
    x0 = torch.rand(4, 8, 8, 1, generator=torch.Generator().manual_seed(0))
    y = sharpen(digit_model, x0, 0, iterations=50, rate=100.0)
    assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1


def test_sharpened_sampling_runs_in_pixel_space_and_is_reproducible(pooled_model):
    a = pooled_model.sample(5, seed=3, sharpen={"iterations": 5})
    b = pooled_model.sample(5, seed=3, sharpen=Sharpening(iterations=5))
    plain = pooled_model.sample(5, seed=3)
    assert a.shape == (5, 8, 8, 1) and torch.equal(a, b)
    assert not torch.equal(a, plain)
    assert a.min() >= 0 and a.max() <= 1


def test_sharpening_rejects_bad_options(pooled_model):
    m = pooled_model
    with pytest.raises(InputError, match="Folding or Pooling"):
        sharpen(m, torch.zeros(1, 6, 6, 1), 1)
    with pytest.raises(InputError, match="x0 must be"):
        sharpen(m, torch.zeros(1, 5, 5, 1), 0)
    with pytest.raises(InputError, match="unknown sharpening option"):
        m.sample(2, sharpen={"steps": 3})
    with pytest.raises(InputError, match="rate"):
        Sharpening(rate=0)
    with pytest.raises(InputError, match="cannot sharpen layer"):
        m.sample(2, sharpen={"layers": [1]})


# ------------------------------------------------------------------------ conditional sampling
@pytest.mark.parametrize("spec, temperature", [("F(4,2)-G(8)-F(3,1)-G(8)-C(2)", 1.0),
                                               ("F(4,2)-G(8)-F(3,1)-G(8)-C(2,2)", 1.0),
                                               ("F(4,2)-G(8)-F(3,1)-G(8)-C(2,2)", 5.0)])
def test_conditional_sampling_draws_the_requested_class(spec, temperature):
    x, y = _two_class_images(600, seed=0)
    model = DCGMM(spec, input_shape=(8, 8, 1), seed=0, classifier_temperature=temperature)
    model.fit(x, y, epochs=15, batch_size=20, classifier_lr=0.5, progress=False)
    xt, yt = _two_class_images(200, seed=1)
    assert (model.predict(xt) == yt).float().mean() > 0.95
    for cls in (0, 1):
        s = model.sample(40, labels=cls, seed=cls)
        left, right = s[:, :, :4].mean(), s[:, :, 4:].mean()
        assert (left > right + 0.3) if cls == 0 else (right > left + 0.3), (cls, left, right)
        # The samples are classified as the class asked for.
        assert (model.predict(s) == cls).float().mean() > 0.9


def test_two_layer_classifier_spec_roundtrip_and_checkpoint(tmp_path):
    layers = parse_spec("F(4,2)-G(8)-F(3,1)-G(8)-C(3,2)")
    assert str(layers[-1]) == "C(3,2)" and format_spec(parse_spec("G(5)-C(3,1)")) == "G(5)-C(3)"
    model = DCGMM("F(4,2)-G(8)-F(3,1)-G(8)-C(3,2)", input_shape=(8, 8, 1))
    assert model.classifier_sources == [1]
    assert model.classifier.linear.in_features == 8 + 3 * 3 * 8
    with torch.no_grad():
        model.classifier.linear.weight.normal_()
    model.save(tmp_path / "run")
    back = load_model(tmp_path / "run")
    x = torch.rand(4, 8, 8, 1)
    assert torch.equal(back.forward(x), model.forward(x))
    with pytest.raises(SpecError, match="GMM layers below"):
        DCGMM("F(4,2)-G(8)-C(3,2)", input_shape=(8, 8, 1))


def test_conditional_sampling_rejects_bad_classes(digit_model):
    model = DCGMM("F(4,2)-G(8)-F(3,1)-G(8)-C(3)", input_shape=(8, 8, 1))
    with pytest.raises(InputError, match=r"0\.\.2"):
        model.sample(2, labels=3)
    with pytest.raises(InputError, match="integers"):
        model.sample(2, labels=[0.5, 1.0])
    with pytest.raises(InputError, match="3 labels for 2"):
        model.sample(2, labels=[0, 1, 2])
    with pytest.raises(InputError, match="no classifier"):
        digit_model.sample(2, labels=1)


# ------------------------------------------------------------------------------------ variants
def test_variants_stay_closer_to_their_templates_when_activities_are_kept(digit_model, digits):
    images, _ = digits
    t = images[1::2][:20]
    rep = t.repeat_interleave(3, dim=0)
    free = variants(digit_model, t, n_per_template=3, seed=0, top_s=3)
    kept = variants(digit_model, t, n_per_template=3, keep_above=0, seed=0, top_s=3)
    random = digit_model.sample(60, seed=0, top_s=3)
    assert free.shape == kept.shape == (60, 8, 8, 1)
    err = lambda a: float((a - rep).pow(2).mean())  # noqa: E731
    assert err(kept) < err(free) < err(random)
    with pytest.raises(InputError, match="keep_above"):
        variants(digit_model, t, keep_above=5)
    with pytest.raises(InputError, match="GMM layer 7 does not exist"):
        variants(digit_model, t, layer=7)


# ---------------------------------------------------------------------------------- in-painting
def test_known_mask_inpainting_keeps_observed_pixels_and_beats_the_mean(digit_model, digits):
    images, _ = digits
    train, test = images[::2], images[1::2][:200]
    for name in ("right-half", "center", "random"):
        obs = make_mask(name, (8, 8), seed=1)
        out = inpaint(digit_model, test, obs)
        keep = torch.as_tensor(obs)[None, :, :, None].expand_as(test)
        assert torch.equal(out[keep], test[keep]), name      # bit-exact
        mean_fill = torch.where(keep, test, train.mean(0, keepdim=True).expand_as(test))
        assert missing_mse(out, test, obs) < 0.9 * missing_mse(mean_fill, test, obs), name
    # Drawn completions also keep the observed part and stay in [0, 1].
    obs = make_mask("right-half", (8, 8))
    drawn = inpaint(digit_model, test[:10], obs, mode="sample", divisor=10.0, iterations=2)
    assert torch.equal(drawn[:, :, :4], test[:10, :, :4])
    assert drawn.min() >= 0 and drawn.max() <= 1


def test_inpainting_with_everything_observed_is_the_identity(digit_model, digits):
    images, _ = digits
    x = images[:5]
    assert torch.equal(inpaint(digit_model, x, np.ones((8, 8), bool)), x)


def test_flat_gmm_conditional_mean_baseline(digits):
    images, _ = digits
    flat = images.reshape(len(images), -1).double()
    gm = GaussianMixture(10, covariance_type="diag", random_state=0, max_iter=30).fit(flat[::2])
    obs = make_mask("right-half", (8, 8))
    test = images[1::2][:100]
    out = flat_gmm_inpaint(gm, test, obs)
    assert torch.equal(out[:, :, :4], test[:, :, :4])
    mean_fill = torch.where(torch.as_tensor(obs)[None, :, :, None], test,
                            images[::2].mean(0, keepdim=True))
    assert missing_mse(out, test, obs) < missing_mse(mean_fill, test, obs)


def test_unknown_mask_inpainting_finds_an_injected_block(digit_model, digits):
    images, _ = digits
    test = images[1::2][:30].clone()
    corrupt = torch.zeros(30, 8, 8, dtype=torch.bool)
    corrupt[:, :4, :4] = True
    # A checkerboard corner: nothing like a digit's strokes.
    board = ((torch.arange(8)[:, None] + torch.arange(8)[None]) % 2).float()
    noisy = test.clone()
    noisy[..., 0][corrupt] = board.expand(30, 8, 8)[corrupt]
    # Outlier positions of the lowest GMM: patches whose log-likelihood is far below the clean
    # images' per-position statistics (mean - 2 std).
    ll_clean = digit_model.log_likelihood(images[::2], layer=0, per_position=True)
    thr = ll_clean.mean(0) - 2 * ll_clean.std(0)
    ll = digit_model.log_likelihood(noisy, layer=0, per_position=True)
    out_map = ll < thr
    for method in ("mask", "fuse"):
        done, detected = inpaint_unknown(digit_model, noisy, {0: out_map}, method=method)
        assert detected.shape == (30, 8, 8)
        assert mask_iou(detected, corrupt) > 0.45, method
        assert torch.equal(done[~detected], noisy[~detected])
        assert missing_mse(done, test, ~corrupt) < missing_mse(noisy, test, ~corrupt), method
    with pytest.raises(InputError, match="lowest GMM layer"):
        inpaint_unknown(digit_model, noisy, {1: torch.zeros(30, 1, 1, dtype=torch.bool)})
    with pytest.raises(InputError, match=r"must be \(N, H, W\)"):
        inpaint_unknown(digit_model, noisy, {0: torch.zeros(30, 2, 2, dtype=torch.bool)})


def test_masks_and_scores_reject_bad_input(digit_model, digits):
    images, _ = digits
    x = images[:4]
    with pytest.raises(InputError, match="does not fit"):
        inpaint(digit_model, x, np.ones((7, 8), bool))
    with pytest.raises(InputError, match="only 0 and 1"):
        inpaint(digit_model, x, np.full((8, 8), 0.5))
    with pytest.raises(InputError, match="unknown mask"):
        make_mask("diagonal", (8, 8))
    with pytest.raises(InputError, match="mode"):
        inpaint(digit_model, x, np.ones((8, 8), bool), mode="best")
    with pytest.raises(InputError, match="hides no pixel"):
        missing_mse(x, x, np.ones((8, 8), bool))
    with pytest.raises(InputError, match="shape"):
        mask_iou(np.zeros((2, 2), bool), np.zeros((3, 3), bool))
    assert as_observed(np.ones((4, 8, 8)), x).shape == (4, 8, 8, 1)
    assert mask_iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0


# ------------------------------------------------------------------------------ classification
def test_fit_classifier_on_frozen_features_learns_digits_and_leaves_gmms_alone(digits):
    from deepmix.inference.classification import accuracy, classifier_features, fit_classifier

    images, labels = digits
    model = DCGMM("F(4,2)-G(16)-F(3,1)-G(25)-C(10,2)", input_shape=(8, 8, 1), seed=0)
    model.fit(images[::2], epochs=10, batch_size=20, progress=False)   # unsupervised
    gmm_before = [p.clone() for p in model.gmm_layers[0].parameters()]
    feats = classifier_features(model, images[::2])
    assert feats.shape == (len(images[::2]), 25 + 3 * 3 * 16)
    history = fit_classifier(model, images[::2], labels[::2], epochs=40, lr=0.01, batch_size=32,
                             features=feats)
    assert history[-1]["loss"] < history[0]["loss"]
    assert accuracy(model, images[1::2], labels[1::2]) > 0.78
    assert all(torch.equal(a, b) for a, b in zip(gmm_before, model.gmm_layers[0].parameters()))
    with pytest.raises(InputError, match="labels must lie"):
        fit_classifier(model, images[:4], [0, 1, 2, 10], epochs=1)
    with pytest.raises(InputError, match="no classifier"):
        accuracy(DCGMM("F(4,2)-G(4)", input_shape=(8, 8, 1)), images[:4], labels[:4])


def test_review_fixes_sampling_inpainting_and_classifier_sources(digit_model, digits):
    images, _ = digits
    x = images[1::2][:8]
    obs = make_mask("right-half", (8, 8))
    # Drawn completions come from the posterior: different seeds, different completions.
    a = inpaint(digit_model, x, obs, mode="sample", seed=1)
    b = inpaint(digit_model, x, obs, mode="sample", seed=2)
    assert not torch.equal(a, b)
    # C(S, 2) over a Folding layer above the top GMM sees the second-highest GMM, not the top.
    m = DCGMM("F(4,2)-G(4)-F(3,1)-G(3)-F(1,1)-C(4,2)", input_shape=(8, 8, 1))
    assert m.classifier_sources == [1]
    # Labels are checked before batching.
    clf = DCGMM("F(4,2)-G(4)-F(3,1)-G(3)-C(4)", input_shape=(8, 8, 1))
    with pytest.raises(InputError, match="5 labels for 6"):
        clf.sample(6, labels=[0, 1, 2, 3, 0], batch_size=4)
    with pytest.raises(InputError, match="integers"):
        clf.sample(6, labels=["a"] * 6, batch_size=4)
    # An (N, H, W) hidden mask for corrupt(); a GMM of another size is a clear error.
    from deepmix.inference import corrupt

    hidden = ~torch.as_tensor(obs).expand(8, 8, 8)
    out = corrupt(x, hidden, "constant")
    assert torch.equal(out[:, :, 4:], torch.ones_like(out[:, :, 4:]))
    gm = GaussianMixture(2, covariance_type="diag", random_state=0, max_iter=200).fit(
        torch.rand(50, 10, dtype=torch.float64))
    with pytest.raises(InputError, match="pixel values"):
        flat_gmm_inpaint(gm, x, obs)
    with pytest.raises(InputError, match="outlier maps"):
        inpaint_unknown(digit_model, x, {"a": np.zeros((8, 3, 3), bool)})


def test_tempered_features_are_the_posterior_at_temperature_t(digits, tmp_path):
    """softmax(log r / T) equals softmax(s / T) of the GMM's own log-scores, sums to one per
    position, is the identity at T = 1, and the temperature survives a checkpoint."""
    from deepmix.inference.classification import classifier_features, set_temperature

    images, _ = digits
    model = DCGMM("F(4,2)-G(6)-F(3,1)-G(5)-C(10,2)", input_shape=(8, 8, 1), seed=0)
    model.fit(images[:200], epochs=2, batch_size=20, progress=False)
    x = images[:7]
    plain = classifier_features(model, x)
    set_temperature(model, 4.0)
    tempered = classifier_features(model, x)
    assert tempered.shape == plain.shape and not torch.allclose(tempered, plain)
    with torch.no_grad():
        outs = model.activations(x)
        s_top = model.layers[3].log_scores(model.layers[2](outs[1]))
        s_low = model.layers[1].log_scores(model.layers[0](model.check_images(x)))
    expect = torch.cat([torch.softmax(s_top / 4.0, -1).flatten(1),
                        torch.softmax(s_low / 4.0, -1).flatten(1)], 1)
    # Exact up to the responsibility floor (r < 1e-18 is stored as 0: (1e-18)^(1/4) ~ 3e-5).
    torch.testing.assert_close(tempered, expect, rtol=1e-4, atol=1e-4)
    assert torch.allclose(tempered[:, :5].sum(1), torch.ones(7))
    model.save(tmp_path / "run")
    back = load_model(tmp_path / "run")
    assert back.classifier.temperature == 4.0 == back.config.classifier_temperature
    assert torch.equal(classifier_features(back, x), tempered)
    set_temperature(model, 1)
    assert torch.equal(classifier_features(model, x), plain)
    for bad in (0, -1, float("nan"), "hot"):
        with pytest.raises(SpecError, match="temperature"):
            set_temperature(model, bad)
    with pytest.raises(SpecError, match="temperature"):
        DCGMM("F(4,2)-G(6)-C(3)", input_shape=(8, 8, 1), classifier_temperature=0.0)
    # Tempering needs responsibility vectors: not through a Folding layer above the top GMM.
    with pytest.raises(SpecError, match="directly on a GMM"):
        DCGMM("F(4,2)-G(6)-F(3,1)-C(3)", input_shape=(8, 8, 1), classifier_temperature=2.0)
    folded = DCGMM("F(4,2)-G(6)-F(3,1)-C(3)", input_shape=(8, 8, 1))
    with pytest.raises(SpecError, match="directly on a GMM"):
        set_temperature(folded, 2.0)
    # A new temperature invalidates fitted weights: they are reset.
    with torch.no_grad():
        model.classifier.linear.weight.fill_(1.0)
    set_temperature(model, 2.0)
    assert not model.classifier.linear.weight.any()


def test_choose_temperature_picks_by_held_out_accuracy(digits):
    from deepmix.inference.classification import accuracy, choose_temperature, fit_classifier

    images, labels = digits
    model = DCGMM("F(4,2)-G(16)-F(3,1)-G(25)-C(10,2)", input_shape=(8, 8, 1), seed=0)
    model.fit(images[::2], epochs=10, batch_size=20, progress=False)
    weights = model.classifier.linear.weight.clone()
    best, scores = choose_temperature(model, images[::2], labels[::2], grid=(1, 4),
                                      epochs=15, val_fraction=0.2)
    assert set(scores) == {1.0, 4.0} and all(0.0 <= v <= 1.0 for v in scores.values())
    assert scores[best] == max(scores.values())
    assert model.classifier.temperature == best == model.config.classifier_temperature
    # Only validation fits touch no weights; a changed T resets the classifier to zero.
    expect = weights if best == 1.0 else torch.zeros_like(weights)
    assert torch.equal(model.classifier.linear.weight, expect)
    fit_classifier(model, images[::2], labels[::2], epochs=40, lr=0.01, batch_size=32)
    assert accuracy(model, images[1::2], labels[1::2]) > 0.78
    with pytest.raises(InputError, match="val_fraction"):
        choose_temperature(model, images[:20], labels[:20], val_fraction=1.5)
    with pytest.raises(InputError, match="features were given"):
        fit_classifier(model, images[:4], labels[:4], features=torch.zeros(4, 169),
                       temperature=best + 1)
    # Features tempered batch by batch (the memory-light path) score exactly as the reference:
    # a linear model fitted on the whole tempered feature matrix, same split, seed and budget.
    from deepmix.inference.classification import _train_linear, classifier_features, set_temperature

    n = len(images[::2])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    val, rest = order[:round(0.2 * n)], order[round(0.2 * n):]
    y = torch.as_tensor(labels[::2]).long()
    for t in (1.0, 4.0):
        set_temperature(model, t)
        X = classifier_features(model, images[::2])
        lin = torch.nn.Linear(X.shape[1], 10)
        torch.nn.init.zeros_(lin.weight), torch.nn.init.zeros_(lin.bias)
        _train_linear(lin, X, y, epochs=15, lr=1e-3, batch_size=256, weight_decay=0.0, seed=0,
                      rows=rest)
        with torch.no_grad():
            assert int((lin(X[val]).argmax(1) == y[val]).sum()) / len(val) == scores[t]
