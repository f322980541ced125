"""The shared per-position affine tail (models/deep_gmm/tail.py): scoring all tail paths by one
quadratic form equals tree enumeration, in value, argmax, normalisation and gradient."""

from __future__ import annotations

import pytest
import torch

from deepmix.models import DeepGMM, DeepGMMConfig

D64 = torch.float64


def _net(shape, fold_, layers, seed=0, **kw) -> DeepGMM:
    m = DeepGMM(DeepGMMConfig(shape=shape, fold=fold_, layers=layers, **kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return m


@pytest.mark.parametrize("layers,start", [("hc3,bd4,bd4", 1), ("bd2,diag3,bd2", 0),
                                          ("hc3,bd2,hc3,bd2,bd3", 3), ("bd4,hc3", None),
                                          ("hc3,bd4", None), ("ubd2,bd2", None),
                                          ("bd2,ubd2,bd2", None)])
def test_the_tail_is_the_longest_shared_per_position_suffix(layers, start):
    assert _net((4, 4, 1), 2, layers).tail_start == start


def test_a_gated_model_has_no_tail():
    assert _net((4, 4, 1), 2, "hc3,bd2,bd2", prior="gating").tail_start is None


@pytest.mark.parametrize("layers,prior", [("hc3,bd2,hc3,bd2,bd3", "uniform"),
                                          ("bd3,diag2,bd2", "uniform"),
                                          ("hc3,bd2,diag2,bd3", "factorised")])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_tail_scores_equal_tree_enumeration(layers, prior, dtype):
    m = _net((4, 4, 1), 2, layers, seed=3, prior=prior, dtype=dtype)
    assert m.tail_start is not None
    x = torch.randn(40, 16, generator=torch.Generator().manual_seed(4),
                    dtype=getattr(torch, dtype))
    h0 = m.fold(m.check_input(x))
    with torch.no_grad():
        c1, s1, l1 = m._enumerate(h0)
        c2, s2, l2 = m._enumerate(h0, use_tail=False)
        rescored = m.score_folded(h0, c1)
    tol = 1e-9 if dtype == "float64" else 2e-3
    assert torch.allclose(s1, s2, rtol=0, atol=tol)
    assert torch.allclose(l1, l2, rtol=0, atol=tol)
    assert torch.allclose(rescored, s1, rtol=0, atol=tol)
    assert bool((c1 == c2).all()) or dtype == "float32"


def test_a_tail_model_integrates_to_one():
    m = _net((1, 1, 2), 1, "bd2,diag3,bd2", seed=5)
    assert m.tail_start == 0
    t = torch.linspace(-12, 12, 500, dtype=D64)
    xx, yy = torch.meshgrid(t, t, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    with torch.no_grad():
        mass = m.log_prob(pts).exp().sum() * (t[1] - t[0]) ** 2
    assert abs(float(mass) - 1.0) < 1e-3


def test_tail_gradient_equals_tree_gradient():
    m = _net((4, 4, 1), 2, "hc3,bd2,bd3", seed=6, prior="factorised")
    x = torch.randn(10, 16, generator=torch.Generator().manual_seed(7), dtype=D64)
    grads = []
    for use_tail in (True, False):
        m.zero_grad()
        m._enumerate(m.fold(m.check_input(x)), use_tail=use_tail)[2].sum().backward()
        grads.append([torch.zeros_like(p) if p.grad is None else p.grad.clone()
                      for p in m.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-9)


def test_cached_composites_follow_parameter_updates():
    m = _net((4, 4, 1), 2, "bd3,bd3", seed=8)
    x = torch.randn(20, 16, generator=torch.Generator().manual_seed(9), dtype=D64)
    before = m.log_prob(x).detach()
    with torch.no_grad():
        m.layers[1].bias.add_(0.5)         # in place, as an optimiser step does
    after = m.log_prob(x).detach()
    with torch.no_grad():
        tree = m._enumerate(m.fold(m.check_input(x)), use_tail=False)[2]
    assert not torch.allclose(before, after)
    assert torch.allclose(after, tree, rtol=0, atol=1e-9)


def test_caches_follow_the_fused_adam_of_the_training_loop():
    # Fused Adam writes parameters without bumping their version counters; the library's
    # adam() bumps them, so caches built before training are not served after it.
    m = _net((4, 4, 1), 2, "hc3,bd3,bd3", seed=3)
    x = torch.randn(200, 16, generator=torch.Generator().manual_seed(4), dtype=D64)
    with torch.no_grad():
        before = m.log_prob(x)                      # builds the log-det and tail caches
    m.fit(x, objective="mle", lr=1e-2, epochs=2, batch_size=50, seed=0, progress=False,
          initialize=False)
    with torch.no_grad():
        cached = m.log_prob(x)
        m._tail_cache = None
        for layer in m.layers:
            layer._cache = None
        fresh = m.log_prob(x)
    assert not torch.allclose(before, cached)
    assert torch.allclose(cached, fresh, rtol=0, atol=1e-9)


def test_the_library_adam_bumps_version_counters():
    from deepmix.training.objectives.base import adam
    p = torch.nn.Parameter(torch.zeros(4))
    opt = adam([p], lr=0.1)
    for step in range(1, 4):
        opt.zero_grad()
        (p * torch.arange(4.0)).sum().backward()
        opt.step()
        assert p._version == step
