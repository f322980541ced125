r"""Variant generation from template images (DCGMM paper II-B6, eq. 10).

A template is forwarded in estimation mode; the responsibilities :math:`A^{(r)}` of GMM layer
:math:`r` become its control signal and sampling continues down the chain as usual. With
``keep_above`` :math:`\hat L`, every GMM layer numbered :math:`\ge \hat L` uses the template's
own activities instead of the control signal from above (eq. 10): ``keep_above=0`` reproduces the
template most closely; no ``keep_above`` gives the most diverse variants.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..errors import InputError

__all__ = ["variants"]


@torch.no_grad()
def variants(model: Any, templates: Any, *, n_per_template: int = 1, layer: int = -1,
             keep_above: int | None = None, top_s: int | Sequence[int] = 1,
             divisor: float = 10.0,
             pooling: str = "dense", sharpen: Any = None, seed: int | None = 0,
             generator: torch.Generator | None = None, clip: bool = True) -> torch.Tensor:
    """Images similar to ``templates``: (N * n_per_template, H, W, C), template-major.

    Arguments:
        model: a trained :class:`~deepmix.models.DCGMM`.
        templates: (N, H, W, C) images in [0, 1].
        n_per_template: variants drawn per template.
        layer: GMM number r (0-based, negative from the top) whose responsibilities start the
            backward pass.
        keep_above: :math:`\\hat L` of eq. 10 (a GMM number); GMM layers numbered at or above it
            (and at or below ``layer``) use the template's activities as control signal.
        top_s, divisor, pooling, sharpen, seed, generator, clip: as in :meth:`DCGMM.sample`.
    """
    if int(n_per_template) < 1:
        raise InputError(f"n_per_template must be >= 1, got {n_per_template}")
    x = model.check_images(templates)
    start = model._gmm_layer_index(layer)
    numbers = {idx: pos for pos, idx in enumerate(model.gmm_indices)}
    kept: set[int] = set()
    if keep_above is not None:
        n_gmm = len(model.gmm_indices)
        k = int(keep_above) + (n_gmm if int(keep_above) < 0 else 0)
        if not 0 <= k < n_gmm:
            raise InputError(f"keep_above must name a GMM layer 0..{n_gmm - 1}, got {keep_above}")
        kept = {idx for idx, pos in numbers.items() if pos >= k and idx <= start}
    x = x.repeat_interleave(int(n_per_template), dim=0)
    outs = model.activations(x, upto=start)

    def fuse(i: int, t: torch.Tensor | None) -> torch.Tensor | None:
        return outs[i] if (i == start or i in kept) else t

    from .sharpening import sharpening_hook

    gen = model._generator(generator, seed)
    out = model.top_down(None, start, n=x.shape[0], top_s=top_s, divisor=divisor,
                         pooling=pooling, generator=gen, fuse=fuse,
                         refine=sharpening_hook(model, sharpen))
    return out.clamp(0.0, 1.0) if clip else out
