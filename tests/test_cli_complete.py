"""``deepmix complete`` (alias ``inpaint``) on tiny digits runs of every family that can
complete: masks by name and by file, the error against the data-mean and zero fills, and the
one-line refusals (a mask of the wrong shape, a family without a conditional)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deepmix.cli.main import main
from deepmix.data import load_images
from deepmix.inference import make_mask


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _train(out, *argv) -> None:
    assert main(["train", *argv, "--data", "digits", "--out", str(out), "--no-progress"]) == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny digits run per completing family (DRMM flat and patch), and a deep GMM."""
    root = tmp_path_factory.mktemp("complete")
    _train(root / "dcgmm", "--arch", "F(4,4,2,2)-G(16)-F(3,3,1,1)-G(16)", "--epochs", "6",
           "--batch-size", "20")
    _train(root / "gmm", "--model", "gmm", "--k", "8", "--epochs", "5")
    _train(root / "circuit", "--model", "circuit", "--k", "3", "--depth", "2",
           "--repetitions", "2", "--epochs", "2")
    _train(root / "drmm", "--model", "drmm", "--k", "8", "--layers", "2", "--batch-size",
           "64", "--epochs", "8")
    _train(root / "deep-gmm", "--model", "deep-gmm", "--layers", "hc3,bd2", "--fold", "2",
           "--dequantize", "--epochs", "1")
    # The patch hierarchy on 8x8 images (the presets take 28x28 MNIST): built from Python.
    from deepmix.models import DRMM, DRMMConfig

    patch = DRMM.from_config(DRMMConfig(n_features=64, n_components=8, n_layers=2,
                                        image_shape=(8, 8, 1), patch_layers=(1, 2),
                                        patch_components=(4, 4)))
    x = load_images("digits", "train").to_tensor().reshape(-1, 64)
    patch.fit(x[:512], epochs=2, batch_size=64, seed=0, out_dir=root / "patch-drmm")
    return root


COMPLETING = ["dcgmm", "gmm", "circuit", "drmm", "patch-drmm"]


@pytest.mark.parametrize("family", COMPLETING)
@pytest.mark.parametrize("mask", ["right-half", "center"])
def test_complete_every_family_by_named_mask(runs, family, mask, tmp_path, capsys):
    png, js = tmp_path / "c.png", tmp_path / "c.json"
    code, out, err = _run(["complete", runs / family, "--data", "digits", "--mask", mask,
                           "--n", "24", "--out", png, "--json", js], capsys)
    assert code == 0, err
    r = json.loads(js.read_text())
    assert r["family"] == ("drmm" if family == "patch-drmm" else family)
    assert r["n"] == 24 and r["mask"] == mask and "MSE on missing pixels" in out
    hidden = ~make_mask(mask, (8, 8), fraction=0.5)
    assert r["hidden_fraction"] == pytest.approx(hidden.mean())
    assert png.stat().st_size > 0
    # Better than nothing: every completion beats filling the hole with black (digits have
    # strokes there), and the GMM's exact conditional mean beats the data-mean floor (a tiny
    # DCGMM's top-down fill on 8x8 digits does not: 0.086 vs 0.070 on right halves).
    x = load_images("digits", "test").to_tensor()[:24, :, :, 0].numpy()
    zero_fill = float((x[:, hidden] ** 2).mean())
    assert np.isfinite(r["mse_missing"]) and 0.0 <= r["mse_missing"] < zero_fill
    if family == "gmm":
        assert r["mse_missing"] < r["mse_missing_mean_fill"]
    # A flat DRMM (8^2 paths) completes by its exact conditional mean, a patch DRMM by draws.
    if family in ("drmm", "patch-drmm"):
        assert r["method"] == ("exact" if family == "drmm" else "mean")


def test_inpaint_is_the_same_command(runs, tmp_path, capsys):
    for name in ("complete", "inpaint"):
        code, _, err = _run([name, runs / "drmm", "--data", "digits", "--mode", "sample",
                             "--seed", "3", "--out", tmp_path / f"{name}.png", "--json",
                             tmp_path / f"{name}.json"], capsys)
        assert code == 0, err
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("complete", "inpaint"))
    assert a == b and (tmp_path / "complete.png").read_bytes() == \
        (tmp_path / "inpaint.png").read_bytes()


def test_per_image_npy_mask_and_drmm_draw_count(runs, tmp_path, capsys):
    obs = np.ones((6, 8, 8), bool)
    for i in range(6):                                   # a different hole in every image
        obs[i, i:i + 3, 2:6] = False
    np.save(tmp_path / "m.npy", obs)
    for family, extra in (("gmm", []), ("patch-drmm", ["--samples", "3"])):
        code, _, err = _run(["complete", runs / family, "--data", "digits", "--n", "6",
                             "--mask", tmp_path / "m.npy", "--out", tmp_path / "c.png",
                             "--json", tmp_path / "c.json", *extra], capsys)
        assert code == 0, err
        r = json.loads((tmp_path / "c.json").read_text())
        assert r["hidden_fraction"] == pytest.approx((~obs).mean())


@pytest.mark.parametrize("family", ["dcgmm", "gmm", "drmm", "patch-drmm"])
def test_a_mask_of_the_wrong_shape_is_one_line(runs, family, tmp_path, capsys):
    np.save(tmp_path / "wrong.npy", np.ones((28, 28), bool))
    code, out, err = _run(["complete", runs / family, "--data", "digits", "--mask",
                           tmp_path / "wrong.npy", "--out", tmp_path / "c.png"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("deepmix: error: mask of shape (28, 28) does not fit")
    assert not (tmp_path / "c.png").exists()


def test_a_deep_gmm_run_is_refused_in_one_line(runs, tmp_path, capsys):
    code, out, err = _run(["complete", runs / "deep-gmm", "--data", "digits", "--out",
                           tmp_path / "c.png", "--json", tmp_path / "c.json"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("deepmix: error: a 'deep-gmm' run cannot complete images")
    assert not any(tmp_path.iterdir())


def test_unknown_mask_stays_dcgmm_only(runs, tmp_path, capsys):
    code, _, err = _run(["complete", runs / "drmm", "--data", "digits", "--unknown", "--out",
                         tmp_path / "c.png"], capsys)
    assert code == 2 and "only DCGMM runs have; " in err and "'drmm' run" in err
    assert not any(tmp_path.iterdir())


def test_chunked_completion_equals_one_call(runs, tmp_path, capsys, monkeypatch):
    # Images go to model.complete in chunks (memory); a deterministic fill must not notice.
    from deepmix.cli import complete

    results = []
    for chunk in (complete._CHUNK, 7):
        monkeypatch.setattr(complete, "_CHUNK", chunk)
        code, _, err = _run(["complete", runs / "gmm", "--data", "digits", "--n", "50",
                             "--out", tmp_path / "c.png", "--json", tmp_path / "c.json"], capsys)
        assert code == 0, err
        results.append(json.loads((tmp_path / "c.json").read_text()))
    assert results[0]["mse_missing"] == pytest.approx(results[1]["mse_missing"], rel=1e-12)
