"""Evaluation summary and the files sampling writes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import deepmix
from deepmix.data import load_images
from deepmix.experiments.sampling import sample_to_files
from deepmix.inference import evaluate, layer_sees_pixels
from deepmix.plots import image_grid


@pytest.fixture(scope="module")
def trained():
    ds = load_images("digits", "train")
    model = deepmix.DCGMM("F(2,2,2,2)-G(16)-F(4,4,1,1)-G(9)", input_shape=ds.shape, seed=1)
    model.fit(ds.to_tensor(), epochs=2, batch_size=50, progress=False)
    return model, load_images("digits", "test")


def test_evaluate_matches_the_model_api(trained):
    model, test = trained
    x = test.to_tensor()
    summary, per = evaluate(model, x, batch_size=97, levels=test.levels, per_position=True)
    assert summary["n"] == len(test)
    for L in range(2):
        ll = model.log_likelihood(x, layer=L)
        assert torch.allclose(per[f"layer{L}/log_likelihood"], ll, atol=1e-4)
        assert summary["layers"][L]["log_likelihood"] == pytest.approx(float(ll.mean()), rel=1e-5)
        an = model.annealed_loss(x, layer=L)
        assert summary["layers"][L]["annealed_loss"] == pytest.approx(float(an.mean()), rel=1e-5)
    # Tiling 2x2 patches: the first layer's position sum is the exact image log-density.
    assert summary["log_prob"] == pytest.approx(float(model.log_prob(x).mean()), rel=1e-5)
    row = summary["layers"][0]
    expected_bpd = -row["log_likelihood"] / (row["dims"] * math.log(2)) + math.log2(17)
    assert row["bits_per_dim"] == pytest.approx(expected_bpd)
    assert layer_sees_pixels(model, 0) and not layer_sees_pixels(model, 1)
    assert per["layer0/log_likelihood_per_position"].shape == (len(test), 4, 4)


def test_sample_to_files_writes_png_and_npz(trained, tmp_path):
    model, _ = trained
    png, npz = sample_to_files(model, 6, tmp_path / "a.png", top_s=2, seed=5)
    data = np.load(npz)
    assert data["samples"].shape == (6, 8, 8, 1) and int(data["top_s"]) == 2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 0.0 <= data["samples"].min() and data["samples"].max() <= 1.0


def test_image_grid_places_images():
    imgs = np.zeros((3, 2, 2, 1), dtype=np.float32)
    imgs[1] = 1.0
    g = image_grid(imgs, ncol=3, pad=1)
    assert g.shape == (4, 10, 1)
    assert np.all(g[1:3, 4:6] == 1.0) and np.all(g[1:3, 1:3] == 0.0)


def test_sampling_in_batches_is_reproducible(trained):
    model, _ = trained
    a = model.sample(10, seed=4, batch_size=3, top_s=2)
    b = model.sample(10, seed=4, batch_size=3, top_s=2)
    assert a.shape == (10, 8, 8, 1) and torch.equal(a, b)
    assert not torch.equal(a[:3], a[3:6])


def test_trained_2d_gmm_density_integrates_to_one():
    from deepmix.data import make_toy

    pts = torch.from_numpy(make_toy("halfmoons", 2000, seed=0)).view(-1, 1, 1, 2)
    model = deepmix.DCGMM("G(9)", input_shape=(1, 1, 2), seed=0)
    model.fit(pts, epochs=30, batch_size=50, lr=0.05, progress=False)
    assert float(model.gmm_layers[0].sigma) < 1.0          # the annealing went somewhere
    h = 0.01
    g = torch.arange(-6.0, 7.0, h)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    grid = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1).view(-1, 1, 1, 2)
    density = model.log_prob(grid).double().exp()
    assert float(density.sum() * h * h) == pytest.approx(1.0, abs=1e-2)
    # ... and it is a density of the data: higher on the moons than far away.
    assert float(model.log_prob(pts).mean()) > float(model.log_prob(grid[:1000]).mean())
