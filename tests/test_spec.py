"""Tests of the spec language, the named architectures and whole-model behaviour of DCGMM
(building, log_prob, sampling)."""

from __future__ import annotations


import pytest
import torch

from deepmix import ARCHITECTURES, DCGMM
from deepmix.errors import ConfigError, InputError, SpecError
from deepmix.layers import GMM, Classifier, Folding, Pooling
from deepmix.models import LayerSpec, format_spec, parse_spec, resolve_architecture

NOT_BUILDABLE = {
    # As listed in the paper (and the spec), 3L-a does not fit 28x28x1 images.
    "3L-a": "26 -> P 13 -> F(4) 10 -> P 5, then F(6,6,1,1) does not fit the 5x5 input",
}


# ----------------------------------------------------------------------------------- parsing
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_parse_format_round_trip_for_every_architecture(name):
    layers = parse_spec(name)
    assert layers == parse_spec(ARCHITECTURES[name])
    text = format_spec(layers)
    assert parse_spec(text) == layers
    assert format_spec(parse_spec(text)) == text
    assert all(isinstance(ls, LayerSpec) and ls.kind in "FPGC" for ls in layers)
    assert all(len(ls.args) == (4 if ls.kind in "FP" else 1) for ls in layers)


_BUILD_CASES = [
    pytest.param(n, marks=pytest.mark.xfail(reason=NOT_BUILDABLE[n], raises=SpecError, strict=True))
    if n in NOT_BUILDABLE else n
    for n in ARCHITECTURES
]


@pytest.mark.parametrize("name", _BUILD_CASES)
def test_every_architecture_builds_on_its_native_input(name):
    model = DCGMM(name)
    _, native = resolve_architecture(name)
    assert model.input_shape == native
    assert model.spec() == format_spec(parse_spec(name))
    assert model.config.name == name
    shape = native
    for layer, ls in zip(model.layers, parse_spec(name)):
        assert layer.spec() == str(ls)
        assert layer.input_shape == shape
        shape = layer.output_shape
    assert shape[:2] == (1, 1)          # every paper architecture ends in one top position


def test_short_and_long_notation_give_the_same_layers():
    short = parse_spec("F(8,2)-G(25)-P(2,1)-F(3,1)-G(36,independent)-C(10)")
    long = parse_spec("F(8,8,2,2)-G(25)-P(2,2,1,1)-F(3,3,1,1)-G(36,independent)-C(10)")
    assert short == long
    assert format_spec(short) == "F(8,8,2,2)-G(25)-P(2,2,1,1)-F(3,3,1,1)-G(36,independent)-C(10)"
    assert parse_spec(" f(8, 2) - g(25, Shared) ") == parse_spec("F(8,8,2,2)-G(25)")
    a = DCGMM("F(4,2)-G(9)-F(3,1)-G(4)", (8, 8, 1))
    b = DCGMM("F(4,4,2,2)-G(9)-F(3,3,1,1)-G(4)", (8, 8, 1))
    assert a.spec() == b.spec()
    assert [l.output_shape for l in a.layers] == [l.output_shape for l in b.layers]
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(p, q)


def test_architecture_names_are_case_insensitive():
    assert parse_spec("2l-c") == parse_spec("2L-c")
    assert parse_spec("svhn") == parse_spec(ARCHITECTURES["SVHN"])


@pytest.mark.parametrize("spec, token", [
    ("F(28,1)-X(3)", "X(3)"),
    ("F(8,2-G(25)", "F(8,2"),
    ("F(8,2)-G(25", "G(25"),
    ("F(8.5,2)-G(4)", "F(8.5,2)"),
    ("F(a,2)-G(4)", "F(a,2)"),
    ("F(8,2)-G(0)", "G(0)"),
    ("F(0,1)-G(4)", "F(0,1)"),
    ("F(2,2,2)-G(4)", "F(2,2,2)"),
    ("F(28,1)-C(10)-G(4)", "C(10)"),
    ("F(28,1)", "no GMM layer"),
    ("F(28,1)-P(2,2)", "no GMM layer"),
    ("2L-z", "2L-z"),
    ("G(25,foo)", "foo"),
    ("G(25,independent,3)", "G(25,independent,3)"),
    ("G()", "G()"),
    ("F(28,1)--G(4)", "empty layer"),
    ("G(4)-", "empty layer"),
    ("", "empty model spec"),
    ("C(1)-G(4)", "C(1)"),
])
def test_malformed_specs_raise_spec_error_naming_the_problem(spec, token):
    with pytest.raises(SpecError) as info:
        parse_spec(spec)
    assert token in str(info.value)
    with pytest.raises(SpecError):
        DCGMM(spec, (28, 28, 1))


@pytest.mark.parametrize("spec, shape, layer_no", [
    ("F(3,2)-G(4)", (8, 8, 1), 1),                    # (8 - 3) % 2 != 0
    ("F(9,1)-G(4)", (8, 8, 1), 1),                    # patch larger than the image
    ("F(2,2)-G(4)-F(5,1)-G(4)", (8, 8, 1), 3),        # 4x4 activities, 5x5 patch
    ("F(2,1)-G(4)-P(4,4)-F(3,2)-G(4)", (8, 8, 1), 4),  # 7 -> P 2x2 -> F(3) too large
    ("F(4,2)-G(4)-F(2,2)-G(4)", (8, 8, 1), 3),        # 3x3 activities, (3 - 2) % 2 != 0
    ("G(4)-C(1)", (2, 2, 1), 2),
])
def test_building_a_spec_whose_patches_do_not_fit_names_the_layer(spec, shape, layer_no):
    with pytest.raises(SpecError, match=rf"layer {layer_no} \("):
        DCGMM(spec, shape)


@pytest.mark.parametrize("shape", [(8, 8), (8, 0, 1), (8, 8, 1, 1)])
def test_bad_input_shape_raises_spec_error(shape):
    with pytest.raises(SpecError, match="input_shape"):
        DCGMM("F(2,2)-G(4)", shape)


def test_model_layers_and_gmm_indices():
    m = DCGMM("F(2,2)-G(4)-P(2,2)-F(2,1)-G(9,independent)-C(3)", (8, 8, 1))
    kinds = [type(l) for l in m.layers]
    assert kinds == [Folding, GMM, Pooling, Folding, GMM, Classifier]
    assert m.gmm_indices == [1, 4]
    assert m.gmm_layers[1].independent and m.gmm_layers[1].mu.shape[0] == 1
    assert m.classifier is m.layers[-1]
    with pytest.raises(InputError, match="GMM layer 2"):
        m.log_likelihood(torch.rand(1, 8, 8, 1), layer=2)


# ---------------------------------------------------------------------------------- log_prob
def test_log_prob_is_sum_of_first_layer_position_log_likelihoods(digits):
    images = digits[0][:20]
    model = DCGMM("F(4,4,4,4)-G(9)-F(2,2,1,1)-G(4)", (8, 8, 1), seed=3)
    lp = model.log_prob(images)
    per_pos = model.log_likelihood(images, layer=0, per_position=True)
    assert lp.shape == (20,) and per_pos.shape == (20, 2, 2)
    torch.testing.assert_close(lp, per_pos.flatten(1).sum(1))
    # Independently: four 16-pixel patches scored by the first GMM directly.
    g = model.gmm_layers[0]
    patches = images.reshape(20, 2, 4, 2, 4).permute(0, 1, 3, 2, 4).reshape(20, 2, 2, 16)
    torch.testing.assert_close(lp, g.log_likelihood(patches.unsqueeze(-1).reshape(20, 2, 2, 16))
                               .flatten(1).sum(1))


def test_log_prob_2l_b_is_a_density_of_28x28_images():
    model = DCGMM("2L-b")
    x = torch.rand(3, 28, 28, 1, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.log_prob(x),
                               model.log_likelihood(x, 0, per_position=True).flatten(1).sum(1))


@pytest.mark.parametrize("name", ["1L"])
def test_log_prob_whole_image_patch(name):
    model = DCGMM(name)
    x = torch.rand(2, 28, 28, 1, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.log_prob(x), model.log_likelihood(x, 0))


@pytest.mark.parametrize("spec, shape", [("2L-c", None), ("F(3,1)-G(4)", (8, 8, 1)),
                                         ("P(2,2)-F(4,4)-G(4)", (8, 8, 1))])
def test_log_prob_rejects_models_without_image_density(spec, shape):
    model = DCGMM(spec, shape)
    with pytest.raises(InputError, match="log_likelihood"):
        model.log_prob(torch.rand(2, *model.input_shape))


# ---------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("spec", ["F(4,4,2,2)-G(9)-F(3,3,1,1)-G(4)",
                                  "F(2,2,1,1)-G(4)-P(2,2)-F(3,3,1,1)-G(9,independent)",
                                  "F(8,8,1,1)-G(6)"])
def test_sample_shape_range_and_seed(spec):
    model = DCGMM(spec, (8, 8, 1), seed=1)
    with torch.no_grad():
        for g in model.gmm_layers:           # away from the clamp, so there is noise
            g.mu.uniform_(-0.5, 1.5, generator=torch.Generator().manual_seed(2))
            g.d.fill_(1.0)
    s = model.sample(6, seed=3)
    assert s.shape == (6, 8, 8, 1)
    assert s.min() >= 0.0 and s.max() <= 1.0
    assert (s == 0).any() and (s == 1).any()          # clipping happened: the range is real
    assert torch.equal(s, model.sample(6, seed=3))
    assert not torch.equal(s, model.sample(6, seed=4))
    raw = model.sample(6, seed=3, clip=False)
    assert raw.min() < 0.0 or raw.max() > 1.0
    assert torch.equal(raw.clamp(0, 1), s)


def test_sample_without_noise_is_built_from_centroids():
    model = DCGMM("F(4,4,4,4)-G(3)", (8, 8, 1), seed=0)
    s = model.sample(10, seed=0, divisor=float("inf"), clip=False)
    g = model.gmm_layers[0]
    patches = s.reshape(10, 2, 4, 2, 4).permute(0, 1, 3, 2, 4).reshape(-1, 16)
    hit = (patches.unsqueeze(1) == g.mu.detach()[0].unsqueeze(0)).all(-1)     # (40, 3)
    assert torch.equal(hit.sum(1), torch.ones(40, dtype=torch.long))


def test_sample_argument_checks():
    model = DCGMM("F(4,4,4,4)-G(3)", (8, 8, 1))
    with pytest.raises(InputError, match="samples"):
        model.sample(0)
    with pytest.raises(InputError, match="top_s"):
        model.sample(2, top_s=0)
    with pytest.raises(InputError, match="1 GMM layers"):
        model.sample(2, top_s=[1, 2])
    with pytest.raises(InputError, match="top_s"):
        model.sample(2, top_s="many")
    with pytest.raises(InputError, match="classifier"):
        model.sample(2, labels=[0, 1])


def test_top_s_per_gmm_layer(monkeypatch):
    """A list gives each GMM layer its own S (lowest first); equal values equal the scalar."""
    model = DCGMM("F(2,2,2,2)-G(4)-F(4,4,1,1)-G(5)", (8, 8, 1), seed=1)
    assert model.top_s_per_layer([2, 5]) == {1: 2, 3: 5}
    assert model.top_s_per_layer(3) == {1: 3, 3: 3}
    torch.testing.assert_close(model.sample(6, top_s=[2, 2], seed=3), model.sample(6, top_s=2, seed=3))
    calls = []
    real = GMM.backwards

    def spy(self, control, **kw):
        calls.append(kw["top_s"])
        return real(self, control, **kw)

    monkeypatch.setattr(GMM, "backwards", spy)
    model.sample(2, top_s=[1, 4], seed=0)
    assert calls == [4, 1]  # top layer first


def _conditional_reference(model: DCGMM, labels: torch.Tensor) -> torch.Tensor:
    """Classifier backwards, then every layer's backwards below it, top-1 and no noise."""
    control = model.classifier.backwards(labels)
    for layer in reversed(list(model.layers)[:-1]):
        if isinstance(layer, GMM):
            control = layer.backwards(control, generator=torch.Generator().manual_seed(0),
                                      top_s=1, divisor=float("inf"))
        else:
            control = layer.backwards(control)
    return control


def _random_classifier(model: DCGMM) -> None:
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for g in model.gmm_layers:
            g.mu.uniform_(0, 1, generator=gen)
        model.classifier.linear.weight.normal_(generator=gen)


def test_class_conditional_sampling_on_top_gmm():
    model = DCGMM("F(4,4,2,2)-G(9)-C(3)", (8, 8, 1))
    _random_classifier(model)
    labels = torch.tensor([0, 1, 2, 2, 1])
    s = model.sample(5, labels=labels, top_s=1, divisor=float("inf"), clip=False, seed=0)
    torch.testing.assert_close(s, _conditional_reference(model, labels))
    assert not torch.equal(s[0], s[2])
    with pytest.raises(InputError, match="0..2"):
        model.sample(2, labels=[0, 3])
    with pytest.raises(InputError, match="labels"):
        model.sample(3, labels=[0, 1])


def test_class_conditional_sampling_with_folding_above_top_gmm():
    model = DCGMM("F(2,2,2,2)-G(4)-F(2,2,2,2)-C(3)", (8, 8, 1))
    _random_classifier(model)
    labels = torch.tensor([0, 1, 2, 0])
    s = model.sample(4, labels=labels, top_s=1, divisor=float("inf"), clip=False, seed=0)
    torch.testing.assert_close(s, _conditional_reference(model, labels))


def test_outlier_reference_protocol_specs():
    """The authors' outlier scripts: independent lower GMM layers, D's top G(25), own epochs."""
    from deepmix.experiments.dcgmm_outliers import (ARCHS, REFERENCE_PROTOCOL, protocol_epochs,
                                                    protocol_spec, protocol_train_options)
    from deepmix.models import DCGMM

    assert protocol_spec("E") == resolve_architecture("E")[0]
    assert protocol_spec("E", "reference") == (
        "F(3,3,1,1)-G(25,independent)-F(4,4,2,2)-G(25,independent)-F(12,12,1,1)-G(49)")
    assert protocol_spec("D", "reference").endswith("F(5,5,1,1)-G(25)")
    assert protocol_spec("A", "reference") == "F(28,28,1,1)-G(49)"
    for arch in ARCHS:
        model = DCGMM(protocol_spec(arch, "reference"))
        flags = [g.independent for g in model.gmm_layers]
        assert [i for i, f in enumerate(flags) if f] == list(REFERENCE_PROTOCOL[arch][0])
        # The top GMM sees one position, so the topmost layer is never made independent.
        assert model.gmm_layers[-1].input_shape[:2] == (1, 1) and not flags[-1]
    assert protocol_epochs("C", "reference") == 15 and protocol_epochs("C") == 25
    # Their layer settings: A learns variances and weights faster, F and G keep uniform weights.
    assert protocol_train_options("A", "reference") == {"lr_d": 0.5, "lr_xi": 0.5}
    assert protocol_train_options("F", "reference") == {"lr_xi": 0.0}
    assert protocol_train_options("E", "reference") == {} and protocol_train_options("A") == {}
    with pytest.raises(ValueError, match="protocol"):
        protocol_spec("A", "paper")


def test_trained_model_cache_keys_on_training_options(tmp_path):
    """A cached run is reused only for the same training options, never for different ones."""
    from deepmix.experiments.dcgmm_papers import trained_model

    kw = dict(classes=[0], epochs=1, batch_size=50, cache=tmp_path)
    plain, secs = trained_model("F(4,4,4,4)-G(3)-F(2,2,1,1)-G(2)", "digits", **kw)
    assert secs > 0
    again, secs = trained_model("F(4,4,4,4)-G(3)-F(2,2,1,1)-G(2)", "digits", **kw)
    assert secs == 0.0
    torch.testing.assert_close(again.gmm_layers[0].mu, plain.gmm_layers[0].mu)
    uniform, secs = trained_model("F(4,4,4,4)-G(3)-F(2,2,1,1)-G(2)", "digits", lr_xi=0.0, **kw)
    assert secs > 0 and len(list(tmp_path.iterdir())) == 2
    # lr_xi = 0 keeps the mixture weights uniform, unlike the cached default run.
    pi = torch.softmax(uniform.gmm_layers[0].xi, dim=-1)
    torch.testing.assert_close(pi, torch.full_like(pi, 1 / 3))
    _, secs = trained_model("F(4,4,4,4)-G(3)-F(2,2,1,1)-G(2)", "digits", lr_xi=0.0, **kw)
    assert secs == 0.0
    with pytest.raises(ConfigError, match="lr_zz"):
        trained_model("F(4,4,4,4)-G(3)", "digits", lr_zz=0.0, **kw)
    with pytest.raises(ConfigError, match="lr_xi must be a number"):
        trained_model("F(4,4,4,4)-G(3)", "digits", lr_xi="0", **kw)


def test_trained_model_retrains_interrupted_or_foreign_cached_runs(tmp_path):
    """The cache never hands back a run that stopped early or was trained otherwise."""
    import shutil

    from deepmix.data import load_images
    from deepmix.experiments.dcgmm_papers import trained_model
    from deepmix.training import TrainConfig, train

    spec, kw = "F(4,4,4,4)-G(3)", dict(classes=[0], epochs=2, batch_size=50)
    trained_model(spec, "digits", cache=tmp_path / "a", **kw)
    (run,) = (tmp_path / "a").iterdir()
    # An interrupted run in its place (its config already names the target epochs).
    shutil.rmtree(run)
    train(DCGMM(spec, input_shape=(8, 8, 1)),
          load_images("digits", "train", classes=[0]).to_tensor(),
          config=TrainConfig(epochs=2, batch_size=50), out_dir=run, progress=False,
          stop_after_steps=1, data_info={"name": "digits", "split": "train", "classes": [0]})
    assert trained_model(spec, "digits", cache=tmp_path / "a", **kw)[1] > 0
    assert trained_model(spec, "digits", cache=tmp_path / "a", **kw)[1] == 0.0
    # A run with other options under the default name (as written before options named it).
    trained_model(spec, "digits", cache=tmp_path / "b", lr_xi=0.0, **kw)
    shutil.rmtree(run)
    shutil.copytree(next((tmp_path / "b").iterdir()), run)
    assert trained_model(spec, "digits", cache=tmp_path / "a", **kw)[1] > 0
