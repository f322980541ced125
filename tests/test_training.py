"""Tests of training: the annealing matrix, the sigma controller and the training loop (fitting,
delays, resume, the classifier, input checks)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from deepmix import DCGMM, TrainConfig
from deepmix.errors import CheckpointError, ConfigError, InputError
from deepmix.training import train
from deepmix.training.annealing import (SigmaController, annealing_matrix, grid_shape,
                                        initial_sigma, toroidal_distances)


# ---------------------------------------------------------------------------------- annealing
@pytest.mark.parametrize("K", [1, 4, 6, 7, 9, 16, 25])
@pytest.mark.parametrize("sigma", [0.05, 0.5, 1.0, 3.0])
def test_annealing_matrix_row_stochastic_and_symmetric(K, sigma):
    g = annealing_matrix(K, sigma, dtype=torch.float64)
    assert g.shape == (K, K)
    assert (g >= 0).all()
    torch.testing.assert_close(g.sum(1), torch.ones(K, dtype=torch.float64))
    torch.testing.assert_close(g, g.T)                     # torus/ring: every row alike
    assert torch.all(g.diagonal() >= g.max(dim=1).values)  # own component weighs most


def _explicit_g(K: int, sigma: float, rows: int, cols: int) -> torch.Tensor:
    g = torch.empty(K, K, dtype=torch.float64)
    for k in range(K):
        for j in range(K):
            dy = abs(k // cols - j // cols)
            dx = abs(k % cols - j % cols)
            dy, dx = min(dy, rows - dy), min(dx, cols - dx)
            g[k, j] = math.exp(-(dy * dy + dx * dx) / (2 * sigma * sigma))
    return g / g.sum(1, keepdim=True)


@pytest.mark.parametrize("K, grid", [(9, (3, 3)), (16, (4, 4)), (6, (1, 6)), (10, (1, 10)),
                                     (4, (2, 2))])
def test_annealing_matrix_is_gaussian_of_toroidal_grid_distance(K, grid):
    assert grid_shape(K) == grid
    sigma = 0.9
    torch.testing.assert_close(annealing_matrix(K, sigma, dtype=torch.float64),
                               _explicit_g(K, sigma, *grid))


def test_annealing_wraps_around():
    g = annealing_matrix(16, 1.0, dtype=torch.float64)    # 4x4 torus, component 0 at (0, 0)
    assert g[0, 1] == pytest.approx(float(g[0, 3]))       # right and (wrapped) left
    assert g[0, 4] == pytest.approx(float(g[0, 12]))      # down and (wrapped) up
    assert g[0, 1] > g[0, 5] > g[0, 2] > g[0, 10]
    d2 = toroidal_distances(6)                             # ring of 6
    assert d2[0].tolist() == [0, 1, 4, 9, 4, 1]


@pytest.mark.parametrize("K", [25, 49, 121])
def test_annealing_matrix_never_holds_denormal_floats(K):
    """Denormal weights make every product with g many times slower on a CPU: as sigma shrinks,
    off-diagonal weights must jump from >= 1e-30 straight to 0."""
    tiny = torch.finfo(torch.float32).tiny
    for sigma in torch.logspace(-2, 0.7, 60).tolist():
        g = annealing_matrix(K, sigma)
        assert not ((g > 0) & (g < tiny)).any(), sigma
        assert torch.allclose(g.sum(1), torch.ones(K)), sigma


def test_annealing_matrix_tends_to_identity():
    eye = torch.eye(9, dtype=torch.float64)
    prev = None
    for sigma in [2.0, 1.0, 0.5, 0.25, 0.1]:
        off = float((annealing_matrix(9, sigma, dtype=torch.float64) - eye).abs().max())
        assert prev is None or off < prev
        prev = off
    assert torch.equal(annealing_matrix(9, 1e-3, dtype=torch.float64), eye)
    assert torch.equal(annealing_matrix(9, 0.0, dtype=torch.float64), eye)


def test_initial_sigma_is_reference():
    for K in (4, 25, 49, 100):
        assert initial_sigma(K) == pytest.approx(math.sqrt(2 * K) / 4)


# --------------------------------------------------------------------------- sigma controller
def test_sigma_controller_defaults_are_reference():
    c = SigmaController(1.0)
    assert (c.sigma_min, c.decay, c.window, c.low, c.high) == (0.01, 0.9, 100, -0.1, 0.05)
    cfg = TrainConfig()
    assert (cfg.sigma_min, cfg.sigma_decay, cfg.window, cfg.ratio_low, cfg.ratio_high) == \
        (0.01, 0.9, 100, -0.1, 0.05)
    assert (cfg.batch_size, cfg.lr, cfg.lr_mu, cfg.lr_d, cfg.lr_xi) == (100, 0.01, 1.0, 0.1, 0.2)


def test_sigma_controller_decays_only_inside_the_ratio_band():
    # Bounds and losses are exact binary fractions, so every ratio below is computed exactly.
    c = SigmaController(1.0, sigma_min=0.01, decay=0.5, window=4, low=-0.5, high=0.25)
    assert c.update_window(-64.0 * 4, 4) is False         # first window: baseline l0 = -64
    assert c.sigma == 1.0 and c.l0 == -64.0
    assert c.update_window(-32.0 * 4, 4) is False         # denominator prev - l0 = 0
    steps = [  # (mean, ratio = (mean - prev) / (prev - l0), decays?)
        (-24.0, 0.25, False),      # == high: the band is open
        (-19.0, 0.125, True),      # inside
        (-41.5, -0.5, False),      # == low
        (-47.125, -0.25, True),    # inside (slightly worse)
        (0.0, 47.125 / 16.875, False),  # still improving fast
    ]
    sigma = 1.0
    for mean, ratio, decays in steps:
        assert (mean - c.prev) / (c.prev - c.l0) == ratio
        assert c.update_window(mean * 4, 4) is decays
        sigma *= 0.5 if decays else 1.0
        assert c.sigma == sigma
        assert c.prev == mean


def test_sigma_controller_never_below_sigma_min():
    c = SigmaController(0.0105, sigma_min=0.01, decay=0.9)
    c.update_window(-10.0, 1)
    c.update_window(-5.0, 1)
    assert c.update_window(-5.0, 1) is True               # ratio 0: decays, clamped
    assert c.sigma == 0.01
    assert c.update_window(-5.0, 1) is False              # already at the floor
    assert c.sigma == 0.01
    restored = SigmaController.from_state(json.loads(json.dumps(c.state_dict())))
    assert restored == c


# ------------------------------------------------------------------------------- fitting data
CENTRES_2D = [[0.2, 0.2], [0.2, 0.8], [0.8, 0.2], [0.8, 0.8]]
CENTRES_3D = [[0.2, 0.2, 0.5], [0.2, 0.8, 0.5], [0.8, 0.2, 0.1], [0.8, 0.8, 0.9]]


@pytest.mark.parametrize("centres, seed", [(CENTRES_2D, 0), (CENTRES_3D, 1)])
def test_fit_finds_the_centroids_of_a_separated_mixture(make_blobs, centres, seed):
    x, _ = make_blobs(centres, 1000, 0.03, seed)
    D = len(centres[0])
    model = DCGMM("G(4)", (1, 1, D), seed=seed)
    history = model.fit(x, epochs=30, batch_size=50, lr=0.02, window=20, progress=False,
                        seed=seed)
    g = model.gmm_layers[0]
    mu = g.mu.detach()[0]
    true = torch.tensor(centres)
    dist = torch.cdist(true, mu)
    assert dist.min(dim=1).values.max() < 0.02               # every centre is found ...
    assert sorted(dist.argmin(dim=1).tolist()) == [0, 1, 2, 3]  # ... by its own component
    torch.testing.assert_close(g.pi.detach()[0], torch.full((4,), 0.25), atol=0.05, rtol=0)
    # The blobs' precision (1/0.03)^2 exceeds the clamp: d must stay inside [d_min, d_max].
    assert (g.d <= g.d_max).all() and (g.d >= g.d_min).all()
    assert history[-1]["step"] == 600
    assert history[-1]["loss"][0] > history[0]["loss"][0]
    assert history[-1]["sigma"][0] < initial_sigma(4)


def test_fit_sigma_schedule_respects_sigma0_and_sigma_min(make_blobs):
    x, _ = make_blobs(CENTRES_2D, 400, 0.03, 2)
    model = DCGMM("G(4)", (1, 1, 2))
    history = model.fit(x, epochs=25, batch_size=20, lr=0.02, window=5, sigma0=0.6,
                        sigma_min=0.4, progress=False)
    sigmas = [row["sigma"][0] for row in history]
    assert sigmas[0] == pytest.approx(0.6)
    assert min(sigmas) >= 0.4
    assert sigmas[-1] == pytest.approx(0.4)                  # the schedule reached the floor
    assert float(model.gmm_layers[0].sigma) == pytest.approx(0.4)


def test_centroids_first_freezes_d(make_blobs):
    x, _ = make_blobs(CENTRES_2D, 200, 0.1, 3)
    model = DCGMM("G(4)", (1, 1, 2), d_init=2.0)
    d0 = model.gmm_layers[0].d.detach().clone()
    mu0 = model.gmm_layers[0].mu.detach().clone()
    model.fit(x, epochs=2, batch_size=20, centroids_first=0.0, progress=False)
    assert torch.equal(model.gmm_layers[0].d.detach(), d0)
    assert not torch.equal(model.gmm_layers[0].mu.detach(), mu0)
    model.fit(x, epochs=2, batch_size=20, centroids_first=10.0, progress=False)
    assert not torch.equal(model.gmm_layers[0].d.detach(), d0)


def test_lr_xi_zero_keeps_uniform_weights(make_blobs):
    """lr_xi = 0 (the reference's lambda_pi = 0 of F and G) trains means and variances only."""
    x, _ = make_blobs(CENTRES_2D, 200, 0.1, 3)
    model = DCGMM("G(4)", (1, 1, 2), d_init=2.0)
    xi0 = model.gmm_layers[0].xi.detach().clone()
    mu0 = model.gmm_layers[0].mu.detach().clone()
    model.fit(x, epochs=2, batch_size=20, lr_xi=0.0, progress=False)
    assert torch.equal(model.gmm_layers[0].xi.detach(), xi0)
    pi = model.gmm_layers[0].pi
    assert torch.allclose(pi, torch.full_like(pi, 0.25))
    assert not torch.equal(model.gmm_layers[0].mu.detach(), mu0)
    model.fit(x, epochs=2, batch_size=20, progress=False)
    assert not torch.equal(model.gmm_layers[0].xi.detach(), xi0)


def test_two_layer_model_on_digits_improves_log_likelihood(digits):
    images = digits[0][:600]
    model = DCGMM("F(4,4,2,2)-G(16)-F(3,3,1,1)-G(9)", (8, 8, 1), seed=0)
    before = [float(model.log_likelihood(images, layer=L).mean()) for L in (0, 1)]
    history = model.fit(images, epochs=6, batch_size=50, window=6, progress=False)
    after = [float(model.log_likelihood(images, layer=L).mean()) for L in (0, 1)]
    assert after[0] > before[0] + 10.0
    assert math.isfinite(after[1]) and after[1] != before[1]
    assert history[-1]["step"] == 72
    assert all(v is not None for v in history[-1]["loss"])
    for g in model.gmm_layers:
        assert torch.isfinite(g.mu).all() and torch.isfinite(g.d).all()


def test_all_layers_train_on_detached_input_with_no_autograd(digits):
    images = digits[0][:100]
    model = DCGMM("F(4,4,2,2)-G(4)-F(3,3,1,1)-G(4)", (8, 8, 1))
    model.fit(images, epochs=1, batch_size=50, delay=0.0, progress=False)
    assert all(p.grad is None for p in model.parameters())


# -------------------------------------------------------------------------------------- delay
def test_delay_holds_back_higher_gmm_layers(digits):
    images = digits[0][:200]
    spec, kw = "F(4,4,2,2)-G(9)-F(3,3,1,1)-G(4)", dict(epochs=2, batch_size=20, progress=False)
    init = DCGMM(spec, (8, 8, 1), seed=4).state_dict()
    # 20 steps, delay 0.5: GMM layer 1 starts at step 10.
    half = DCGMM(spec, (8, 8, 1), seed=4)
    half.fit(images, delay=0.5, stop_after_steps=10, **kw)
    for name in ("layers.3.mu", "layers.3.d", "layers.3.xi", "layers.3.sigma"):
        assert torch.equal(half.state_dict()[name], init[name]), name
    assert not torch.equal(half.state_dict()["layers.1.mu"], init["layers.1.mu"])
    # Layer 0 does not care about the delay of layer 1.
    nodelay = DCGMM(spec, (8, 8, 1), seed=4)
    nodelay.fit(images, delay=0.0, stop_after_steps=10, **kw)
    assert torch.equal(nodelay.state_dict()["layers.1.mu"], half.state_dict()["layers.1.mu"])
    assert not torch.equal(nodelay.state_dict()["layers.3.mu"], init["layers.3.mu"])
    # One step later layer 1 has moved.
    more = DCGMM(spec, (8, 8, 1), seed=4)
    more.fit(images, delay=0.5, stop_after_steps=11, **kw)
    assert not torch.equal(more.state_dict()["layers.3.mu"], init["layers.3.mu"])


def test_default_delay_is_one_tenth_per_layer(digits):
    images = digits[0][:200]
    spec = "F(4,4,2,2)-G(9)-F(3,3,1,1)-G(4)"
    init = DCGMM(spec, (8, 8, 1), seed=4).state_dict()
    assert TrainConfig().delay == 0.1
    # 4 epochs x 10 steps = 40 steps: layer 1 starts at step 4.
    m = DCGMM(spec, (8, 8, 1), seed=4)
    m.fit(images, epochs=4, batch_size=20, stop_after_steps=4, progress=False)
    assert torch.equal(m.state_dict()["layers.3.mu"], init["layers.3.mu"])
    m = DCGMM(spec, (8, 8, 1), seed=4)
    m.fit(images, epochs=4, batch_size=20, stop_after_steps=5, progress=False)
    assert not torch.equal(m.state_dict()["layers.3.mu"], init["layers.3.mu"])


# ------------------------------------------------------------------------------------- resume
def _metrics(path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("samples_per_s")
        row.pop("seconds")
    return {row["step"]: row for row in rows}


def _interrupted_and_uninterrupted(tmp_path, images, labels, spec, stop, **kw):
    full = DCGMM(spec, (8, 8, 1), seed=1)
    h_full = full.fit(images, labels, out_dir=tmp_path / "A", **kw)
    part = DCGMM(spec, (8, 8, 1), seed=1)
    part.fit(images, labels, out_dir=tmp_path / "B", stop_after_steps=stop, **kw)
    resumed = DCGMM(spec, (8, 8, 1), seed=1)
    h_res = resumed.fit(images, labels, out_dir=tmp_path / "B", resume=True, **kw)
    return full, resumed, h_full, h_res


def test_resume_equals_uninterrupted_run(tmp_path, digits):
    images = digits[0][:300]
    # 300 images, batch 32: 10 steps per epoch (the last one short), 30 steps; stop mid-epoch
    # and mid-window at step 14; layer 1 starts at step 9 (window-aligned).
    kw = dict(epochs=3, batch_size=32, window=3, delay=0.3, dequantize=True, progress=False)
    full, resumed, h_full, h_res = _interrupted_and_uninterrupted(
        tmp_path, images, None, "F(4,4,2,2)-G(9)-F(3,3,1,1)-G(4)", 14, **kw)
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ma, mb = _metrics(tmp_path / "A"), _metrics(tmp_path / "B")
    assert max(ma) == max(mb) == 30
    for step, row in ma.items():
        assert mb[step] == row, step
    assert [r["step"] for r in h_res if r["step"] in ma] == [r["step"] for r in h_full]
    # Both run folders load to the same model.
    import deepmix

    x = images[:10]
    assert torch.equal(deepmix.load(tmp_path / "A").log_likelihood(x, 1),
                       deepmix.load(tmp_path / "B").log_likelihood(x, 1))


def test_resume_metrics_classifier_loss(tmp_path, digits):
    images, labels = digits[0][:300], digits[1][:300]
    kw = dict(epochs=3, batch_size=32, window=3, delay=0.3, classifier_lr=0.3, progress=False)
    full, resumed, _, _ = _interrupted_and_uninterrupted(
        tmp_path, images, labels, "F(4,4,2,2)-G(9)-F(3,3,1,1)-G(4)-C(10)", 14, **kw)
    for k, v in full.state_dict().items():            # the weights do agree
        assert torch.equal(v, resumed.state_dict()[k]), k
    ma, mb = _metrics(tmp_path / "A"), _metrics(tmp_path / "B")
    for step, row in ma.items():
        assert mb[step]["classifier_loss"] == row["classifier_loss"], step


def test_resume_metrics_loss_of_delayed_layer(tmp_path, digits):
    images = digits[0][:300]
    # Layer 1 starts at int(0.34 * 30) = 10: its windows end at 13, 16, ...; rows at 12, 15, ...
    kw = dict(epochs=3, batch_size=32, window=3, delay=0.34, progress=False)
    full, resumed, _, _ = _interrupted_and_uninterrupted(
        tmp_path, images, None, "F(4,4,2,2)-G(9)-F(3,3,1,1)-G(4)", 14, **kw)
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    ma, mb = _metrics(tmp_path / "A"), _metrics(tmp_path / "B")
    for step, row in ma.items():
        assert mb[step]["loss"] == row["loss"], step


def test_resume_and_out_dir_checks(tmp_path, digits):
    images = digits[0][:40]
    model = DCGMM("F(4,4,4,4)-G(4)", (8, 8, 1))
    with pytest.raises(ConfigError, match="out_dir"):
        model.fit(images, resume=True, progress=False)
    with pytest.raises(CheckpointError):
        model.fit(images, resume=True, out_dir=tmp_path / "nothing", progress=False)
    model.fit(images, epochs=1, batch_size=20, out_dir=tmp_path / "run", progress=False)
    with pytest.raises(CheckpointError, match="already holds a run"):
        DCGMM("F(4,4,4,4)-G(4)", (8, 8, 1)).fit(images, out_dir=tmp_path / "run",
                                                 progress=False)
    with pytest.raises(InputError, match="same data"):
        DCGMM("F(4,4,4,4)-G(4)", (8, 8, 1)).fit(images[:30], out_dir=tmp_path / "run",
                                                 resume=True, progress=False)
    # Resume with more epochs continues the saved run.
    hist = DCGMM("F(4,4,4,4)-G(4)", (8, 8, 1)).fit(images, out_dir=tmp_path / "run",
                                                    resume=True, epochs=2, progress=False)
    assert hist[-1]["step"] == 4


# --------------------------------------------------------------------------------- classifier
def test_classifier_learns_digits_and_leaves_gmms_alone(digits):
    images, labels = digits
    test = torch.arange(len(images)) % 5 == 0
    spec = "F(2,2,2,2)-G(16)-C(10)"
    kw = dict(epochs=10, batch_size=100, window=10, classifier_lr=0.5, progress=False)
    with_labels = DCGMM(spec, (8, 8, 1), seed=0)
    history = with_labels.fit(images[~test], labels[~test], **kw)
    acc = float((with_labels.predict(images[test]) == labels[test]).float().mean())
    assert acc > 0.5                                          # chance is 0.1
    assert history[-1]["classifier_loss"] < history[0]["classifier_loss"]
    # The classifier sends nothing down: the GMM trains exactly as without labels.
    without = DCGMM(spec, (8, 8, 1), seed=0)
    without.fit(images[~test], **kw)
    for name in ("layers.1.mu", "layers.1.d", "layers.1.xi", "layers.1.sigma"):
        assert torch.equal(with_labels.state_dict()[name], without.state_dict()[name]), name
    assert all(p.grad is None for p in with_labels.gmm_layers[0].parameters())
    assert torch.all(without.classifier.linear.weight == 0)   # untrained without labels


def test_predict_needs_a_classifier():
    with pytest.raises(InputError, match="classifier"):
        DCGMM("F(4,4,4,4)-G(4)", (8, 8, 1)).predict(torch.rand(2, 8, 8, 1))


# ------------------------------------------------------------------------------- input checks
@pytest.mark.parametrize("make_x, message", [
    (lambda x: x[:, :, :7], "shape"),
    (lambda x: x.reshape(-1, 64), "shape"),
    (lambda x: x.expand(-1, -1, -1, 3), "shape"),
    (lambda x: torch.where(torch.arange(64).view(1, 8, 8, 1) == 5, float("nan"), x), "NaN"),
    (lambda x: x.clone().index_fill_(1, torch.tensor([2]), float("inf")), "infinite"),
    (lambda x: (x * 16).to(torch.uint8), "dtype"),
    (lambda x: (x * 16).long(), "dtype"),
    (lambda x: x.numpy().tolist(), "tensor or numpy"),
    (lambda x: x[:0], "no training images"),
])
def test_fit_rejects_bad_images(digits, make_x, message):
    model = DCGMM("F(4,4,4,4)-G(4)-C(10)", (8, 8, 1))
    with pytest.raises(InputError, match=message):
        model.fit(make_x(digits[0][:20]), progress=False)


@pytest.mark.parametrize("make_y, message", [
    (lambda y: y + 10, r"0\.\.9"),
    (lambda y: y - 1 - y.max(), r"0\.\.9"),
    (lambda y: y[:10], "10 labels for 20 images"),
])
def test_fit_rejects_bad_labels(digits, make_y, message):
    model = DCGMM("F(4,4,4,4)-G(4)-C(10)", (8, 8, 1))
    with pytest.raises(InputError, match=message):
        model.fit(digits[0][:20], make_y(digits[1][:20]), progress=False)


def test_fit_accepts_nchw_nhw_and_numpy_equally(digits):
    x = digits[0][:40]
    variants = [x, x.permute(0, 3, 1, 2), x[..., 0], x.numpy(), x.double()]
    states = []
    for v in variants:
        m = DCGMM("F(4,4,4,4)-G(4)", (8, 8, 1))
        m.fit(v, epochs=1, batch_size=20, progress=False)
        states.append(m.state_dict())
    for s in states[1:]:
        for k in s:
            assert torch.equal(s[k], states[0][k]), k


def test_model_methods_check_inputs():
    model = DCGMM("F(4,4,4,4)-G(4)", (8, 8, 1))
    with pytest.raises(InputError, match="shape"):
        model.log_likelihood(torch.rand(2, 7, 8, 1))
    with pytest.raises(InputError, match="NaN"):
        model.annealed_loss(torch.full((2, 8, 8, 1), float("nan")))


def test_bad_training_options_raise_config_error(digits):
    model = DCGMM("F(4,4,4,4)-G(4)", (8, 8, 1))
    with pytest.raises(ConfigError, match="bogus"):
        model.fit(digits[0][:20], bogus=1, progress=False)
    for bad in (dict(epochs=0), dict(lr=0.0), dict(batch_size=0), dict(sigma_decay=1.0),
                dict(delay=-0.1), dict(window=0), dict(lr=float("nan")), dict(lr_xi=-0.1),
                dict(lr_d=float("inf")), dict(lr_mu=float("nan")), dict(classifier_lr=0.0),
                dict(sigma_min=0.0), dict(sigma0=-1.0)):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            model.fit(digits[0][:20], progress=False, **bad)


def test_train_function_with_config_object(digits):
    cfg = TrainConfig(epochs=1, batch_size=20, lr=0.05)
    a = DCGMM("F(4,4,4,4)-G(4)", (8, 8, 1))
    train(a, digits[0][:40], config=cfg, progress=False)
    b = DCGMM("F(4,4,4,4)-G(4)", (8, 8, 1))
    b.fit(digits[0][:40], epochs=1, batch_size=20, lr=0.05, progress=False)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])


def test_too_short_training_warns_that_sigma_cannot_anneal(digits):
    x = digits[0][:200]
    model = DCGMM("F(4,4,2,2)-G(4)-F(3,3,1,1)-G(4)", input_shape=(8, 8, 1), seed=0)
    with pytest.warns(UserWarning, match="never anneal") as caught:
        model.fit(x, epochs=5, batch_size=100, progress=False)  # 10 steps, window 100
    assert len([w for w in caught if "never anneal" in str(w.message)]) == 1
    msg = str(caught[0].message)
    assert "GMM layer(s) 0, 1" in msg and "runs 10 steps" in msg and "window is 100" in msg
    assert "at least 167 epochs" in msg  # layer 1: 90 % of 2 steps per epoch and "smaller batch size" in msg
    # Long enough for both layers (layer 1 starts after 10 % of the steps): no warning.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        history = DCGMM("F(4,4,2,2)-G(4)-F(3,3,1,1)-G(4)", input_shape=(8, 8, 1), seed=0).fit(
            x, epochs=2, batch_size=50, window=2, progress=False)  # 8 steps, 3 windows = 6
    assert history[-1]["step"] == 8
    # Only the delayed top layer too short: it alone is named.
    with pytest.warns(UserWarning, match=r"GMM layer\(s\) 1: .*; 3 for those layers"):
        DCGMM("F(4,4,2,2)-G(4)-F(3,3,1,1)-G(4)", input_shape=(8, 8, 1), seed=0).fit(
            x, epochs=3, batch_size=100, window=2, delay=0.5, progress=False)
