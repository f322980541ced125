"""Circuit fast paths equal their reference paths: fused leaf regions (one batched matmul over
exponential-family features), EM statistics from natural-parameter gradients, the fused inner
layers; log-densities, parameter gradients and EM updates within float tolerance."""

from __future__ import annotations

import pytest
import torch

from deepmix.models import EinsumNetwork, RegionGraph, poon_domingos, rat_spn

F64 = torch.float64


def _randomise(model: EinsumNetwork, seed: int) -> EinsumNetwork:
    """Random weights and leaves far from their initial values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.5 if name in ("var_raw", "prob_raw") else 1.0
            p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=F64).to(p.dtype))
    return model


def _uneven_graph() -> RegionGraph:
    """Leaf regions of different sizes, two replicas, a region with three partitions and a
    partition whose children have different heights (a leaf next to an inner region)."""
    scopes = [(0, 1, 2, 3, 4), (0,), (1, 2, 3, 4), (1, 2), (3, 4), (0, 1, 2), (3, 4),
              (0, 1), (2,), (0, 1, 2, 3), (4,), (0, 1, 2), (3,)]
    partitions = [(0, 1, 2), (2, 3, 4), (0, 5, 6), (5, 7, 8), (0, 9, 10), (9, 11, 12)]
    replicas = {1: 0, 3: 0, 4: 0, 6: 1, 7: 1, 8: 1, 10: 2, 11: 2, 12: 2}
    return RegionGraph(5, scopes, partitions, root=0, replicas=replicas)


CASES = {
    "rat-gauss": lambda: rat_spn(12, 2, 3, 4, dtype=F64),
    "rat-gauss-2ch": lambda: rat_spn(6, 2, 2, 3, num_dims=2, dtype=F64),
    "rat-k-leaf": lambda: rat_spn(10, 2, 2, 3, 5, dtype=F64),
    "pd-gauss": lambda: poon_domingos(4, 4, [2, 1], 3, dtype=F64),
    "rat-binomial": lambda: rat_spn(8, 2, 2, 3, leaf="binomial", total_count=7, dtype=F64),
    "uneven": lambda: EinsumNetwork(_uneven_graph(), 3, 2, dtype=F64),
}


def _data(model: EinsumNetwork, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    shape = (n, model.num_var * model.num_dims)
    if model.leaf == "binomial":
        return torch.randint(0, model.total_count + 1, shape, generator=gen).to(F64)
    return torch.randn(shape, generator=gen, dtype=F64)


@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_log_prob_and_marginals_equal_the_reference(case):
    model = _randomise(CASES[case](), 0)
    x = _data(model, 7, 1)
    torch.testing.assert_close(model.log_prob(x), model._log_prob_reference(x), rtol=1e-12, atol=1e-10)
    mask = torch.rand(7, model.num_var, generator=torch.Generator().manual_seed(2)) < 0.6
    torch.testing.assert_close(model.log_prob(x, mask), model._log_prob_reference(x, mask),
                               rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_gradients_equal_the_reference(case):
    model = _randomise(CASES[case](), 3)
    x = _data(model, 6, 4)
    params = list(model.parameters())
    fast = torch.autograd.grad(model.log_prob(x).sum(), params)
    ref = torch.autograd.grad(model._log_prob_reference(x).sum(), params)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("stepsize", [None, 0.3])
def test_em_statistics_and_updates_equal_the_reference(case, stepsize):
    fast, ref = _randomise(CASES[case](), 5), _randomise(CASES[case](), 5)
    for seed in (6, 7):  # two steps: the second E-step sees updated parameters
        x = _data(fast, 9, seed)
        torch.testing.assert_close(fast.em_accumulate(x), ref._em_accumulate_reference(x),
                                   rtol=1e-12, atol=1e-10)
        assert fast._em_stats.keys() == ref._em_stats.keys()
        for k in ref._em_stats:
            torch.testing.assert_close(fast._em_stats[k], ref._em_stats[k], rtol=1e-10, atol=1e-10)
        fast.em_update(stepsize)
        ref.em_update(stepsize)
        for (n, a), (_, b) in zip(fast.state_dict().items(), ref.state_dict().items()):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=n)


def test_float32_fused_path_is_within_float_tolerance_on_image_like_data():
    """784 dims, small variances near the data (a trained circuit): the exponential-family
    form in float32 stays within 1e-5 relative of the float64 reference."""
    m = rat_spn(784, 3, 5, 10, max_var=1.0)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(60, 784, generator=gen)
    with torch.no_grad():
        m.mean.copy_(x[:50].reshape(5, 10, 784).permute(2, 0, 1)[..., None])
        m.var_raw.fill_(-7.0)                      # variances about 1e-3
    m64 = rat_spn(784, 3, 5, 10, max_var=1.0, dtype=F64)
    m64.load_state_dict(m.state_dict())
    xx = x[:50] + 0.02 * torch.randn(50, 784, generator=gen)
    ref = m64._log_prob_reference(xx.double())
    with torch.no_grad():
        fast = m.log_prob(xx).double()
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-2)


@pytest.mark.parametrize("case", sorted(CASES))
def test_slot_major_layers_keep_the_reference_values(case):
    """The values conditional sampling reads (every store and partition store) are the
    reference's, in the reference's (N, slots, K) layout."""
    model = _randomise(CASES[case](), 8)
    x = model._prepare(_data(model, 5, 9))[0]
    leaf = model._leaf_regions(x)                                                # (L, N, K)
    w = model._weights()
    out, kept = model._inner(leaf, w, keep=True)
    ref_out, ref = model._inner_reference(leaf.transpose(0, 1), w, keep=True)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-10)
    for k in ref["store"]:
        torch.testing.assert_close(kept["store"][k], ref["store"][k], rtol=1e-12, atol=1e-10)
    for a, b in zip(kept["parts"], ref["parts"]):
        for k in b:
            torch.testing.assert_close(a[k], b[k], rtol=1e-12, atol=1e-10)


def test_input_check_by_sum_still_tells_finite_from_nonfinite():
    """The one-pass finite check (a finite sum) falls back to the exact one: huge finite
    values whose float32 sum overflows are accepted, NaN and inf are refused."""
    from deepmix.errors import InputError
    m = rat_spn(8, 2, 2, 3)
    x = torch.full((4, 8), 3e38)
    assert torch.isinf(x.sum())
    m.log_prob(x)                                   # no error: every entry is finite
    for bad in (float("nan"), float("inf")):
        y = torch.zeros(4, 8)
        y[1, 2] = bad
        with pytest.raises(InputError):
            m.log_prob(y)
