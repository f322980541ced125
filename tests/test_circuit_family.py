"""The 'circuit' model family: config, registry, run folders, state_dict and the leaf classes."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from deepmix.errors import CheckpointError, ConfigError, InputError, SpecError
from deepmix.models import CircuitConfig, EinsumNetwork, RegionGraph, poon_domingos, rat_spn
from deepmix.models.base import Model
from deepmix.models.circuits import BINOMIAL_LOGIT_SCALE, BinomialLeaves, GaussianLeaves
from deepmix.models.registry import get_family, model_config_dict, model_from_config_dict
from deepmix.training.checkpoint import CONFIG_FILE, load_model, save_model
from deepmix.utils.config import config_from_dict, config_to_dict

F64 = torch.float64


def _trained(model: EinsumNetwork, seed: int = 0, steps: int = 3) -> EinsumNetwork:
    """A few EM steps on random data, so that every parameter is away from its initial value."""
    gen = torch.Generator().manual_seed(seed)
    D = model.num_var * model.num_dims
    if model.leaf == "binomial":
        x = torch.binomial(torch.full((60, D), float(model.total_count)),
                           torch.rand(60, D, generator=gen), generator=gen)
    else:
        x = torch.randn(60, D, generator=gen)
    model.init_leaves_from_data(x, seed=seed)
    for _ in range(steps):
        model.em_step(x, stepsize=0.5)
    return model


def _data(model: EinsumNetwork, n: int = 9, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    D = model.num_var * model.num_dims
    if model.leaf == "binomial":
        return torch.binomial(torch.full((n, D), float(model.total_count)),
                              torch.rand(n, D, generator=gen), generator=gen).to(model.dtype)
    return torch.randn(n, D, generator=gen, dtype=model.dtype)


CIRCUITS = {
    "rat": lambda: rat_spn(12, 2, 3, 4, seed=2),
    "pd": lambda: poon_domingos(3, 4, [1, 2], 3, num_dims=2, init="em", seed=1, dtype=F64),
    "pd-binomial": lambda: poon_domingos(2, 3, [1], 2, leaf="binomial", total_count=15, seed=3),
}


# -- the protocol and the registry ----------------------------------------------------------------

def test_circuits_are_a_registered_model_family():
    fam = get_family("circuit")
    assert fam.model_class is EinsumNetwork and fam.config_class is CircuitConfig
    m = rat_spn(8, 2, 2, 3)
    assert isinstance(m, Model) and m.family == "circuit" and isinstance(m.config, CircuitConfig)
    assert m.config.replicas and m.config.num_input_distributions == 3 and m.config.dtype == "float32"
    rebuilt = model_from_config_dict("circuit", model_config_dict(m))
    x = torch.randn(4, 8)
    torch.testing.assert_close(rebuilt.log_prob(x), m.log_prob(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(CIRCUITS))
def test_config_round_trips_through_json(name):
    m = CIRCUITS[name]()
    cfg = m.config
    text = json.dumps(config_to_dict(cfg))
    back = config_from_dict(CircuitConfig, json.loads(text))
    assert back == cfg
    assert isinstance(back.scopes[0], tuple) and isinstance(back.partitions[0], tuple)
    assert back.graph().replicas == m.graph.replicas
    fresh = EinsumNetwork.from_config(back)       # same graph, options, init and seed
    x = _data(m)
    torch.testing.assert_close(fresh.log_prob(x), m.log_prob(x), rtol=0, atol=0)


def test_unknown_or_bad_config_keys_are_refused(tmp_path):
    data = config_to_dict(rat_spn(4, 1, 2, 2).config)
    with pytest.raises(ConfigError, match="bogus"):
        config_from_dict(CircuitConfig, {**data, "bogus": 1})
    with pytest.raises(ConfigError, match="num_sums"):
        config_from_dict(CircuitConfig, {**data, "num_sums": "ten"})
    with pytest.raises(ConfigError, match="dtype"):
        config_from_dict(CircuitConfig, {**data, "dtype": "float16"})
    with pytest.raises(ConfigError, match="leaf"):
        config_from_dict(CircuitConfig, {**data, "leaf": "poisson"})
    run = save_model(rat_spn(4, 1, 2, 2), tmp_path / "run")
    cfg = json.loads((run / CONFIG_FILE).read_text())
    cfg["model"]["leaf_scale"] = 0.1
    (run / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="leaf_scale"):
        load_model(run)
    # a graph that is not smooth is refused too, as a CheckpointError naming the problem
    cfg["model"].pop("leaf_scale")
    cfg["model"]["partitions"][0][1] = cfg["model"]["partitions"][0][2]
    (run / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="decomposable|smooth"):
        load_model(run)


def test_replicas_accept_pairs_and_json_string_keys():
    scopes, parts = [(0, 1), (0,), (1,), (0,), (1,)], [(0, 1, 2), (0, 3, 4)]
    a = RegionGraph(2, scopes, parts, 0, replicas={3: 1, 4: 1})
    b = RegionGraph(2, scopes, parts, 0, replicas=[(3, 1), (4, 1)])
    c = RegionGraph(2, scopes, parts, 0, replicas=json.loads(json.dumps({3: 1, 4: 1})))
    assert a.replicas == b.replicas == c.replicas == {3: 1, 4: 1}
    with pytest.raises(SpecError, match="replicas"):
        RegionGraph(2, scopes, parts, 0, replicas=[(3, 1, 0)])


# -- run folders and state_dict ---------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CIRCUITS))
def test_trained_circuits_round_trip_through_run_folders(name, tmp_path):
    m = _trained(CIRCUITS[name]())
    run = save_model(m, tmp_path / name)
    assert json.loads((run / CONFIG_FILE).read_text())["family"] == "circuit"
    loaded = load_model(run)
    assert type(loaded) is EinsumNetwork and loaded.config == m.config and loaded.dtype == m.dtype
    x = _data(m)
    torch.testing.assert_close(loaded.log_prob(x), m.log_prob(x), rtol=0, atol=1e-6)
    mask = torch.rand(x.shape[0], m.num_var, generator=torch.Generator().manual_seed(0)) > 0.5
    torch.testing.assert_close(loaded.log_prob(x, mask), m.log_prob(x, mask), rtol=0, atol=1e-6)
    draws = [model.sample(6, generator=torch.Generator().manual_seed(7)) for model in (m, loaded)]
    assert torch.equal(draws[0], draws[1])
    cond = [model.sample(condition=(x, mask), generator=torch.Generator().manual_seed(8))
            for model in (m, loaded)]
    assert torch.equal(cond[0], cond[1])
    assert torch.equal(loaded.complete(x, mask), m.complete(x, mask))


def test_state_dict_is_complete_and_keeps_its_key_names():
    m = _trained(rat_spn(10, 2, 3, 4, seed=5))
    keys = set(m.state_dict())
    # the key names of circuits saved before the split into a package
    assert {"mean", "var_raw"} <= keys and "prob_raw" not in keys
    assert all(k in ("mean", "var_raw") or k.startswith(("einsum_", "mixing_")) for k in keys)
    assert set(poon_domingos(2, 2, [1], 2, leaf="binomial").state_dict()) >= {"prob_raw"}
    fresh = EinsumNetwork.from_config(m.config)
    x = _data(m)
    assert not torch.allclose(fresh.log_prob(x), m.log_prob(x))
    fresh.load_state_dict(m.state_dict())           # strict: no key missing, none unexpected
    torch.testing.assert_close(fresh.log_prob(x), m.log_prob(x), rtol=0, atol=0)
    a = m.sample(5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(fresh.sample(5, generator=torch.Generator().manual_seed(3)), a)


def test_config_follows_a_dtype_conversion(tmp_path):
    m = _trained(rat_spn(6, 1, 2, 3, seed=1)).double()
    assert m.config.dtype == "float64"
    loaded = load_model(save_model(m, tmp_path / "run"))
    assert loaded.dtype == F64
    x = _data(m)
    torch.testing.assert_close(loaded.log_prob(x), m.log_prob(x), rtol=0, atol=0)


# -- the leaf classes ------------------------------------------------------------------------------

# Golden numbers of the pre-split module (deepmix.models.circuits at a64c564): sums of log p,
# the closed-form score and Laplacian, 5 samples, an MPE completion, log p after a stepwise EM
# step and after init_leaves_from_data.
GOLDEN = {
    "gauss_rat": [-66.90938089466695, 0.619750030499939, -9.114035642790991, -30.232937065939623,
                  -11.087841846032834, -58.11120229235598, -49.261092800569706],
    "gauss_pd": [-123.44882457610115, -7.534492727087354, -57.17379127646353, 23.664990228577132,
                 25.450752089664242, -95.887872947764, -100.88977369395333],
    "binom_rat": [-137.97660248429526, -3.354743494405448, -16.810930995490498, 167.0, 215.0,
                  -119.04085067391867, -66.66405045064221],
    "binom_pd": [-140.9212377181592, 2.687110263503574, -10.889706986191037, 171.0, 196.0,
                 -105.54119512958707, -112.61896112406762],
}


def _golden_report(m: EinsumNetwork, x: torch.Tensor, xs: torch.Tensor) -> list[float]:
    lp = m.log_prob(x).detach()
    s, lap = m.score_and_laplacian(xs)
    smp = m.sample(5, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(x.shape[0], m.num_var, dtype=torch.bool)
    mask[:, ::2] = True
    comp = m.complete(x, mask)
    m.em_step(x, stepsize=0.5)
    lp2 = m.log_prob(x).detach()
    m.init_leaves_from_data(x, seed=4)
    lp3 = m.log_prob(x).detach()
    return [float(lp.sum()), float(s.detach().sum()), float(lap.detach().sum()), float(smp.sum()),
            float(comp.sum()), float(lp2.sum()), float(lp3.sum())]


def test_leaf_classes_give_the_numbers_of_the_pre_split_module():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 6, generator=g, dtype=F64)
    got = {"gauss_rat": _golden_report(rat_spn(6, 2, 2, 3, seed=3, dtype=F64), x, x)}
    x = torch.randn(6, 12, generator=g, dtype=F64)
    got["gauss_pd"] = _golden_report(poon_domingos(2, 3, [1], 2, num_dims=2, init="em", seed=1,
                                                   dtype=F64), x, x)
    x = torch.binomial(torch.full((6, 6), 12.0, dtype=F64), torch.rand(6, 6, generator=g, dtype=F64),
                       generator=g)
    got["binom_rat"] = _golden_report(rat_spn(6, 2, 2, 3, leaf="binomial", total_count=12, seed=3,
                                              dtype=F64), x, x * 0.9 + 0.4)
    got["binom_pd"] = _golden_report(poon_domingos(2, 3, [1], 2, leaf="binomial", total_count=12,
                                                   init="em", seed=2, dtype=F64), x, x * 0.9 + 0.4)
    for name, want in GOLDEN.items():
        for a, b in zip(got[name], want):
            assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9), (name, got[name], want)


def test_gaussian_leaves_match_torch_distributions():
    leaves = GaussianLeaves((3, 2, 4, 2), min_var=1e-3, max_var=5.0)
    params = {k: v.detach() for k, v in leaves.create_parameters(F64).items()}
    leaves.reset(params, "gradient", torch.Generator().manual_seed(0))
    x = torch.randn(5, 3, 2, dtype=F64)
    var = leaves.variance(params)
    assert float(var.min()) >= 1e-3 and float(var.max()) <= 5.0
    ref = torch.distributions.Normal(params["mean"], var.sqrt()).log_prob(x[:, :, None, None, :]).sum(-1)
    torch.testing.assert_close(leaves.log_density(params, x), ref, rtol=1e-12, atol=1e-12)
    leaves.set_variance(params, torch.full_like(var, 0.25))
    torch.testing.assert_close(leaves.variance(params), torch.full_like(var, 0.25), rtol=1e-6, atol=0)
    mode = leaves.draw(params, torch.tensor([0, 2]), torch.tensor([1, 0]), torch.tensor([[3, 0]]), "mpe", None)
    torch.testing.assert_close(mode[0], torch.stack([params["mean"][0, 1, 3], params["mean"][2, 0, 0]]))


def test_binomial_leaves_match_torch_distributions_and_their_scale():
    leaves = BinomialLeaves((3, 1, 2, 1), total_count=7)
    params = {k: v.detach() for k, v in leaves.create_parameters(F64).items()}
    leaves.reset(params, "gradient", torch.Generator().manual_seed(1))
    p = leaves.probability(params)
    torch.testing.assert_close(p, torch.sigmoid(BINOMIAL_LOGIT_SCALE * params["prob_raw"]))
    x = torch.randint(0, 8, (6, 3, 1)).to(F64)
    ref = torch.distributions.Binomial(7, probs=p).log_prob(x[:, :, None, None, :]).sum(-1)
    torch.testing.assert_close(leaves.log_density(params, x), ref, rtol=1e-10, atol=1e-10)
    leaves.set_probability(params, torch.full_like(p, 0.3))
    torch.testing.assert_close(leaves.probability(params), torch.full_like(p, 0.3), rtol=1e-12, atol=0)
    mode = leaves.draw(params, torch.tensor([1]), torch.tensor([0]), torch.tensor([[1]]), "mpe", None)
    assert float(mode) == math.floor(8 * 0.3)                       # the mode of Binomial(7, 0.3)
    with pytest.raises(InputError, match=r"\[0, 7\]"):
        leaves.check_input(torch.full((1, 3, 1), 8.0))
    with pytest.raises(ConfigError, match="total_count"):
        BinomialLeaves((1, 1, 1, 1), total_count=0)


def test_constructor_errors_still_name_the_option():
    with pytest.raises(ConfigError, match="num_sums"):
        rat_spn(4, 1, 1, 0)
    with pytest.raises(ConfigError, match="dtype"):
        rat_spn(4, 1, 1, 2, dtype=torch.float16)
    with pytest.raises(ConfigError, match="total_count"):
        rat_spn(4, 1, 1, 2, leaf="binomial", total_count=0)
    with pytest.raises(ConfigError, match="leaf"):
        rat_spn(4, 1, 1, 2, leaf="poisson")
    with pytest.raises(ConfigError, match="CircuitConfig"):
        EinsumNetwork.from_config({"num_var": 4})
    cfg = rat_spn(4, 1, 1, 2).config
    assert dataclasses.replace(cfg, num_input_distributions=None).num_input_distributions == 2
