r"""Exact scores of every path through a tail of shared, per-position affine layers at once.

When the last layers of a deep GMM are shared block-diagonal or diagonal maps (one choice per
layer, each acting on every position separately), each tail path q composes to one affine map
per position, :math:`h_p \mapsto A_{q,p} h_p + t_{q,p}`. Its Gaussian term expands into
sufficient statistics of the activity entering the tail:

.. math:: \sum_p \lVert A_{q,p} h_p + t_{q,p}\rVert^2
          = \sum_p h_p^\top M_{q,p} h_p + 2\,g_{q,p}^\top h_p + \lVert t_{q,p}\rVert^2,
   \qquad M = A^\top A,\; g = A^\top t,

so the scores of all Q tail paths are one matrix product of the packed features
:math:`[h_{p,i} h_{p,j}]_{i \le j}, h_p` (P·Cb(Cb+3)/2 per sample) with a (features, Q) weight
matrix, instead of the :math:`\sum_l \prod_{j \le l} n_j` layer applications of tree
enumeration. It is hand-written because it changes the algorithm (no library offers it); the
deep GMM's ``_enumerate`` stays the reference it is tested against.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ...utils.blas import fast_matmul
from .transforms import DiagonalTransform, SharedBlockTransform, Transform

__all__ = ["AffineTail", "tail_start"]

_LOG_2PI = math.log(2.0 * math.pi)
# Largest number of elements of the composite maps (Q x P x Cb x Cb) worth building.
_MAX_COMPOSITE = 1 << 26


def _blocks(layer: Transform) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, P, Cb, Cb) blocks and (n, P, Cb) biases of a shared per-position layer."""
    if isinstance(layer, DiagonalTransform):
        return torch.diag_embed(layer.log_scale.exp()), layer.bias
    return layer.weight, layer.bias


def tail_start(layers: Any, gating: bool) -> int | None:
    """Index of the first layer of the longest suffix of shared per-position affine layers
    when it holds at least two mixing layers and its composite maps fit in memory, else None
    (gates score every layer's activity, so a gated model has no tail)."""
    if gating:
        return None
    start = len(layers)
    while start > 0 and isinstance(layers[start - 1], (SharedBlockTransform, DiagonalTransform)):
        start -= 1
    tail = list(layers)[start:]
    if sum(layer.n_values > 1 for layer in tail) < 2:
        return None
    q = math.prod(layer.n_values for layer in tail)
    if q * tail[0].P * tail[0].Cb ** 2 > _MAX_COMPOSITE:
        return None
    return start


class AffineTail:
    """Every path through ``layers`` (a shared per-position affine suffix) as one quadratic
    form of the entering activity.

    ``log_weights`` are each layer's (n,) log prior weights or None. Attributes: ``combos``
    (Q, T) the value of each tail layer per tail path (earlier layers vary slower, as in tree
    enumeration), ``const`` (Q,) the summed log-determinants and log prior weights.
    """

    def __init__(self, layers: list[Transform], log_weights: list[torch.Tensor | None]) -> None:
        first = layers[0]
        P, Cb = first.P, first.Cb
        like = first.logdet_table()
        A = torch.eye(Cb, dtype=like.dtype, device=like.device).expand(1, P, Cb, Cb)
        t = like.new_zeros(1, P, Cb)
        const = like.new_zeros(1)
        combos = torch.zeros(1, 0, dtype=torch.long, device=like.device)
        for layer, lw in zip(layers, log_weights):
            W, b = _blocks(layer)
            n, Q = layer.n_values, A.shape[0]
            A = torch.einsum("vpij,qpjk->qvpik", W, A).reshape(Q * n, P, Cb, Cb)
            t = (torch.einsum("vpij,qpj->qvpi", W, t) + b[None]).reshape(Q * n, P, Cb)
            add = layer.logdet_table() if lw is None else layer.logdet_table() + lw
            const = (const[:, None] + add[None]).reshape(Q * n)
            combos = torch.cat([combos.repeat_interleave(n, 0),
                                torch.arange(n, device=like.device).repeat(Q)[:, None]], 1)
        self.combos, self.P, self.Cb = combos, P, Cb
        self.const = const - 0.5 * (t * t).sum((1, 2)) - 0.5 * P * Cb * _LOG_2PI
        iu = torch.triu_indices(Cb, Cb, device=like.device)
        M = torch.einsum("qpki,qpkj->qpij", A, A)[:, :, iu[0], iu[1]]       # (Q, P, T)
        # Off-diagonal products appear twice in h^T M h.
        M = M * torch.where(iu[0] == iu[1], 1.0, 2.0).to(M.dtype)
        g = torch.einsum("qpki,qpk->qpi", A, t)                              # (Q, P, Cb)
        # -1/2 (h^T M h + 2 g^T h) as features @ weight, features laid out as in ``features``.
        self.weight = torch.cat([M, 2.0 * g], 2).reshape(M.shape[0], -1).T.mul(-0.5) \
            .contiguous()                                                    # (F, Q)

    @property
    def n_paths(self) -> int:
        return int(self.combos.shape[0])

    def features(self, h: torch.Tensor) -> torch.Tensor:
        r"""(N, F) packed statistics of h (N, P, Cb): per position the products
        :math:`h_{p,i}h_{p,j}, i \le j` (row by row), then :math:`h_p` itself."""
        N, P, Cb = h.shape
        if torch.is_grad_enabled() and h.requires_grad:      # out= does not differentiate
            rows = [h[..., i:i + 1] * h[..., i:] for i in range(Cb)]
            return torch.cat(rows + [h], -1).reshape(N, -1)
        out = h.new_empty(N, P, Cb * (Cb + 3) // 2)
        # One broadcast product per row i of the upper triangle: far cheaper than gathering
        # index pairs.
        o = 0
        for i in range(Cb):
            torch.mul(h[..., i:i + 1], h[..., i:], out=out[..., o:o + Cb - i])
            o += Cb - i
        out[..., o:] = h
        return out.reshape(N, -1)

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        """(N, Q): :math:`\\log N(A_q h + t_q; 0, I) + \\text{const}_q` for every tail path."""
        f = self.features(h)
        with fast_matmul(f.shape[0] * f.shape[1] * self.weight.shape[1]):
            return torch.addmm(self.const, f, self.weight)
