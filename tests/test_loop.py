"""The one training loop: objectives plug in, runs resume bit-identically, run folders reload."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import deepmix
from deepmix.errors import CheckpointError, ConfigError, DeepmixError
from deepmix import GaussianMixture
from deepmix.models import DCGMM, MixtureDensity
from deepmix.training import FitConfig, fit, make_objective
from deepmix.training.checkpoint import load_model


def _data(n: int = 240, d: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0] * d, [3.0] * d, [-3.0, 3.0, 0.0][:d]])
    return (centres[torch.arange(n) % 3] + torch.randn(n, d, generator=g, dtype=torch.float64)
            * 0.5)


def _model(ct: str = "diag") -> MixtureDensity:
    return MixtureDensity(3, 3, ct, dtype=torch.float64)


CASES = [("em", {}, None), ("em", {}, 50), ("mle", {"lr": 0.05}, 50),
         ("mle", {"lr": 0.05, "lr_decay_every": 1, "lr_decay": 0.5, "clip": 1.0,
                  "skip_nonfinite": True}, 50), ("ssm", {"lr": 0.02, "n_slices": 2}, 64),
         ("sm", {"lr": 0.02}, 100)]


@pytest.mark.parametrize("name,options,batch", CASES)
def test_resume_equals_an_uninterrupted_run(tmp_path, name, options, batch):
    x = _data()
    cfg = FitConfig(epochs=4, batch_size=batch, seed=3, checkpoint_every=2)
    ref = _model()
    ref_rows = fit(ref, x, name, config=cfg, out_dir=tmp_path / "a", **options)
    steps_per_epoch = 1 if batch is None else -(-len(x) // batch)
    stop = steps_per_epoch + (1 if steps_per_epoch > 1 else 0)  # inside epoch 2 where possible
    part = _model()
    fit(part, x, name, config=cfg, out_dir=tmp_path / "b", stop_after_steps=stop, **options)
    again = deepmix.load(tmp_path / "b")
    rows = fit(again, x, name, config=cfg, out_dir=tmp_path / "b", resume=True)
    for k, v in ref.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")}  # noqa: E731
                        for r in rs]
    assert strip(rows) == strip(ref_rows)
    logged = [json.loads(l) for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert strip(logged) == strip(ref_rows)


def test_em_on_the_loop_is_the_estimators_em():
    x = _data()
    model = _model("full")
    model = MixtureDensity(3, 3, "full", parametrization="precision", dtype=torch.float64)
    fit(model, x, "em", config=FitConfig(epochs=5, seed=0))
    gm = GaussianMixture(3, covariance_type="full", max_iter=5, tol=0.0, random_state=0)
    with pytest.warns(RuntimeWarning):
        gm.fit(x)
    torch.testing.assert_close(model.log_prob(x).detach(), gm.log_prob(x), rtol=1e-8, atol=1e-8)


def test_em_raises_the_likelihood_every_epoch():
    rows = fit(_model(), _data(), "em", config=FitConfig(epochs=6),
               evaluate=lambda m: {"train_nll": -m.score(_data())})
    nll = [r["train_nll"] for r in rows]
    assert all(b <= a + 1e-9 for a, b in zip(nll, nll[1:]))


def test_the_run_folder_names_family_and_objective(tmp_path):
    fit(_model(), _data(), "mle", config=FitConfig(epochs=1, batch_size=60),
        out_dir=tmp_path / "r", data_info={"name": "blobs"})
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["family"] == "gmm"
    assert config["train"]["objective"] == "mle" and config["train"]["loop"]["batch_size"] == 60
    assert config["data"] == {"name": "blobs", "n": 240}
    with pytest.raises(CheckpointError, match="holds a 'gmm' run; this needs a 'dcgmm' run"):
        load_model(tmp_path / "r", family="dcgmm")
    with pytest.raises(CheckpointError, match="already holds a run"):
        fit(_model(), _data(), "mle", out_dir=tmp_path / "r")


def test_bad_objectives_and_options_are_named():
    with pytest.raises(ConfigError, match="Unknown objective 'magic' for model family 'gmm'; "
                                          "expected one of em, stepwise-em, mle"):
        fit(_model(), _data(), "magic")
    with pytest.raises(ConfigError, match="unknown key"):
        fit(_model(), _data(), "mle", momentum=0.9)
    with pytest.raises(ConfigError, match="lr must be a positive number"):
        fit(_model(), _data(), "mle", lr=-1.0)
    with pytest.raises(ConfigError, match="trains gmm models, not 'dcgmm'"):
        fit(DCGMM("F(28,1)-G(2)", (28, 28, 1)), torch.zeros(4, 28, 28, 1),
            make_objective("gmm", "em"))
    with pytest.raises(DeepmixError, match="epochs must be >= 1"):
        FitConfig(epochs=0)


def test_a_corrupt_config_key_is_refused_on_resume(tmp_path):
    fit(_model(), _data(), "mle", config=FitConfig(epochs=1), out_dir=tmp_path / "r")
    path = tmp_path / "r" / "config.json"
    config = json.loads(path.read_text())
    config["train"]["loop"]["epochs_typo"] = 3
    path.write_text(json.dumps(config))
    before = (tmp_path / "r" / "weights.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="unknown key.*epochs_typo"):
        fit(_model(), _data(), "mle", out_dir=tmp_path / "r", resume=True)
    assert (tmp_path / "r" / "weights.safetensors").read_bytes() == before


def test_a_nonfinite_loss_stops_with_a_clear_error():
    x = _data()
    with pytest.raises(ConfigError, match="loss became"):
        fit(_model(), x * 1e200, "mle", config=FitConfig(epochs=1), initialize=False)


@pytest.mark.parametrize("name,batch,stop", [("em", 40, 3), ("em", None, 2), ("mle", 40, 4),
                                             ("ssm", 40, 4), ("sm", 60, 1)])
def test_circuits_resume_like_an_uninterrupted_run(tmp_path, name, batch, stop):
    from deepmix.models import rat_spn

    x = _data(120, 3).float()
    cfg = FitConfig(epochs=3, batch_size=batch, seed=1)
    options = {} if name == "em" else {"lr": 0.05}
    ref = rat_spn(3, 1, 2, 3, seed=0, init="em")
    fit(ref, x, name, config=cfg, out_dir=tmp_path / "a", **options)
    part = rat_spn(3, 1, 2, 3, seed=0, init="em")
    fit(part, x, name, config=cfg, out_dir=tmp_path / "b", stop_after_steps=stop, **options)
    again = deepmix.load(tmp_path / "b")
    fit(again, x, name, config=cfg, out_dir=tmp_path / "b", resume=True)
    for k, v in ref.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_nonfinite_steps_can_be_skipped_and_counted():
    from deepmix.training.objectives import MaximumLikelihood

    x = _data()
    x[5, 0] = 1e200                      # one row makes its batch's loss infinite
    obj = MaximumLikelihood({"lr": 0.05, "skip_nonfinite": True})
    rows = fit(_model(), x, obj, config=FitConfig(epochs=2, batch_size=40), initialize=False)
    assert obj.skipped == 2 and all(np.isfinite(r["loss"]) for r in rows[1:])
