"""Outlier detection, inlier statistics, clustering indices and the sample-quality CNN."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from deepmix.errors import CheckpointError, InputError
from deepmix.experiments.dcgmm_outliers import detect_outliers
from deepmix.inference.clustering import cluster_ids
from deepmix.inference.outliers import (InlierStatistics, layer_scores, outlier_scores,
                                        per_position_log_likelihood)
from deepmix.metrics import auroc, clustering_report, davies_bouldin, dunn_index, purity, roc_curve
from deepmix.models import DCGMM


@pytest.fixture(scope="module")
def digit_split():
    from deepmix.data import load_images

    tr, te = load_images("digits", "train"), load_images("digits", "test")
    return tr.to_tensor(), torch.from_numpy(tr.labels), te.to_tensor(), torch.from_numpy(te.labels)


@pytest.fixture(scope="module")
def flat_model(digit_split):
    model = DCGMM("F(8,1)-G(10)", input_shape=(8, 8, 1))
    model.fit(digit_split[0], epochs=20, progress=False)
    return model


@pytest.fixture(scope="module")
def deep_model(digit_split):
    model = DCGMM("F(2,2)-G(16)-F(4,1)-G(10)", input_shape=(8, 8, 1))
    model.fit(digit_split[0], epochs=30, lr=0.05, progress=False)
    return model


def _noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 8, 8, 1, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------- AUROC
def test_auroc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 1.0, 40), rng.normal(0.0, 1.0, 30)
    a[:3] = b[:3]  # ties count one half
    pairs = (a[:, None] > b[None, :]).mean() + 0.5 * (a[:, None] == b[None, :]).mean()
    assert auroc(a, b) == pytest.approx(pairs)
    assert auroc(b, a) == pytest.approx(1 - pairs)
    curve = roc_curve(torch.tensor(a), torch.tensor(b))
    assert curve["auroc"] == pytest.approx(pairs)
    assert curve["fpr"][0] == 0 and curve["tpr"][-1] == 1
    assert np.all(np.diff(curve["fpr"]) >= 0)


def test_auroc_handles_infinite_log_likelihoods():
    assert auroc([0.0, 1.0], [-np.inf, -np.inf]) == 1.0
    assert auroc([np.inf, 0.0], [-1.0, 0.5]) == 0.75


@pytest.mark.parametrize("inl, out, msg", [
    ([], [1.0], "empty"),
    ([[1.0, 2.0]], [1.0], "1-D"),
    ([1.0, float("nan")], [0.0], "NaN"),
    (["a"], [0.0], "numbers"),
])
def test_auroc_rejects_bad_scores(inl, out, msg):
    with pytest.raises(InputError, match=msg):
        auroc(inl, out)


def test_roc_png_is_written(tmp_path):
    from deepmix.plots.roc import save_roc_curve

    path = save_roc_curve({"layer 0": roc_curve([1.0, 2.0, 0.5], [0.0, 0.7])}, tmp_path / "roc.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(InputError):
        save_roc_curve({}, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


# ----------------------------------------------------------------------- outlier detection
def test_digits_vs_uniform_noise_auroc_near_one(flat_model, digit_split):
    x_test = digit_split[2]
    result = detect_outliers(flat_model, x_test, _noise(300), layer=-1)
    assert result["layer"] == 0 and result["n_inliers"] == len(x_test)
    assert result["auroc"] > 0.99
    assert result["inlier_mean"] > result["outlier_mean"]
    # the scores are the model's own position-mean log-likelihood, in batches or not
    s = outlier_scores(flat_model, x_test, batch_size=7)
    torch.testing.assert_close(s, flat_model.log_likelihood(x_test), rtol=1e-4, atol=1e-4)


def test_every_layer_scored_in_one_pass(deep_model, digit_split):
    x = digit_split[2][:50]
    scores = layer_scores(deep_model, x, "all", batch_size=16)
    assert set(scores) == {0, 1}
    for L in (0, 1):
        torch.testing.assert_close(scores[L], deep_model.log_likelihood(x, L), rtol=1e-4, atol=1e-4)
    per = per_position_log_likelihood(deep_model, x, [0, -1])
    assert per[0].shape == (50, 4, 4) and per[1].shape == (50, 1, 1)
    res = detect_outliers(deep_model, x, _noise(40), "all")
    assert set(res["layers"]) == {0, 1} and res["best_layer"] in (0, 1)


def test_bad_layer_and_shapes_are_clear(flat_model):
    with pytest.raises(InputError, match="GMM layer 3 does not exist"):
        outlier_scores(flat_model, _noise(4), layer=3)
    with pytest.raises(InputError, match="shape"):
        outlier_scores(flat_model, torch.rand(4, 9, 9))
    with pytest.raises(InputError, match="batch_size"):
        outlier_scores(flat_model, _noise(4), batch_size=0)
    with pytest.raises(InputError, match="'every'"):
        layer_scores(flat_model, _noise(4), "every")


# --------------------------------------------------------------------- inlier statistics
def test_inlier_statistics_match_direct_computation(deep_model, digit_split):
    x = digit_split[0][:200]
    stats = InlierStatistics().fit(deep_model, x, batch_size=64)
    ll = deep_model.log_likelihood(x, 0, per_position=True).double()
    torch.testing.assert_close(stats.mean_[0].double(), ll.mean(0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(stats.std_[0].double(), ll.std(0), rtol=1e-4, atol=1e-4)
    assert stats.n_ == 200 and stats.mean_[1].shape == (1, 1)


def test_inlier_statistics_mark_an_injected_block(deep_model, digit_split, tmp_path):
    x_train, _, x_test, _ = digit_split
    stats = InlierStatistics().fit(deep_model, x_train)
    clean = x_test[:60]
    dirty = clean.clone()
    # a 4x4 checkerboard in the top-left corner: covers layer-0 positions (0..1, 0..1) of the
    # 4x4 grid of 2x2 patches, where training images are (almost) blank
    checker = ((torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2).float()
    dirty[:, 0:4, 0:4, 0] = checker
    mask = stats.outlier_mask(deep_model, dirty, layer=0, c=2.0)
    assert mask.shape == (60, 4, 4) and mask.dtype == torch.bool
    block = torch.zeros(4, 4, dtype=torch.bool)
    block[0:2, 0:2] = True
    assert mask[:, block].float().mean() > 0.9
    assert mask[:, ~block].float().mean() < 0.1
    assert stats.outlier_mask(deep_model, clean, layer=0, c=2.0).float().mean() < 0.1
    # z-scores agree with the mask, and a larger c flags fewer positions
    z = stats.z_scores(deep_model, dirty, layer=0)
    assert torch.equal(z < -2.0, mask)
    assert stats.outlier_mask(deep_model, dirty, 0, c=50.0).sum() <= mask.sum()

    path = stats.save(tmp_path / "stats.safetensors")
    loaded = InlierStatistics.load(path)
    assert loaded.n_ == stats.n_ and loaded.spec_ == deep_model.spec()
    assert torch.equal(loaded.outlier_mask(deep_model, dirty, layer=0, c=2.0), mask)


def test_inlier_statistics_errors(deep_model, flat_model, tmp_path):
    with pytest.raises(InputError, match="not fitted"):
        InlierStatistics().outlier_mask(deep_model, _noise(2))
    stats = InlierStatistics().fit(deep_model, _noise(10), layers=0)
    with pytest.raises(InputError, match="no statistics for GMM layer 1"):
        stats.outlier_mask(deep_model, _noise(2), layer=-1)
    with pytest.raises(InputError, match="belong to"):
        stats.outlier_mask(flat_model, _noise(2), layer=0)
    with pytest.raises(InputError, match="at least 2"):
        InlierStatistics().fit(deep_model, _noise(1))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt"):
        InlierStatistics.load(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        InlierStatistics.load(tmp_path / "missing.safetensors")


# ----------------------------------------------------------------------------- clustering
def test_dunn_index_on_a_hand_computed_example():
    # clusters {0, 1} and {4, 6} on a line: diameters 1 and 2, closest pair (1, 4) at 3
    x = torch.tensor([[0.0], [1.0], [4.0], [6.0]])
    assert dunn_index(x, [0, 0, 1, 1]) == pytest.approx(3 / 2)
    assert dunn_index(x, [0, 0, 1, 1], chunk_size=1, exact=True) == pytest.approx(1.5, abs=1e-12)
    # 2-D: A = {(0,0), (0,3)}, B = {(4,0)}, C = {(4,4), (7,4)}: max diameter 3, min gap 4
    pts = np.array([[0, 0], [0, 3], [4, 0], [4, 4], [7, 4]], dtype=float)
    assert dunn_index(pts, np.array([0, 0, 1, 2, 2])) == pytest.approx(4 / 3)


def test_dunn_index_chunking_does_not_change_the_result():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=gen)
    y = torch.randint(0, 4, (300,), generator=gen)
    d = torch.cdist(x.double(), x.double())
    same = y[:, None] == y[None, :]
    expected = float(d[~same].min() / d[same].max())
    for chunk in (1, 17, 300, None):
        assert dunn_index(x, y, chunk_size=chunk) == pytest.approx(expected, rel=1e-9)


def test_davies_bouldin_equals_sklearn():
    from sklearn.metrics import davies_bouldin_score

    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 3, 3))
    y = rng.integers(0, 5, 120)
    assert davies_bouldin(x, y) == pytest.approx(davies_bouldin_score(x.reshape(120, -1), y))


def test_cluster_indices_reject_bad_input():
    with pytest.raises(InputError, match="two clusters"):
        dunn_index(np.zeros((5, 2)), np.zeros(5, dtype=int))
    with pytest.raises(InputError, match="integers"):
        dunn_index(np.zeros((5, 2)), np.zeros(5))
    with pytest.raises(InputError, match=r"shape \(5,\)"):
        davies_bouldin(np.zeros((5, 2)), np.arange(4))
    with pytest.raises(InputError, match="NaN"):
        dunn_index(np.full((3, 2), np.nan), [0, 1, 1])


def test_purity_and_report(flat_model, digit_split):
    assert purity([0, 0, 1, 1, 1], [5, 5, 5, 7, 7]) == pytest.approx(4 / 5)
    x_test, y_test = digit_split[2], digit_split[3]
    ids = cluster_ids(flat_model, x_test, batch_size=50)
    assert ids.shape == (len(x_test),) and int(ids.max()) < 10
    # the argmax of the position-mean responsibilities, here one position
    torch.testing.assert_close(ids, flat_model(x_test).flatten(1).argmax(1))
    report = clustering_report(x_test, ids, y_test, max_points_dunn=200)
    assert report["n"] == len(x_test) and report["dunn_points"] == 200
    assert sum(report["cluster_sizes"].values()) == len(x_test)
    assert 0 < report["purity"] <= 1 and -1 <= report["adjusted_rand"] <= 1
    json.dumps(report)  # plain types only


# ------------------------------------------------------------------------- sample quality
def test_sample_quality_cnn_trains_caches_and_checks(tmp_path, monkeypatch, digit_split,
                                                     flat_model):
    import importlib

    # the package re-exports the function sample_quality under the module's name
    sq = importlib.import_module("deepmix.experiments.sample_quality")
    monkeypatch.setenv("DEEPMIX_DATA", str(tmp_path))
    torch.manual_seed(0)
    clf = sq.train_reference_classifier("digits", epochs=1, max_train=300)
    path = sq.classifier_path("digits")
    assert path == tmp_path / "classifiers" / "digits.safetensors" and path.is_file()
    assert clf.net.padding == "same" and clf.info["n_train"] == 300
    assert 0.0 <= clf.info["test_accuracy"] <= 1.0

    x, y = digit_split[2][:40], digit_split[3][:40]
    acc = sq.sample_quality(x, y, "digits")  # loads the cached file, trains nothing
    assert acc == pytest.approx(clf.accuracy(x, y))
    assert sq.sample_quality(x.permute(0, 3, 1, 2), y.numpy(), clf) == pytest.approx(acc)

    with pytest.raises(InputError, match="shape"):
        sq.sample_quality(torch.rand(4, 28, 28), [0, 1, 2, 3], clf)
    with pytest.raises(InputError, match="0..9"):
        sq.sample_quality(x[:2], [0, 10], clf)
    with pytest.raises(InputError, match="2 labels for 3"):
        sq.sample_quality(x[:3], [0, 1], clf)
    with pytest.raises(InputError, match="integers"):
        sq.sample_quality(x[:2], [0.0, 1.0], clf)

    # a damaged file is named, and retrained on request
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="SHA-256|corrupt"):
        sq.load_reference_classifier("digits", train_if_missing=False)
    with pytest.warns(RuntimeWarning, match="training it again"):
        again = sq.load_reference_classifier("digits", epochs=1, max_train=100)
    assert again.info["n_train"] == 100
    assert sq.load_reference_classifier("digits", train_if_missing=False).info["n_train"] == 100

    # the paper's protocol: one model per class, n samples each
    res = sq.sample_quality_of_models({3: flat_model, 5: flat_model}, "digits", n_per_class=20)
    assert set(res["per_class"]) == {3, 5}
    assert res["accuracy"] == pytest.approx(sum(res["per_class"].values()) / 2)
    with pytest.raises(InputError, match="classifier layer"):
        sq.sample_quality_of_models(flat_model, "digits")
    with pytest.raises(InputError, match="no model for class"):
        sq.sample_quality_of_models({3: flat_model}, "digits", classes=[3, 4])

    from deepmix.cli import sample_quality as cli

    run_dir = tmp_path / "run"
    flat_model.save(run_dir)
    np.savez(tmp_path / "s.npz", samples=x.numpy(), labels=y.numpy())
    assert _cli(cli, ["digits", "--run", f"3={run_dir}", "--n", "10", "--samples",
                      str(tmp_path / "s.npz"), "--json", str(tmp_path / "q.json")]) == 0
    q = json.loads((tmp_path / "q.json").read_text())
    assert q["samples"]["accuracy"] == pytest.approx(sq.sample_quality(x, y, "digits")) and "3" in q["runs"]["per_class"]


def test_sample_quality_cnn_shapes():
    from deepmix.experiments.reference_cnn import SampleQualityCNN

    net = SampleQualityCNN((28, 28, 1))
    assert net.padding == "valid" and net(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert SampleQualityCNN((8, 8, 1))(torch.rand(3, 1, 8, 8)).shape == (3, 10)
    assert SampleQualityCNN((32, 32, 3), 5)(torch.rand(1, 3, 32, 32)).shape == (1, 5)
    with pytest.raises(InputError, match="too small"):
        SampleQualityCNN((4, 4, 1))


def test_sample_quality_metric_takes_any_classifier():
    # The metric works on arrays: a callable giving logits or classes, or an object with predict.
    from deepmix.metrics import sample_quality

    x = torch.rand(7, 2)
    by_logits = lambda b: torch.stack([b[:, 0], b[:, 1]], 1)  # noqa: E731  (argmax: larger column)
    y = (x[:, 1] > x[:, 0]).long()
    assert sample_quality(x, y, by_logits, batch_size=3) == 1.0
    assert sample_quality(x, 1 - y, lambda b: (b[:, 1] > b[:, 0]).long()) == 0.0
    with pytest.raises(InputError, match="not the data set name"):
        sample_quality(x, y, "digits")
    with pytest.raises(InputError, match="no images"):
        sample_quality(torch.zeros(0, 2), [], by_logits)
    with pytest.raises(InputError, match="7 labels for"):
        sample_quality(x[:3], y, by_logits)


def test_outlier_separation_on_arrays():
    from deepmix.metrics import outlier_separation

    res = outlier_separation(np.array([3.0, 2.0, 1.5]), torch.tensor([0.0, 1.0]))
    assert res["auroc"] == 1.0 and (res["n_inliers"], res["n_outliers"]) == (3, 2)
    assert res["inlier_mean"] == pytest.approx(6.5 / 3) and res["outlier_scores"].dtype == np.float64
    with pytest.raises(InputError, match="NaN"):
        outlier_separation([np.nan], [0.0])


# -------------------------------------------------------------------------------- the CLI
def _cli(module, argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))


def test_outliers_and_cluster_commands(flat_model, tmp_path, capsys):
    from deepmix.cli import cluster, outliers

    run_dir = tmp_path / "run"
    flat_model.save(run_dir)
    out = tmp_path / "out"
    assert _cli(outliers, [str(run_dir), "--inliers", "digits", "--classes", "1-9",
                           "--outliers", "0", "--layer", "all", "--out", str(out)]) == 0
    result = json.loads((out / "outliers.json").read_text())
    assert result["layers"][0]["layer"] == 0 and 0 <= result["layers"][0]["auroc"] <= 1
    assert (out / "roc.png").read_bytes()[:4] == b"\x89PNG"
    assert _cli(cluster, [str(run_dir), "--data", "digits", "--json",
                          str(tmp_path / "c.json")]) == 0
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["n"] == 360 and "purity" in report
    assert "AUROC" in capsys.readouterr().out


def test_saved_statistics_have_the_usual_permissions(deep_model, tmp_path):
    import os

    path = InlierStatistics().fit(deep_model, _noise(4)).save(tmp_path / "s.safetensors")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_reference_classifier_runs_per_seed(tmp_path, monkeypatch):
    """Each CNN seed is its own cached run (the paper averages over CNN runs); seed 0 keeps the
    unsuffixed file."""
    import importlib

    sq = importlib.import_module("deepmix.experiments.sample_quality")
    monkeypatch.setenv("DEEPMIX_DATA", str(tmp_path))
    assert sq.classifier_path("digits").name == "digits.safetensors"
    assert sq.classifier_path("digits", 2).name == "digits_seed2.safetensors"
    a = sq.load_reference_classifier("digits", epochs=1, max_train=100)
    b = sq.load_reference_classifier("digits", seed=2, epochs=1, max_train=100)
    assert (a.info["seed"], b.info["seed"]) == (0, 2)
    assert sq.classifier_path("digits", 2).is_file() and sq.classifier_path("digits").is_file()
    assert not torch.equal(a.net.head[-1].weight, b.net.head[-1].weight)
    again = sq.load_reference_classifier("digits", seed=2, train_if_missing=False)
    assert torch.equal(again.net.head[-1].weight, b.net.head[-1].weight)
