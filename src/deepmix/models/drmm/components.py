r"""Per-stream component parameters of one RMM layer (spec drmm §2).

A layer sees a tuple of *streams*, each a (N, W) value with a mask of the same shape (1 known,
0 unknown, fractions weight a variable). :class:`ContinuousComponents` holds K means and one
log-variance (``sigma="scalar"``) or one per variable (``"diagonal"``); its log-term is

.. math:: -\tfrac12\Big[\sum_d m_d \frac{(x_d-\mu_{kd})^2}{\sigma_d^2}
          + \sum_d m_d \log\sigma_d^2\Big].

:class:`CategoricalComponents` holds K logit vectors over B packed blocks of M categories
(:math:`p_k` = softmax per block); its log-term is :math:`(m \odot \mathrm{softmax}(x)) \cdot
\log p_k`. Both give the stream's reconstruction :math:`\hat x` of component h, the residual and
its inverse: continuous :math:`r = x - \mu_h`, categorical :math:`r = \mathrm{log\_softmax}(x -
\log p_h)` per block.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["StreamComponents", "ContinuousComponents", "CategoricalComponents",
           "block_log_softmax", "block_softmax"]


def _device(generator: torch.Generator | None) -> torch.device:
    """Random draws happen on the generator's device (then move to the parameters')."""
    return generator.device if generator is not None else torch.device("cpu")


def block_log_softmax(x: torch.Tensor, categories: int) -> torch.Tensor:
    """log_softmax over each packed block of ``categories`` entries of the last dim."""
    if x.shape[-1] == categories:           # one block (every flat DRMM): no reshapes
        return torch.log_softmax(x, -1)
    shape = x.shape
    return torch.log_softmax(x.reshape(*shape[:-1], -1, categories), -1).reshape(shape)


def block_softmax(x: torch.Tensor, categories: int) -> torch.Tensor:
    """softmax over each packed block (``exp`` of :func:`block_log_softmax`, in one op)."""
    if x.shape[-1] == categories:
        return torch.softmax(x, -1)
    shape = x.shape
    return torch.softmax(x.reshape(*shape[:-1], -1, categories), -1).reshape(shape)


class StreamComponents(nn.Module):
    """K components of one stream; subclasses implement the variant's formulas."""

    width: int
    n_components: int

    def log_terms(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The stream's term of the membership logits, (N, K)."""
        raise NotImplementedError

    def reconstruction(self, h: torch.Tensor) -> torch.Tensor:
        r""":math:`\hat x` of components h (N,), (N, W)."""
        raise NotImplementedError

    def residual(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def inverse(self, r: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def zero_residual(self, n: int) -> torch.Tensor:
        """The residual that carries no information (continuous 0, categorical uniform)."""
        raise NotImplementedError

    def initialize(self, x: torch.Tensor, generator: torch.Generator | None) -> None:
        raise NotImplementedError


class ContinuousComponents(StreamComponents):
    """Means (K, D) and a scalar (1,) or diagonal (D,) log-variance."""

    def __init__(self, n_components: int, width: int, sigma: str = "scalar", *,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.n_components, self.width, self.sigma = n_components, width, sigma
        self.mu = nn.Parameter(torch.zeros(n_components, width, dtype=dtype))
        self.log_var = nn.Parameter(torch.zeros(width if sigma == "diagonal" else 1,
                                                dtype=dtype))

    def variances(self) -> torch.Tensor:
        """:math:`\\sigma_d^2` per variable, (D,)."""
        return torch.exp(self.log_var).expand(self.width)

    #: Up to this many (row, component, variable) triples the squared distances are formed
    #: directly (one broadcast difference: few ops, so little autograd bookkeeping on the
    #: small batches of the 2-D models); above it by matrix products (no N x K x D). Measured
    #: per drmm-em step, 1 thread (2026-12-04): 3 x 16, D = 2, batch 64 (2,048 triples)
    #: direct 1.22 ms vs products 1.42; 3 x 16, D = 6, batch 256 (24,576) 1.88 vs 1.71;
    #: 4 x 64, D = 6, batch 256 (98,304) 5.31 vs 3.57: broadcast kernels over a short last
    #: dimension are slow, so the products win early.
    direct_limit: int = 1 << 13

    def log_terms(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if x.shape[0] * self.n_components * self.width <= self.direct_limit:
            return self._log_terms_direct(x, mask)
        return self._log_terms_products(x, mask)

    def _log_terms_direct(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """:meth:`log_terms` from the (N, K, D) differences (exact, no cancellation)."""
        diff = x.unsqueeze(1) - self.mu                                   # (N, K, D)
        w = (mask * torch.exp(-self.log_var)).unsqueeze(1)                # (N, 1, D)
        sq = (diff * diff * w).sum(-1)                                    # (N, K)
        logdet = (mask * self.log_var).sum(-1, keepdim=True)             # (N, 1)
        return -0.5 * (sq + logdet)

    def _log_terms_products(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """:meth:`log_terms` by three matrix products (memory O(N K + N D))."""
        lam = torch.exp(-self.log_var).expand(self.width)                # (D,)
        # Squared distances by three matrix products, after centring data and means on the
        # means' centroid c: no cancellation on raw, offset data (spec §9). The value does not
        # depend on c, so a detached c leaves the gradients exact.
        c = self.mu.detach().mean(0)
        xc, mc = x - c, self.mu - c
        ml = mask * lam
        sq = ((ml * xc * xc).sum(-1, keepdim=True) - 2.0 * (ml * xc) @ mc.T
              + ml @ (mc * mc).T).clamp_min(0.0)
        logdet = (mask * self.log_var).sum(-1, keepdim=True)             # (N, 1)
        return -0.5 * (sq + logdet)

    def reconstruction(self, h: torch.Tensor) -> torch.Tensor:
        return self.mu[h]

    def residual(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return x - self.mu[h]

    def inverse(self, r: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return r + self.mu[h]

    def zero_residual(self, n: int) -> torch.Tensor:
        return self.mu.new_zeros(n, self.width)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor, generator: torch.Generator | None) -> None:
        r"""Means :math:`\sim N(\bar x_d, s_d)` truncated at 2 sd; :math:`\sigma = 0.1
        \sqrt{\overline{s^2}} / K^{1/D}` (spec §4)."""
        K, D = self.n_components, self.width
        mean, sd = x.mean(0), x.std(0, unbiased=False)
        z = torch.empty(K, D, dtype=x.dtype, device=_device(generator))
        nn.init.trunc_normal_(z, 0.0, 1.0, -2.0, 2.0, generator=generator)
        self.mu.copy_(mean + sd * z.to(x.device))
        var = float((sd * sd).mean())
        sigma = 0.1 * math.sqrt(max(var, 1e-24)) / K ** (1.0 / D)
        self.log_var.fill_(2.0 * math.log(sigma))


class CategoricalComponents(StreamComponents):
    """Logits (K, B*M): K distributions over each of B blocks of M categories."""

    def __init__(self, n_components: int, categories: int, blocks: int = 1, *,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.n_components, self.categories, self.blocks = n_components, categories, blocks
        self.width = categories * blocks
        self.logits = nn.Parameter(torch.zeros(n_components, self.width, dtype=dtype))

    def log_p(self) -> torch.Tensor:
        r""":math:`\log p_k` per block, (K, B*M)."""
        return block_log_softmax(self.logits, self.categories)

    def log_terms(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = mask * block_softmax(x, self.categories)
        return q @ self.log_p().T

    def reconstruction(self, h: torch.Tensor) -> torch.Tensor:
        return self.log_p()[h]

    def residual(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return block_log_softmax(x - self.log_p()[h], self.categories)

    def inverse(self, r: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return block_log_softmax(r + self.log_p()[h], self.categories)

    def zero_residual(self, n: int) -> torch.Tensor:
        return self.logits.new_full((n, self.width), -math.log(self.categories))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor, generator: torch.Generator | None) -> None:
        """Logits ~ U(0, 0.001) (spec §4)."""
        u = torch.rand(self.logits.shape, generator=generator, dtype=self.logits.dtype,
                       device=_device(generator))
        self.logits.copy_(1e-3 * u.to(self.logits.device))
