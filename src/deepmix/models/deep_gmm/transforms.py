r"""The invertible affine transformations of the deep GMM, one class per variant (analysis form).

Every layer acts on folded activities ``h`` of shape (N, P, Cb): P positions of an (Hg, Wg) grid,
Cb channels each. A layer has ``n_vars`` discrete variables (1 for a shared choice, P for an
unshared bank) taking ``n_values`` values; a path fixes them as a LongTensor ``c`` of shape
(N, n_vars). Each layer provides

- ``forward(h, c)``: :math:`h \mapsto f_{c}(h)` (data -> noise) for given choices;
- ``forward_all(h)``: (n_values, N, P, Cb), every value at once (shared: the whole layer uses it;
  unshared: every position uses that bank block), the primitive of path search;
- ``inverse(h, c)``;
- ``logdet_table()``: (n_values,) :math:`\log|\det|` per value (shared: summed over positions;
  unshared: of one block), cached per parameter state when no gradient is needed; the log-det of a
  path is ``table[c].sum(1)``;
- ``n_params()``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import SpecError

__all__ = ["Transform", "FullTransform", "DiagonalTransform", "SharedBlockTransform",
           "UnsharedBlockTransform", "HalfConvolution"]


class Transform(nn.Module):
    """Base class: a layer of ``n_values`` candidate affine maps on (N, P, Cb) activities."""

    code = ""
    #: True for layers whose variables are per position (one choice per position).
    unshared = False
    #: True when the map works position by position (no mixing across positions).
    per_position = True

    def __init__(self, grid: tuple[int, int], channels: int, n_values: int) -> None:
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.P = self.grid[0] * self.grid[1]
        self.Cb = int(channels)
        self.n_values = int(n_values)
        self._cache: tuple[Any, torch.Tensor] | None = None

    @property
    def n_vars(self) -> int:
        return self.P if self.unshared else 1

    # -- to implement --------------------------------------------------------------------
    def forward_all(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        raise NotImplementedError

    def inverse(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _logdet_table(self) -> torch.Tensor:
        raise NotImplementedError

    # -- shared helpers --------------------------------------------------------------------
    def logdet_table(self) -> torch.Tensor:
        """(n_values,) log|det| per value; cached per parameter state outside autograd."""
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            return self._logdet_table()
        key = tuple((p._version, p.data_ptr()) for p in self.parameters())
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self._logdet_table())
        return self._cache[1]

    def log_det(self, c: torch.Tensor) -> torch.Tensor:
        """(N,) log|det J| of the path choices ``c`` (N, n_vars)."""
        return self.logdet_table()[c].sum(1)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def spec(self) -> str:
        return f"{self.code}{self.n_values}"

    def _by_value(self, h: torch.Tensor, c: torch.Tensor, fn: Any) -> torch.Tensor:
        """Apply ``fn(h_group, v)`` to the samples whose (single) choice is v."""
        if self.n_values == 1:
            return fn(h, 0)
        # Writing the groups into a fresh tensor is differentiable (autograd's CopySlices).
        out = h.new_empty(h.shape)
        for v in range(self.n_values):
            idx = (c[:, 0] == v).nonzero().squeeze(1)
            if idx.numel():
                out[idx] = fn(h[idx], v)
        return out


class _Shared(Transform):
    """Shared latent: one choice per layer (``c`` has one column)."""

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self._by_value(h, c, self._map)

    def inverse(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self._by_value(h, c, self._unmap)

    def forward_all(self, h: torch.Tensor) -> torch.Tensor:
        return torch.stack([self._map(h, v) for v in range(self.n_values)])

    def _map(self, h: torch.Tensor, v: int) -> torch.Tensor:
        raise NotImplementedError

    def _unmap(self, h: torch.Tensor, v: int) -> torch.Tensor:
        raise NotImplementedError


class FullTransform(_Shared):
    r"""One full matrix over the whole flattened vector: :math:`h \leftarrow W_c h + t_c`
    (the DGMM-2014 layer; for small data). ``n·D²+n·D`` parameters."""

    code = "full"
    per_position = False

    def __init__(self, grid: tuple[int, int], channels: int, n_values: int,
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__(grid, channels, n_values)
        D = self.P * self.Cb
        self.D = D
        self.weight = nn.Parameter(torch.eye(D, dtype=dtype).repeat(n_values, 1, 1))
        self.bias = nn.Parameter(torch.zeros(n_values, D, dtype=dtype))

    def _map(self, h: torch.Tensor, v: int) -> torch.Tensor:
        flat = h.reshape(h.shape[0], self.D)
        return (flat @ self.weight[v].T + self.bias[v]).reshape(h.shape)

    def forward_all(self, h: torch.Tensor) -> torch.Tensor:
        flat = h.reshape(h.shape[0], self.D)
        out = torch.einsum("vij,nj->vni", self.weight, flat) + self.bias[:, None]
        return out.reshape(self.n_values, *h.shape)

    def _unmap(self, h: torch.Tensor, v: int) -> torch.Tensor:
        flat = h.reshape(h.shape[0], self.D) - self.bias[v]
        return torch.linalg.solve(self.weight[v], flat.T).T.reshape(h.shape)

    def _logdet_table(self) -> torch.Tensor:
        return torch.linalg.slogdet(self.weight)[1]


class DiagonalTransform(_Shared):
    r""":math:`h \leftarrow e^{a_c} \odot h + t_c` over all D dimensions (``n × 2D`` parameters;
    [deepmix] the scale is :math:`e^a`, so it stays invertible); log-det :math:`\sum a_c`."""

    code = "diag"

    def __init__(self, grid: tuple[int, int], channels: int, n_values: int,
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__(grid, channels, n_values)
        self.log_scale = nn.Parameter(torch.zeros(n_values, self.P, self.Cb, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(n_values, self.P, self.Cb, dtype=dtype))

    def _map(self, h: torch.Tensor, v: int) -> torch.Tensor:
        return h * self.log_scale[v].exp() + self.bias[v]

    def forward_all(self, h: torch.Tensor) -> torch.Tensor:
        return h[None] * self.log_scale.exp()[:, None] + self.bias[:, None]

    def _unmap(self, h: torch.Tensor, v: int) -> torch.Tensor:
        return (h - self.bias[v]) * (-self.log_scale[v]).exp()

    def _logdet_table(self) -> torch.Tensor:
        return self.log_scale.sum((1, 2))


class SharedBlockTransform(_Shared):
    r"""Block-diagonal, shared latent: :math:`h[p] \leftarrow W[c,p]\,h[p] + t[c,p]`; every
    position has its own block in each of the n matrices (``n·P·Cb² + n·P·Cb`` parameters);
    log-det :math:`\sum_p \log|\det W[c,p]|`."""

    code = "bd"

    def __init__(self, grid: tuple[int, int], channels: int, n_values: int,
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__(grid, channels, n_values)
        self.weight = nn.Parameter(torch.eye(self.Cb, dtype=dtype).repeat(n_values, self.P,
                                                                            1, 1))
        self.bias = nn.Parameter(torch.zeros(n_values, self.P, self.Cb, dtype=dtype))

    def _map(self, h: torch.Tensor, v: int) -> torch.Tensor:
        return torch.einsum("pij,npj->npi", self.weight[v], h) + self.bias[v]

    def forward_all(self, h: torch.Tensor) -> torch.Tensor:
        return torch.einsum("vpij,npj->vnpi", self.weight, h) + self.bias[:, None]

    def _unmap(self, h: torch.Tensor, v: int) -> torch.Tensor:
        rhs = (h - self.bias[v]).permute(1, 2, 0)                      # (P, Cb, N)
        return torch.linalg.solve(self.weight[v], rhs).permute(2, 0, 1)

    def _logdet_table(self) -> torch.Tensor:
        return torch.linalg.slogdet(self.weight)[1].sum(1)


class UnsharedBlockTransform(Transform):
    r"""Block-diagonal, unshared latent: :math:`h[p] \leftarrow V[c_p]\,h[p] + u[c_p]` with a
    bank of m blocks common to all positions and one choice per position (``m·Cb² + m·Cb``
    parameters, m^P paths); log-det :math:`\sum_p \log|\det V[c_p]|`."""

    code = "ubd"
    unshared = True

    def __init__(self, grid: tuple[int, int], channels: int, n_values: int,
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__(grid, channels, n_values)
        self.weight = nn.Parameter(torch.eye(self.Cb, dtype=dtype).repeat(n_values, 1, 1))
        self.bias = nn.Parameter(torch.zeros(n_values, self.Cb, dtype=dtype))

    def forward_all(self, h: torch.Tensor) -> torch.Tensor:
        return torch.einsum("vij,npj->vnpi", self.weight, h) + self.bias[:, None, None]

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # m is small: all m blocks at every position, then each position keeps its own.
        allv = self.forward_all(h)                                     # (m, N, P, Cb)
        idx = c[None, :, :, None].expand(1, *h.shape)
        return allv.gather(0, idx)[0]

    def inverse(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        W = self.weight[c]                                             # (N, P, Cb, Cb)
        rhs = (h - self.bias[c]).unsqueeze(-1)
        return torch.linalg.solve(W, rhs).squeeze(-1)

    def _logdet_table(self) -> torch.Tensor:
        return torch.linalg.slogdet(self.weight)[1]


class HalfConvolution(_Shared):
    r"""Half-convolution (a coupling layer): :math:`h_b \leftarrow h_b + w_c \circledast h_a
    (+ b_c)`, :math:`h_a` unchanged; stride 1, zero 'same' padding, bias optional (the
    paper's eq. 1 has none; ``hc<k>b``); log-det 0 exactly.

    ``h_a`` is the first Cb/2 channels and ``h_b`` the rest; layer ``parity`` 0 updates ``h_b``
    from ``h_a``, parity 1 updates ``h_a`` from ``h_b`` (the j-th HC layer of a stack has parity
    j mod 2). ``(Cb/2)²·k²`` parameters per value (+ Cb/2 with bias).
    """

    code = "hc"
    per_position = False

    def __init__(self, grid: tuple[int, int], channels: int, n_values: int, kernel: int,
                 parity: int = 0, bias: bool = False,
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__(grid, channels, n_values)
        if self.Cb % 2:
            raise SpecError(f"a half-convolution needs an even number of channels, got "
                            f"{self.Cb} (choose the fold size r so that r*r*C is even)")
        if kernel < 1 or kernel % 2 == 0:
            raise SpecError(f"a half-convolution needs an odd kernel size, got {kernel}")
        self.kernel = int(kernel)
        self.parity = int(parity) % 2
        half = self.Cb // 2
        self.weight = nn.Parameter(torch.zeros(n_values, half, half, kernel, kernel,
                                               dtype=dtype))
        # one bias per value and channel of the updated half, the same at every position
        self.bias = nn.Parameter(torch.zeros(n_values, half, dtype=dtype)) if bias else None

    def spec(self) -> str:
        return (f"hc{self.kernel}" + (f"x{self.n_values}" if self.n_values > 1 else "")
                + ("b" if self.bias is not None else ""))

    def _conv(self, src: torch.Tensor, v: int) -> torch.Tensor:
        """``w_v ⊛ src`` for src (N, P, Cb/2), as (N, P, Cb/2)."""
        N = src.shape[0]
        Hg, Wg = self.grid
        img = src.reshape(N, Hg, Wg, -1).permute(0, 3, 1, 2)
        out = F.conv2d(img, self.weight[v], None if self.bias is None else self.bias[v],
                       padding=self.kernel // 2)
        return out.permute(0, 2, 3, 1).reshape(src.shape)

    def _couple(self, h: torch.Tensor, v: int, sign: float) -> torch.Tensor:
        half = self.Cb // 2
        a, b = h[..., :half], h[..., half:]
        if self.parity == 0:
            return torch.cat([a, b + sign * self._conv(a, v)], -1)
        return torch.cat([a + sign * self._conv(b, v), b], -1)

    def _map(self, h: torch.Tensor, v: int) -> torch.Tensor:
        return self._couple(h, v, 1.0)

    def _unmap(self, h: torch.Tensor, v: int) -> torch.Tensor:
        return self._couple(h, v, -1.0)

    def _logdet_table(self) -> torch.Tensor:
        return self.weight.new_zeros(self.n_values)
