"""The CUDA path: every public capability runs on a GPU unchanged and agrees with the CPU.

Skipped where no CUDA device is present (CI has none). ``DEEPMIX_TEST_DEVICE=cpu`` runs the same
checks with the CPU as the "device", which keeps this module's own logic tested everywhere:

    DEEPMIX_TEST_DEVICE=cpu .venv/bin/python -m pytest tests/test_cuda.py
    PYTHONPATH=src python3 -m pytest tests/test_cuda.py          # on a GPU machine
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

DEVICE = os.environ.get("DEEPMIX_TEST_DEVICE", "cuda")

pytestmark = pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(),
                                reason="no CUDA device (set DEEPMIX_TEST_DEVICE=cpu to run here)")

SPEC = "F(4,2)-G(16)-F(3,1)-G(25)-C(10,2)"


def _on_device(t: torch.Tensor) -> bool:
    return t.device.type == torch.device(DEVICE).type


@pytest.fixture(scope="module")
def cpu_model(digits):
    from deepmix.models import DCGMM

    images, labels = digits
    model = DCGMM(SPEC, input_shape=(8, 8, 1), seed=0)
    model.fit(images[::2], labels[::2], epochs=8, batch_size=20, progress=False)
    return model


@pytest.fixture(scope="module")
def dev_model(cpu_model):
    import copy

    return copy.deepcopy(cpu_model).to(DEVICE)


def test_training_on_the_device_gives_the_cpu_run(digits):
    """Same seed, same data order: a device run ends near the CPU run (float32 rounding only;
    the trainer draws its data order on the CPU for this reason)."""
    from deepmix.models import DCGMM

    images, labels = digits
    runs = {}
    for dev in ("cpu", DEVICE):
        model = DCGMM(SPEC, input_shape=(8, 8, 1), seed=3)
        hist = model.fit(images[:400], labels[:400], epochs=3, batch_size=20, device=dev,
                         progress=False)
        assert all(p.device.type == torch.device(dev).type for p in model.parameters())
        runs[dev] = (model.cpu(), hist)
    (a, ha), (b, hb) = runs["cpu"], runs[DEVICE]
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.isfinite(q).all(), name
        assert torch.allclose(p, q, atol=5e-3, rtol=1e-3), name
    assert ha[-1].keys() == hb[-1].keys()


def test_scores_agree_with_the_cpu(cpu_model, dev_model, digits):
    x = digits[0][1::2][:300]
    xd = x.to(DEVICE)
    for layer in range(2):
        for fn in ("log_likelihood", "annealed_loss"):
            a = getattr(cpu_model, fn)(x, layer)
            b = getattr(dev_model, fn)(xd, layer)
            assert _on_device(b)
            torch.testing.assert_close(b.cpu(), a, atol=1e-3, rtol=1e-4)
    # CPU images given to a device model are moved, not refused.
    torch.testing.assert_close(dev_model.log_likelihood(x).cpu(), cpu_model.log_likelihood(x),
                               atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(dev_model.predict(xd).cpu(), cpu_model.predict(x))


def test_sampling_on_the_device(dev_model):
    from deepmix.inference import Sharpening

    x = dev_model.sample(40, seed=0, top_s=2)
    assert x.shape == (40, 8, 8, 1) and _on_device(x) and torch.isfinite(x).all()
    assert x.min() >= 0 and x.max() <= 1
    assert torch.equal(x, dev_model.sample(40, seed=0, top_s=2))       # seeded = reproducible
    by_class = dev_model.sample(20, labels=torch.arange(10).repeat(2), seed=1)
    assert by_class.shape == (20, 8, 8, 1) and torch.isfinite(by_class).all()
    sharp = dev_model.sample(8, seed=2, sharpen=Sharpening(iterations=5))
    assert _on_device(sharp) and torch.isfinite(sharp).all()
    assert dev_model.sample(30, seed=0, batch_size=7).shape == (30, 8, 8, 1)


def test_inference_procedures_on_the_device(cpu_model, dev_model, digits):
    from deepmix.inference import (InlierStatistics, inpaint, inpaint_unknown, make_mask,
                                   sharpen, variants)

    images = digits[0]
    test = images[1::2][:50]
    obs = make_mask("right-half", (8, 8))
    a = inpaint(cpu_model, test, obs)
    b = inpaint(dev_model, test.to(DEVICE), obs)
    assert _on_device(b)
    assert torch.equal(b.cpu()[:, :, :4], test[:, :, :4])             # observed: bit-exact
    # Mean-mode completion is deterministic: same as the CPU up to rounding at argmax ties.
    assert (b.cpu() - a).abs().mean() < 1e-3
    drawn = inpaint(dev_model, test.to(DEVICE), obs, mode="sample", iterations=2)
    assert torch.isfinite(drawn).all()
    v = variants(dev_model, test[:5].to(DEVICE), n_per_template=2, keep_above=0, top_s=2)
    assert v.shape == (10, 8, 8, 1) and _on_device(v)
    x0 = torch.rand(4, 8, 8, 1, device=DEVICE)
    assert _on_device(sharpen(dev_model, x0, 0, iterations=5))

    stats = InlierStatistics().fit(dev_model, images[::2].to(DEVICE))
    mask = stats.outlier_mask(dev_model, test.to(DEVICE), layer=0, c=2.0)
    done, detected = inpaint_unknown(dev_model, test.to(DEVICE), {0: mask})
    assert done.shape == test.shape and detected.shape == (50, 8, 8)
    assert torch.isfinite(done).all()


def test_outliers_classification_and_clustering_on_the_device(dev_model, cpu_model, digits):
    from deepmix.experiments.dcgmm_outliers import detect_outliers
    from deepmix.inference import accuracy, fit_classifier
    from deepmix.inference.clustering import cluster_ids

    images, labels = digits
    noise = torch.rand(100, 8, 8, 1)
    res = detect_outliers(dev_model, images[1::2][:200].to(DEVICE), noise.to(DEVICE), layer=0)
    assert 0.0 <= res["auroc"] <= 1.0
    assert math.isclose(res["auroc"], detect_outliers(cpu_model, images[1::2][:200], noise,
                                                      layer=0)["auroc"], abs_tol=1e-6)
    hist = fit_classifier(dev_model, images[::2].to(DEVICE), labels[::2], epochs=5, lr=0.01)
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert accuracy(dev_model, images[1::2].to(DEVICE), labels[1::2]) > 0.6
    ids = cluster_ids(dev_model, images[:100].to(DEVICE))
    assert ids.shape == (100,)


def test_checkpoints_from_the_device_load_anywhere(dev_model, tmp_path, digits):
    from deepmix.training.checkpoint import load_model

    dev_model.save(tmp_path / "run")
    back = load_model(tmp_path / "run")
    assert all(p.device.type == "cpu" for p in back.parameters())
    on_dev = load_model(tmp_path / "run", device=DEVICE)
    x = digits[0][:20]
    torch.testing.assert_close(on_dev.log_likelihood(x).cpu(), back.log_likelihood(x),
                               atol=1e-3, rtol=1e-4)


def test_flat_gmm_and_density_objectives_on_the_device(digits):
    from deepmix import GaussianMixture
    from deepmix.models.gmm import MixtureDensity
    from deepmix.training import fit_density

    flat = digits[0].reshape(len(digits[0]), -1).double()
    kw = dict(covariance_type="diag", random_state=0, max_iter=20)
    a = GaussianMixture(8, **kw).fit(flat)
    b = GaussianMixture(8, device=DEVICE, **kw).fit(flat.to(DEVICE))
    assert np.isfinite(b.score_samples(flat.to(DEVICE))).all()
    # The seed draws on the CPU: the device fit starts where the CPU fit starts.
    assert abs(float(b.score(flat)) - float(a.score(flat))) < 0.05
    xa, la = a.sample(50, seed=0)
    xb, lb = b.sample(50, seed=0)
    assert _on_device(xb) and torch.equal(lb.cpu(), la)
    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    for objective in ("mle", "sm", "ssm"):
        m = MixtureDensity(4, 2, generator=torch.Generator().manual_seed(1)).to(DEVICE)
        losses = fit_density(m, x, objective, epochs=30, batch_size=100, lr=0.05)
        assert all(math.isfinite(v) for v in losses), objective
        assert losses[-1] < losses[0], objective
        drawn = m.sample(20, generator=torch.Generator().manual_seed(0))
        assert _on_device(drawn) and torch.isfinite(drawn).all()


def test_circuits_on_the_device():
    from deepmix.models.circuits import rat_spn

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(300, 16, generator=gen)
    a = rat_spn(16, 2, 3, 4, seed=0)
    b = rat_spn(16, 2, 3, 4, seed=0).to(DEVICE)
    torch.testing.assert_close(b.log_prob(x.to(DEVICE)).cpu(), a.log_prob(x), atol=1e-3,
                               rtol=1e-4)
    lls = b.fit_em(x.to(DEVICE), epochs=3, batch_size=50)
    assert lls[-1] > lls[0]
    s = b.sample(10, generator=torch.Generator(device=DEVICE).manual_seed(0))
    assert s.shape == (10, 16) and torch.isfinite(s).all()
    # A CPU generator draws the same choices on every device.
    s_cpu = a.sample(10, generator=torch.Generator().manual_seed(0))
    s_dev = rat_spn(16, 2, 3, 4, seed=0).to(DEVICE).sample(
        10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(s_dev.cpu(), s_cpu, atol=1e-4, rtol=1e-4)
    mask = torch.zeros(5, 16, dtype=torch.bool, device=DEVICE)
    mask[:, :8] = True
    done = b.complete(x[:5].to(DEVICE), mask)
    assert torch.equal(done[:, :8].cpu(), x[:5, :8])


def test_cli_runs_on_the_device(tmp_path, monkeypatch):
    from deepmix.cli.main import main

    monkeypatch.setenv("DEEPMIX_DATA", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--arch", "F(4,2)-G(9)-F(3,1)-G(16)",
                 "--epochs", "2", "--batch-size", "50", "--device", DEVICE,
                 "--out", str(run), "--no-progress"]) == 0
    assert main(["sample", str(run), "--n", "16", "--device", DEVICE,
                 "--out", str(tmp_path / "s.png")]) == 0
    assert main(["inpaint", str(run), "--n", "8", "--device", DEVICE,
                 "--out", str(tmp_path / "i.png")]) == 0
    assert main(["outliers", str(run), "--inliers", "digits", "--classes", "1-9", "--outliers",
                 "0", "--layer", "all", "--device", DEVICE, "--out", str(tmp_path / "o")]) == 0
    assert main(["report", str(run), "--device", DEVICE]) == 0
    report = json.loads((run / "report.json").read_text())
    assert report


def test_deep_gmm_on_the_device():
    from deepmix.models import DeepGMM, DeepGMMConfig

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(200, 16, generator=gen, dtype=torch.float64)
    cfg = DeepGMMConfig(shape=(4, 4, 1), fold=2, layers="hc3,bd2,ubd2", gating=True,
                        gate_hidden=4)
    a, b = DeepGMM(cfg), DeepGMM(cfg)
    a.fit(x, epochs=3, batch_size=50, gating_epochs=1)
    b.fit(x, epochs=3, batch_size=50, gating_epochs=1, device=DEVICE)
    assert all(_on_device(p) for p in b.parameters())
    torch.testing.assert_close(b.log_prob(x.to(DEVICE)).cpu(), a.log_prob(x), atol=1e-6,
                               rtol=1e-6)
    c, s = b.search(x.to(DEVICE), generator=torch.Generator().manual_seed(1))
    assert _on_device(c) and _on_device(s)
    for g in (torch.Generator().manual_seed(2), torch.Generator(device=DEVICE).manual_seed(2)):
        out = b.sample(5, generator=g)
        assert _on_device(out) and out.shape == (5, 16) and torch.isfinite(out).all()
