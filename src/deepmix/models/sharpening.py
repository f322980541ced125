r"""Gradient sharpening of control signals (DCGMM papers, Sec. III-I / II-B3).

Folding (with overlap) and Pooling layers are not invertible: their backward maps average
overlapping patches or up-sample, which blurs. Sharpening corrects the backward output
:math:`X_0` of such a layer by gradient ascent on

.. math:: J(X) = \frac{1}{P}\sum_{hw} \ell_\sigma^{(L')}\big(f(X)\big)_{hw}
                 - w_{rec}\, \frac{1}{|X|}\lVert X - X_0 \rVert^2,

where :math:`f` forwards :math:`X` up to a higher GMM layer :math:`L'` (default: the next one up)
and :math:`\ell_\sigma` is that layer's training loss at its current sigma. Each sample's
objective is its own mean over positions, so the step does not depend on the batch size. The
reference code ascends the *batch* mean instead, so its rate :math:`\epsilon` at batch size B is
:math:`\epsilon / B` here. The defaults (300 steps at rate 0.01) are the paper's Fig. 5 setting
(rate 1.0, 300 steps) at a batch of 100. Much larger products of rate and steps pull faint
strokes into the background component and erase them; the reconstruction term's weight has the
reference's meaning (its 0-0.1 barely restrains the ascent).

Sharpening is a model-level operation on layers, used by :meth:`DCGMM.sample` (``sharpen=``), so
it lives in :mod:`deepmix.models`; :mod:`deepmix.inference.sharpening` re-exports it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterator, Sequence

import torch

from ..errors import InputError
from ..layers import Folding, Pooling

__all__ = ["Sharpening", "sharpen", "sharpening_hook", "sharpening_objective"]


@dataclass
class Sharpening:
    """Options of sharpening during sampling.

    Arguments:
        iterations: gradient-ascent steps per sharpened layer (reference 100-300).
        rate: step size on each sample's own objective: the reference's rate divided by its
            batch size (reference 0.1-0.2, the paper's Fig. 5 1.0, both at batch 100).
        w_rec: weight of the reconstruction term keeping X near the unsharpened signal.
        target: GMM layer whose loss is raised, as a GMM number (0-based, negative from the
            top); ``None``: the next GMM layer above each sharpened layer.
        layers: indices (into ``model.layers``) of the Folding/Pooling layers to sharpen;
            ``None``: every Folding/Pooling layer with a GMM layer above it.
    """

    iterations: int = 300
    rate: float = 0.01
    w_rec: float = 0.0
    target: int | None = None
    layers: Sequence[int] | None = None

    def __post_init__(self) -> None:
        if int(self.iterations) < 0:
            raise InputError(f"sharpening iterations must be >= 0, got {self.iterations}")
        if not float(self.rate) > 0:
            raise InputError(f"sharpening rate must be > 0, got {self.rate}")
        if not float(self.w_rec) >= 0:
            raise InputError(f"sharpening w_rec must be >= 0, got {self.w_rec}")

    @classmethod
    def coerce(cls, value: Any) -> "Sharpening | None":
        """None/False -> None, True -> defaults, dict -> fields, Sharpening -> itself."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise InputError(f"unknown sharpening option(s) {unknown}; known: {sorted(known)}")
            return cls(**value)
        raise InputError(f"sharpen must be True, a dict or a Sharpening, got {type(value).__name__}")


@contextlib.contextmanager
def _frozen(model: torch.nn.Module) -> Iterator[None]:
    """Parameters stop requiring gradients (only the input is optimised), then are restored."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _target_index(model: Any, layer: int, target: int | None) -> int:
    above = [i for i in model.gmm_indices if i > layer]
    if not above:
        raise InputError(f"layer {layer} ({model.layers[layer].spec()}) has no GMM layer above it "
                         f"to sharpen against")
    if target is None:
        return above[0]
    idx = model._gmm_layer_index(target)
    if idx <= layer:
        raise InputError(f"sharpening target GMM {target} (layer {idx}) must lie above layer "
                         f"{layer}")
    return idx


def sharpening_objective(model: Any, x: torch.Tensor, layer: int, target: int) -> torch.Tensor:
    r"""Per-sample mean :math:`\ell_\sigma` of GMM layer ``target`` for ``x`` entering ``layer``, (N,)."""
    h = x
    for i in range(layer, target):
        h = model.layers[i](h)
    return model.layers[target].annealed_loss(h).flatten(1).mean(1)


def sharpen(model: Any, x0: torch.Tensor, layer: int, *, target: int | None = None,
            iterations: int = 300, rate: float = 0.01, w_rec: float = 0.0) -> torch.Tensor:
    """Sharpen ``x0``, the backward output of Folding/Pooling layer ``layer`` (its input space).

    Arguments:
        model: a :class:`~deepmix.models.DCGMM`.
        x0: (N, H, W, C) tensor shaped like the input of ``model.layers[layer]``.
        layer: index into ``model.layers`` of a Folding or Pooling layer.
        target: GMM number (0-based, negative from the top) whose loss is raised; default the
            next GMM layer above ``layer``.
        iterations, rate, w_rec: gradient ascent steps, step size, reconstruction weight.

    Returns the sharpened tensor (no gradient attached), kept in [0, 1] like every activity.
    """
    if not 0 <= layer < len(model.layers) or not isinstance(model.layers[layer], (Folding, Pooling)):
        raise InputError(f"sharpening applies to Folding or Pooling layers; layer {layer} is "
                         f"{model.layers[layer].spec() if 0 <= layer < len(model.layers) else 'missing'}")
    shape = tuple(model.layers[layer].input_shape)
    if x0.dim() != 4 or tuple(x0.shape[1:]) != shape:
        raise InputError(f"x0 must be (N, {', '.join(map(str, shape))}) for layer {layer}, got "
                         f"{tuple(x0.shape)}")
    tgt = _target_index(model, layer, target)
    x0 = x0.detach()
    x = x0.clone()
    with _frozen(model), torch.enable_grad():
        for _ in range(int(iterations)):
            x.requires_grad_(True)
            j = sharpening_objective(model, x, layer, tgt).sum()
            if w_rec:
                j = j - w_rec * (x - x0).pow(2).flatten(1).mean(1).sum()
            (grad,) = torch.autograd.grad(j, x)
            # Every activity of a DCGMM (pixels scaled to [0, 1], responsibilities, their
            # maxima) lies in [0, 1]: staying there keeps a too-large step from overshooting
            # the concave objective into inf/NaN.
            x = (x + rate * grad).clamp_(0.0, 1.0).detach()
    return x


def sharpening_hook(model: Any, options: Any) -> Callable[[int, torch.Tensor], torch.Tensor] | None:
    """A ``refine`` callback for :meth:`DCGMM.top_down` (None when sharpening is off)."""
    opts = Sharpening.coerce(options)
    if opts is None or opts.iterations == 0:
        return None
    eligible = {i for i, l in enumerate(model.layers)
                if isinstance(l, (Folding, Pooling)) and any(g > i for g in model.gmm_indices)}
    chosen = eligible if opts.layers is None else set(int(i) for i in opts.layers)
    bad = sorted(chosen - eligible)
    if bad:
        raise InputError(f"cannot sharpen layer(s) {bad}: only Folding/Pooling layers with a GMM "
                         f"layer above can be sharpened ({sorted(eligible)})")
    # A Folding layer that is a pure reshape loses nothing: sharpening it would be a no-op pass.
    chosen = {i for i in chosen if not getattr(model.layers[i], "_is_reshape", False)}

    def refine(i: int, x: torch.Tensor) -> torch.Tensor:
        if i not in chosen:
            return x
        return sharpen(model, x, i, target=opts.target, iterations=opts.iterations,
                       rate=opts.rate, w_rec=opts.w_rec)

    return refine
