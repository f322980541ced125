"""Flat-GMM run folders (``deepmix fit-gmm``), the EM / fit_density callbacks, MixtureDensity
sampling and initialisation, the 2-D density plots and the thesis-toy cell runner."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import deepmix
from deepmix.cli import fit_gmm
from deepmix.cli import main as cli_main
from deepmix.errors import CheckpointError
from deepmix import GaussianMixture
from deepmix.models import MixtureDensity
from deepmix.training.density_run import load_density, read_density_config
from deepmix.training import fit_density


@pytest.fixture
def cli(monkeypatch, capsys):
    """``cli(*argv) -> (code, stdout, stderr)`` through deepmix's real ``main``."""
    assert cli_main.COMMANDS["fit-gmm"] is fit_gmm

    def call(*argv: str) -> tuple[int, str, str]:
        try:
            code = cli_main.main(list(argv))
        except SystemExit as exc:  # argparse's own usage errors
            code = int(exc.code)
        out, err = capsys.readouterr()
        return code, out, err

    return call


def _valid_halfmoons() -> torch.Tensor:
    from deepmix.experiments.thesis_toys import train_valid

    return train_valid("halfmoons")[1]


@pytest.mark.parametrize("objective", ["em", "sgd", "sm", "ssm"])
def test_fit_gmm_writes_a_folder_that_reloads_to_the_same_likelihood(tmp_path, cli, objective):
    out = tmp_path / objective
    code, text, err = cli("fit-gmm", "--data", "halfmoons", "--objective", objective, "--k", "3",
                          "--epochs", "3", "--n-train", "400", "--out", str(out), "--quiet")
    assert code == 0, err
    assert {"config.json", "weights.safetensors", "metrics.jsonl", "report.md"} <= \
        {p.name for p in out.iterdir()}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert all(b["seconds"] >= a["seconds"] for a, b in zip(rows, rows[1:]))
    if objective != "em":
        assert all("loss" in r for r in rows[1:])
    model = load_density(out)
    assert isinstance(model, MixtureDensity) and isinstance(deepmix.load(out), MixtureDensity)
    with torch.no_grad():
        valid_nll = -float(model.log_prob(_valid_halfmoons()).mean())
    # EM logs GaussianMixture.score: the converted MixtureDensity must give the same density.
    assert valid_nll == pytest.approx(rows[-1]["valid_nll"], rel=1e-9)
    model_cfg, train_cfg, data_cfg = read_density_config(out)
    assert (model_cfg.n_components, model_cfg.n_features, train_cfg.objective,
            data_cfg.n_train) == (3, 2, objective, 400)
    assert f"valid LL {-rows[-1]['valid_nll']:.4f}" in text


def test_config_is_strict(tmp_path, cli):
    out = tmp_path / "run"
    assert cli("fit-gmm", "--data", "halfmoons", "--k", "2", "--epochs", "1", "--n-train", "100",
               "--out", str(out), "--quiet")[0] == 0
    config = json.loads((out / "config.json").read_text())
    config["train"]["learning_rate"] = 0.1
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="unknown key.*learning_rate"):
        load_density(out)


def test_fit_gmm_errors_are_one_line(tmp_path, cli):
    base = ["--epochs", "1", "--out", str(tmp_path / "r"), "--quiet"]
    code, _, err = cli("fit-gmm", "--data", "halfmoons", "--objective", "nce", *base)
    assert code == 2 and err.startswith("deepmix: error: Unknown objective 'nce'")
    code, _, err = cli("fit-gmm", "--data", "halfmoons", "--covariance", "tied", *base)
    assert code == 2 and err.startswith("deepmix: error: Unknown covariance type 'tied'")
    bad = tmp_path / "cube.npy"
    np.save(bad, np.zeros((10, 2, 2)))
    code, _, err = cli("fit-gmm", "--data", str(bad), *base)
    assert code == 2 and "shape (10, 2, 2)" in err and err.startswith("deepmix: error:")
    code, _, err = cli("fit-gmm", "--data", "halfmoons", "--k", "5", "--n-train", "3", *base)
    assert code == 2 and "n_samples >= n_components" in err
    code, _, err = cli("fit-gmm", "--data", "digits", "--objective", "sm", "--covariance", "diag",
                       *base)
    assert code == 2 and "dequantize" in err
    code, _, err = cli("fit-gmm", "--data", "nowhere", *base)
    assert code == 2 and "Unknown data 'nowhere'" in err
    assert len(err.strip().splitlines()) == 1


def test_fit_gmm_on_an_npy_file_with_diag_sgd(tmp_path, cli):
    x = np.random.default_rng(0).normal(size=(300, 3)) * [1.0, 2.0, 0.5]
    path = tmp_path / "x.npy"
    np.save(path, x)
    out = tmp_path / "run"
    code, _, err = cli("fit-gmm", "--data", str(path), "--objective", "sgd", "--covariance", "diag",
                       "--k", "2", "--epochs", "5", "--batch-size", "64", "--lr", "0.05",
                       "--dtype", "float32", "--out", str(out), "--quiet")
    assert code == 0, err
    model = load_density(out)
    assert model.means.dtype == torch.float32 and model.n_features == 3
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_nll"] < rows[0]["train_nll"]


def test_em_callback_and_seconds_follow_the_history():
    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    seen = []
    gm = GaussianMixture(3, covariance_type="full", max_iter=6, tol=0.0, random_state=0)
    with pytest.warns(RuntimeWarning):
        gm.fit(x, callback=lambda it, ll, model: seen.append((it, ll, model.score(x))))
    assert [s[0] for s in seen] == list(range(7))
    # the model handed to the callback holds the parameters whose likelihood is reported
    assert [s[1] for s in seen] == pytest.approx([s[2] for s in seen], rel=1e-9)
    # history_: the E-step of each of the 6 iterations, under the parameters before it
    assert [s[1] for s in seen][:6] == pytest.approx(gm.history_, rel=1e-9)
    assert len(gm.seconds_) == 6 and all(b >= a for a, b in zip(gm.seconds_, gm.seconds_[1:]))


def test_fit_density_callback_runs_every_epoch():
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    m = MixtureDensity(2, 2)
    seen = []
    history = fit_density(m, x, "sm", epochs=4, batch_size=16,
                          callback=lambda epoch, loss: seen.append((epoch, loss)))
    assert seen == list(zip(range(1, 5), history))


@pytest.mark.parametrize("covariance,parametrization",
                         [("diag", "covariance"), ("full", "covariance"), ("full", "precision")])
def test_mixture_density_samples_have_the_model_moments(covariance, parametrization):
    torch.manual_seed(0)  # the initialisation draws from the global generator: fix it
    gen = torch.Generator().manual_seed(0)
    m = MixtureDensity(2, 2, covariance, parametrization=parametrization, dtype=torch.float64)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    x = m.sample(40_000, generator=gen)
    w = torch.softmax(m.logits, 0).detach()
    if covariance == "diag":
        S = torch.diag_embed(torch.exp(m.log_var.detach()))
    else:
        R = m._precision_factor().detach()
        S = torch.linalg.inv(R @ R.transpose(-1, -2))
    mu_k = m.means.detach()
    mu = (w[:, None] * mu_k).sum(0)
    C = (w[:, None, None] * (S + mu_k[:, :, None] * mu_k[:, None, :])).sum(0) - torch.outer(mu, mu)
    assert torch.allclose(x.mean(0), mu, atol=0.03)
    assert torch.allclose(torch.cov(x.T), C, atol=0.05)


def test_initialize_kmeans_and_random():
    x = torch.cat([torch.randn(100, 2, dtype=torch.float64) * 0.1 + c
                   for c in (-5.0, 5.0)])
    m = MixtureDensity(2, 2, "full", dtype=torch.float64)
    m.initialize(x, "kmeans", generator=torch.Generator().manual_seed(0))
    assert sorted(m.means[:, 0].tolist()) == pytest.approx([-5.0, 5.0], abs=0.05)
    assert torch.equal(m.logits.detach(), torch.zeros(2, dtype=torch.float64))
    m.initialize(x, "random", generator=torch.Generator().manual_seed(0))
    assert all(any(torch.equal(mu, row) for row in x) for mu in m.means.detach())
    assert float(torch.softmax(m.logits.detach(), 0).sum()) == pytest.approx(1.0)
    cov = torch.linalg.inv(m._precision_factor() @ m._precision_factor().transpose(-1, -2))
    assert torch.allclose(cov.detach(), torch.eye(2, dtype=torch.float64).expand(2, 2, 2),
                          atol=1e-5)


def test_log_density_grid_integrates_to_one_and_figure_is_written(tmp_path):
    from deepmix.plots.density import data_bounds, density_figure, log_density_grid

    m = MixtureDensity(3, 2, "full", dtype=torch.float64,
                       generator=torch.Generator().manual_seed(1))
    xs, ys, lp = log_density_grid(m, (-8.0, 8.0, -8.0, 8.0), resolution=200)
    cell = (xs[1] - xs[0]) * (ys[1] - ys[0])
    assert float(np.exp(lp).sum() * cell) == pytest.approx(1.0, abs=1e-3)
    # row i is y = ys[i]: compare one grid value with a direct evaluation
    direct = float(m.log_prob(torch.tensor([[xs[7], ys[3]]], dtype=torch.float64)).detach())
    assert lp[3, 7] == pytest.approx(direct, rel=1e-12)
    data = m.sample(500, generator=torch.Generator().manual_seed(0))
    gm = GaussianMixture(2, covariance_type="full", random_state=0).fit(data)
    png = density_figure(tmp_path / "d.png", [("GD", m), ("EM", gm)], data, n_samples=500,
                         resolution=30, bounds=data_bounds(data))
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def test_run_cell_records_curves_and_keeps_the_model():
    from deepmix.experiments.thesis_toys import run_cell

    r = run_cell("halfmoons", 3, "ssm", T=3, lr=0.05, valid_curve=True, keep_model=True,
                 init="random")
    assert len(r["train_nll_curve"]) == len(r["valid_nll_curve"]) == len(r["seconds_curve"]) == 4
    assert isinstance(r["model"], MixtureDensity)
    assert r["valid_nll_curve"][-1] == pytest.approx(-r["valid_ll"], rel=1e-12)
    r = run_cell("halfmoons", 3, "em", T=3, record_curve=False)
    assert r["train_nll_curve"] == [] and math.isfinite(r["valid_ll"])


@pytest.mark.parametrize("objective", ["em", "ssm"])
def test_fit_gmm_resume_equals_an_uninterrupted_run(tmp_path, cli, objective):
    common = ["--data", "halfmoons", "--objective", objective, "--k", "3", "--n-train", "300",
              "--batch-size", "100", "--quiet"]
    assert cli("fit-gmm", *common, "--epochs", "4", "--out", str(tmp_path / "a"))[0] == 0
    assert cli("fit-gmm", *common, "--epochs", "2", "--out", str(tmp_path / "b"))[0] == 0
    code, text, err = cli("fit-gmm", "--out", str(tmp_path / "b"), "--resume", "--epochs", "4")
    assert code == 0, err and "resumed" in text
    a, b = load_density(tmp_path / "a"), load_density(tmp_path / "b")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    code, _, err = cli("fit-gmm", *common, "--epochs", "1", "--out", str(tmp_path / "a"))
    assert code == 2 and "already holds a run" in err
    code, _, err = cli("train", "--out", str(tmp_path / "a"), "--resume")
    assert code == 2 and "deepmix fit-gmm --out" in err
