"""Every registered family keeps the model protocol and round-trips through deepmix.load."""

from __future__ import annotations

import json

import pytest
import torch

import deepmix
from deepmix.errors import CheckpointError, DeepmixError
from deepmix.models import DCGMM, MixtureDensity, family_names, get_family, rat_spn
from deepmix.models.base import Model
from deepmix.training.checkpoint import save_model
from deepmix.utils.config import config_from_dict, config_to_dict


def _example(family: str) -> tuple[Model, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if family == "dcgmm":
        return DCGMM("F(4,4)-G(3)", (8, 8, 1), seed=1), torch.rand(5, 8, 8, 1, generator=g)
    if family == "gmm":
        m = MixtureDensity(3, 4, "full", parametrization="precision", dtype=torch.float64)
        return m.initialize(torch.randn(30, 4, generator=g, dtype=torch.float64), "random",
                            generator=g), torch.randn(5, 4, generator=g, dtype=torch.float64)
    if family == "circuit":
        return rat_spn(6, 2, 2, 3, seed=2), torch.randn(5, 6, generator=g)
    if family == "deep-gmm":
        from deepmix.models import DeepGMM, DeepGMMConfig

        return (DeepGMM(DeepGMMConfig(shape=(4, 4, 1), fold=2, layers="hc3,bd2,ubd2", seed=1)),
                torch.randn(5, 16, generator=g, dtype=torch.float64))
    if family == "drmm":
        from deepmix.models import DRMM, DRMMConfig

        m = DRMM(DRMMConfig(n_features=3, n_components=3, n_layers=2, dtype="float64"))
        return m.initialize(torch.randn(30, 3, generator=g, dtype=torch.float64),
                            generator=g), torch.randn(5, 3, generator=g, dtype=torch.float64)
    raise AssertionError(f"add an example of the new family '{family}' here")


def test_the_known_families_are_registered():
    assert {"dcgmm", "gmm", "circuit"} <= set(family_names())
    with pytest.raises(DeepmixError, match="Unknown model family .flow.; expected one of "):
        get_family("flow")


@pytest.mark.parametrize("family", family_names())
def test_family_round_trips_through_deepmix_load(family, tmp_path):
    model, x = _example(family)
    assert isinstance(model, Model) and model.family == family
    # The config is JSON and rebuilds an equal config, strictly.
    text = json.dumps(config_to_dict(model.config))
    again = config_from_dict(get_family(family).config_class, json.loads(text))
    assert config_to_dict(again) == config_to_dict(model.config)
    save_model(model, tmp_path / "run")
    back = deepmix.load(tmp_path / "run")
    assert type(back) is type(model)
    torch.testing.assert_close(back.log_prob(x), model.log_prob(x))
    a = model.sample(4, generator=torch.Generator().manual_seed(5))
    b = back.sample(4, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


@pytest.mark.parametrize("family", family_names())
def test_state_dict_is_complete(family):
    model, x = _example(family)
    fresh = get_family(family).model_class.from_config(model.config)
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh.log_prob(x), model.log_prob(x))


@pytest.mark.parametrize("family", family_names())
def test_bad_input_is_one_clear_error(family):
    model, x = _example(family)
    with pytest.raises(DeepmixError):
        model.log_prob(x[..., :-1])                   # wrong shape
    bad = x.clone()
    bad.view(-1)[0] = float("nan")
    with pytest.raises(DeepmixError, match="NaN"):
        model.log_prob(bad)
    with pytest.raises(DeepmixError, match="positive integer|>= 1"):
        model.sample(0)
    for dtype in (torch.bool, torch.complex64):
        with pytest.raises(DeepmixError, match="dtype"):
            model.log_prob(x.to(dtype))
        with pytest.raises(DeepmixError, match="dtype"):
            model.fit(x.to(dtype), epochs=1)
    with pytest.raises(DeepmixError, match="tensor or numpy array|numpy array or torch tensor"):
        model.log_prob("pixels")


@pytest.mark.parametrize("family", family_names())
def test_an_unknown_config_key_is_refused_and_nothing_changes(family, tmp_path):
    model, _ = _example(family)
    save_model(model, tmp_path / "run")
    path = tmp_path / "run" / "config.json"
    config = json.loads(path.read_text())
    config["model"]["no_such_key"] = 1
    path.write_text(json.dumps(config))
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    with pytest.raises(CheckpointError, match="no_such_key"):
        deepmix.load(tmp_path / "run")
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before


def test_log_prob_without_a_density_names_the_alternative():
    from deepmix.errors import NoDensityError

    model = DCGMM("F(4,2)-G(3)", (8, 8, 1))          # overlapping patches: no image density
    with pytest.raises(NoDensityError, match="log_likelihood"):
        model.log_prob(torch.rand(2, 8, 8, 1))


@pytest.mark.parametrize("family", family_names())
def test_fit_and_save_are_the_same_for_every_family(family, tmp_path):
    model, x = _example(family)
    g = torch.Generator().manual_seed(9)
    data = x.repeat(8, *([1] * (x.ndim - 1)))
    data = data + 0.05 * torch.rand(data.shape, generator=g, dtype=data.dtype)
    rows = model.fit(data, epochs=2, batch_size=20, progress=False)
    assert rows and rows[-1]["step"] == 4 and rows[-1]["epoch"] == 2   # 40 rows, batches of 20
    model.save(tmp_path / "run")
    back = deepmix.load(tmp_path / "run")
    torch.testing.assert_close(back.log_prob(x), model.log_prob(x))
    assert back.default_objective == model.default_objective
