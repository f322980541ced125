"""Every family through the same commands: train, resume, evaluate, sample; clear refusals."""

from __future__ import annotations

import json

import pytest

import deepmix
from deepmix.cli.main import main
from deepmix.models import MixtureDensity


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def gmm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gmm") / "run"
    assert main(["train", "--model", "gmm", "--data", "digits", "--k", "4", "--epochs", "2",
                 "--out", str(out), "--no-progress"]) == 0
    return out


def test_train_gmm_writes_a_loadable_run(gmm_run):
    config = json.loads((gmm_run / "config.json").read_text())
    assert config["family"] == "gmm" and config["train"]["objective"] == "em"
    assert config["data"]["shape"] == [8, 8, 1]
    model = deepmix.load(gmm_run)
    assert isinstance(model, MixtureDensity) and model.n_components == 4
    rows = [json.loads(l) for l in (gmm_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]


def test_evaluate_and_sample_take_a_gmm_run(gmm_run, tmp_path, capsys):
    code, out, err = _run(["evaluate", gmm_run, "--json", tmp_path / "e.json"], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "e.json").read_text())
    assert summary["family"] == "gmm" and summary["n"] > 0 and summary["log_prob"] > 0
    code, out, err = _run(["sample", gmm_run, "--n", "9", "--out", tmp_path / "s.png"], capsys)
    assert code == 0, err
    assert (tmp_path / "s.png").stat().st_size > 0 and (tmp_path / "s.npz").is_file()


@pytest.mark.parametrize("command", [["cluster"], ["inpaint", "--unknown", "--out", "x.png"],
                                     ["variants", "--out", "x.png"],
                                     ["outliers", "--outliers", "0", "--out", "x"]])
def test_dcgmm_commands_refuse_a_gmm_run_in_one_line(gmm_run, command, capsys, tmp_path,
                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = _run([command[0], gmm_run, *command[1:]], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("deepmix: error:") and "'gmm' run" in err
    assert not any(tmp_path.iterdir())          # nothing written


def test_resume_continues_and_refuses_another_family(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "gmm", "--data", "digits", "--k", "3", "--epochs", "1",
                 "--out", str(out), "--no-progress"]) == 0
    code, _, err = _run(["train", "--out", out, "--resume", "--epochs", "2", "--no-progress"],
                        capsys)
    assert code == 0, err
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 3
    code, _, err = _run(["train", "--model", "dcgmm", "--out", out, "--resume"], capsys)
    assert code == 2 and "holds a 'gmm' run; --model dcgmm does not match" in err


def test_unknown_family_and_objective_are_one_line_errors(tmp_path, capsys):
    code, _, err = _run(["train", "--model", "flow", "--data", "digits", "--out",
                         tmp_path / "a"], capsys)
    assert code == 2 and err.startswith("deepmix: error: Unknown model family 'flow'")
    code, _, err = _run(["train", "--model", "gmm", "--objective", "magic", "--data", "digits",
                         "--out", tmp_path / "b"], capsys)
    assert code == 2 and "Unknown objective 'magic' for model family 'gmm'" in err
    code, _, err = _run(["train", "--model", "gmm", "--objective", "ssm", "--data", "digits",
                         "--out", tmp_path / "c"], capsys)
    assert code == 2 and "--dequantize" in err
    assert not any(tmp_path.iterdir())


def test_a_fit_gmm_run_is_evaluated_like_any_other(tmp_path, capsys):
    out = tmp_path / "fg"
    assert main(["fit-gmm", "--data", "digits", "--k", "2", "--covariance", "diag",
                 "--epochs", "2", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    code, text, err = _run(["evaluate", out, "--data", "digits"], capsys)
    assert code == 0, err
    assert "flat GMM (K=2, diag)" in text


@pytest.fixture(scope="module")
def circuit_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("circuit") / "run"
    assert main(["train", "--model", "circuit", "--data", "digits", "--k", "3", "--depth", "2",
                 "--repetitions", "2", "--epochs", "2", "--out", str(out), "--no-progress"]) == 0
    return out


def test_a_circuit_run_takes_the_same_commands(circuit_run, tmp_path, capsys):
    from deepmix.models import EinsumNetwork

    assert isinstance(deepmix.load(circuit_run), EinsumNetwork)
    code, out, err = _run(["evaluate", circuit_run, "--json", tmp_path / "e.json"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "e.json").read_text())["family"] == "circuit"
    code, out, err = _run(["sample", circuit_run, "--n", "4", "--out", tmp_path / "s.png"],
                          capsys)
    assert code == 0, err
    code, out, err = _run(["inpaint", circuit_run, "--out", tmp_path / "i.png", "--json",
                           tmp_path / "i.json"], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "i.json").read_text())
    assert result["method"] == "mpe" and 0.0 <= result["mse_missing"] < 1.0


@pytest.mark.parametrize("mode", ["mean", "sample"])
def test_inpaint_completes_a_gmm_run(gmm_run, tmp_path, capsys, mode):
    code, out, err = _run(["inpaint", gmm_run, "--mode", mode, "--mask", "top-half", "--out",
                           tmp_path / "i.png", "--json", tmp_path / "i.json"], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "i.json").read_text())
    assert result["family"] == "gmm" and result["method"] == mode
    assert 0.0 <= result["mse_missing"] < 1.0 and (tmp_path / "i.png").stat().st_size > 0


def test_deep_gmm_warm_start_is_the_flat_gmms_twin(tmp_path, capsys):
    import torch

    from deepmix.data import load_images

    out = tmp_path / "warm"
    code, _, err = _run(["train", "--model", "deep-gmm", "--data", "digits", "--warm-start", 4,
                         "--fold", 2, "--layers", "hc3,diag4", "--lr", 1e-12, "--epochs", 1,
                         "--dequantize", "--out", out, "--no-progress"], capsys)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["objective"] == "mle"
    rows = load_images("digits", "train").to_tensor(
        dequantize=True, generator=torch.Generator().manual_seed(0)).reshape(-1, 64).double()
    flat = deepmix.GaussianMixture(4, covariance_type="diag", random_state=0).fit(rows)
    with torch.no_grad():
        deep = deepmix.load(out).log_prob(rows)
    assert torch.allclose(deep, flat.log_prob(rows).to(deep.dtype), rtol=1e-7, atol=1e-6)


def test_deep_gmm_warm_start_defaults_and_refusals(tmp_path, capsys):
    out = tmp_path / "warm"
    code, _, err = _run(["train", "--model", "deep-gmm", "--data", "digits", "--warm-start", 3,
                         "--fold", 2, "--epochs", 1, "--dequantize", "--out", out,
                         "--no-progress"], capsys)
    assert code == 0, err
    model = deepmix.load(out)
    assert model.config.layers == "hc5,hc5,hc5,diag3,bd1,diag2"
    assert model.n_paths() == 6                     # 3 components, each with its wide twin
    code, _, err = _run(["train", "--model", "gmm", "--data", "digits", "--warm-start", 3,
                         "--out", tmp_path / "b"], capsys)
    assert code == 2 and err.startswith("deepmix: error: --warm-start is a deep-gmm option")
    code, _, err = _run(["train", "--model", "deep-gmm", "--data", "digits", "--warm-start", 3,
                         "--layers", "hc3,diag4", "--out", tmp_path / "c"], capsys)
    assert code == 2 and "exactly one diag3 layer" in err
    code, _, err = _run(["train", "--model", "deep-gmm", "--data", "digits", "--warm-start", 3,
                         "--variance-floor", -1, "--out", tmp_path / "d"], capsys)
    assert code == 2 and err == "deepmix: error: --variance-floor must be a positive number, " \
        "got -1.0\n" and not (tmp_path / "d").exists()
