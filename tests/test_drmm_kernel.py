"""The C++ drmm-em step (training/objectives/drmm_kernel.py) equals the autograd path."""

from __future__ import annotations

import pytest
import torch

from deepmix.models import DRMM, DRMMConfig
from deepmix.training.objectives import drmm_kernel, make_objective
from deepmix.training.objectives.base import LoopInfo

pytestmark = pytest.mark.skipif(drmm_kernel.kernel() is None,
                                reason="no C++ compiler: the kernel is not built")


def _bound(m: DRMM, data: torch.Tensor, batch: int, steps: int):
    gen = torch.Generator().manual_seed(0)
    obj = make_objective("drmm", "drmm-em", {"init_batch": 256})
    obj.start(m, data, gen)
    obj.bind(m, LoopInfo(n=data.shape[0], batch_size=batch, steps_per_epoch=steps, epochs=1,
                         seed=0, device=torch.device("cpu")))
    return obj, gen


def _train(kernel: bool, monkeypatch, *, steps=30, **config):
    """Losses and final parameters of ``steps`` drmm-em steps (rho_E and lr run their whole
    schedules), through the kernel or the autograd path."""
    monkeypatch.setattr(drmm_kernel, "MAX_WORK", 1 << 30 if kernel else 0)
    dtype = getattr(torch, config.get("dtype", "float32"))
    data = torch.randn(1024, config["n_features"], generator=torch.Generator().manual_seed(3),
                       dtype=dtype) * torch.linspace(0.5, 2.0, config["n_features"], dtype=dtype)
    m = DRMM(DRMMConfig(**config))
    obj, gen = _bound(m, data, 64, steps)
    losses = [obj.step(m, data[i * 64 % 1024:][:64], generator=gen, step=i)
              for i in range(steps)]
    return torch.stack(losses), {k: v.clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("sigma", ["scalar", "diagonal"])
@pytest.mark.parametrize("L,K,D", [(1, 3, 2), (3, 8, 5), (4, 5, 3)])
def test_float64_training_follows_the_autograd_path(monkeypatch, sigma, L, K, D):
    config = dict(n_features=D, n_components=K, n_layers=L, sigma=sigma, dtype="float64")
    fast, fast_state = _train(True, monkeypatch, **config)
    ref, ref_state = _train(False, monkeypatch, **config)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-9)
    for k in ref_state:
        torch.testing.assert_close(fast_state[k], ref_state[k], rtol=1e-9, atol=1e-10, msg=k)
    assert not torch.equal(fast_state["layers.0.logits"], torch.zeros(K, dtype=torch.float64))


@pytest.mark.parametrize("alpha", [0.0, 0.01, 0.5])
def test_float32_loss_and_gradients_equal_autograd(alpha):
    """One step's loss and every gradient, against autograd on the same float32 model."""
    torch.manual_seed(0)
    m = DRMM(DRMMConfig(n_features=4, n_components=6, n_layers=3))
    x = torch.randn(300, 4, generator=torch.Generator().manual_seed(1))
    m.initialize(x, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(4)))
    obj = make_objective("drmm", "drmm-em", {"alpha": alpha})
    ref = obj.layer_losses(m, x, 0.4)
    params = drmm_kernel.eligible(m, x)
    assert params is not None
    ref_grads = torch.autograd.grad(ref, params)
    out = drmm_kernel.loss_and_gradients(m, x, params, 0.4, alpha)
    assert out is not None
    loss, grads = out
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-6, atol=1e-4)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


def test_what_the_kernel_does_not_take_goes_to_autograd(monkeypatch):
    x = torch.randn(64, 3)
    flat = DRMM(DRMMConfig(n_features=3, n_components=4, n_layers=2))
    assert drmm_kernel.eligible(flat, x) is not None
    cat = DRMM(DRMMConfig(n_features=3, n_components=4, n_layers=2, categorical=(3,)))
    assert drmm_kernel.eligible(cat, torch.randn(64, 6)) is None        # categorical data
    assert drmm_kernel.eligible(flat, x.double()) is None                 # dtype mismatch
    assert drmm_kernel.eligible(flat, x[:0]) is None                      # empty shard
    obj = make_objective("drmm", "drmm-em", {})
    mask = torch.ones_like(x)
    mask[0, 0] = 0
    assert obj._kernel_step(flat, x, mask, 0.01, False) is None           # a real mask
    assert obj._kernel_step(flat, x, None, 0.01, True) is None            # end to end
    nan = x.clone()
    nan[3, 1] = float("nan")
    obj._now = (1.0, 0.01)
    assert obj._kernel_step(flat, nan, None, 0.01, False) is None         # NaN: autograd's call
    with torch.no_grad():
        flat.layers[1].streams[0].mu[2, 0] = float("nan")     # a NaN that never wins a max
    assert obj._kernel_step(flat, x, None, 0.01, False) is None
    flat = DRMM(DRMMConfig(n_features=3, n_components=4, n_layers=2))
    assert obj._kernel_step(flat, x, torch.ones_like(x), 0.01, False) is not None
    flat.layers[0].logits.requires_grad_(False)                          # frozen: autograd's
    assert drmm_kernel.eligible(flat, x) is None
    monkeypatch.setenv("DEEPMIX_FUSED", "0")
    assert drmm_kernel.kernel() is None and drmm_kernel.eligible(flat, x) is None


def test_threads_do_not_change_the_result():
    """Rows are spread over threads above 2M multiply-adds a layer; every sum over rows runs in
    row order, so 1 and 2 threads give the same bits."""
    m = DRMM(DRMMConfig(n_features=6, n_components=64, n_layers=3))
    x = torch.randn(300, 6, generator=torch.Generator().manual_seed(1))
    m.initialize(x, generator=torch.Generator().manual_seed(2))
    params = drmm_kernel.eligible(m, x)
    before = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            outs.append(drmm_kernel.loss_and_gradients(m, x, params, 0.7, 0.01))
    finally:
        torch.set_num_threads(before)
    (l1, g1), (l2, g2) = outs
    assert torch.equal(l1, l2) and all(torch.equal(a, b) for a, b in zip(g1, g2))
