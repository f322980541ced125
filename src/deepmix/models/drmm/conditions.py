r"""What a DRMM can be conditioned on at sampling time, without retraining (spec drmm §5).

:class:`DRMMCondition` combines known values (with a mask, fractions weight a variable), any
number of linear inequalities :math:`a \cdot x + b > 0` (:class:`Inequality`, weighted,
normalised to :math:`\|a\| = 1`), box limits (:class:`Box`, per-variable weights) and a diagonal
Gaussian prior (:class:`GaussianPrior`). Constraints and priors act on the continuous stream
``"x"``. At each layer they add per-component log factors to the membership logits, with
:math:`\Phi` the standard normal CDF (``torch.special.log_ndtr``):

- inequality: :math:`w \log\Phi((a\cdot\mu_k + b)/s)`, :math:`s^2 = \sum_d a_d^2\sigma_d^2`
  (= :math:`\sigma^2` for the scalar variance; exact for the diagonal one);
- box: :math:`\sum_d w^{max}_d \log\Phi((max_d-\mu_{kd})/\sigma_d) + w^{min}_d
  \log\Phi((\mu_{kd}-min_d)/\sigma_d)`;
- prior: :math:`-\tfrac12 \sum_d w_d (m_d-\mu_{kd})^2/(\sigma_d^2+s_d^2)`;

and are then moved into the layer's residual space: :math:`b \leftarrow b + a\cdot\hat x`, limits
and prior mean :math:`-\hat x`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ...errors import InputError

__all__ = ["DRMMCondition", "Inequality", "Box", "GaussianPrior", "ResolvedCondition"]


@dataclass
class Inequality:
    """:math:`a \\cdot x + b > 0` on stream ``stream``; ``a`` (D,) or (n, D), ``b`` a number
    or (n,)."""

    a: Any
    b: Any = 0.0
    weight: float = 1.0
    stream: str = "x"


@dataclass
class Box:
    """Per-variable limits ``low < x < high`` (None or +-inf: no limit), with weights."""

    low: Any = None
    high: Any = None
    low_weight: Any = 1.0
    high_weight: Any = 1.0
    stream: str = "x"


@dataclass
class GaussianPrior:
    """A diagonal Gaussian prior N(mean, sd^2) on the stream, with a (per-variable) weight."""

    mean: Any
    sd: Any
    weight: Any = 1.0
    stream: str = "x"


@dataclass
class DRMMCondition:
    """Known values (``values`` and ``mask`` of the packed data width, (W,) or (n, W); mask in
    [0, 1], 1 known), inequalities, a box and a prior; every part optional."""

    values: Any = None
    mask: Any = None
    inequalities: tuple = ()
    box: Box | None = None
    prior: GaussianPrior | None = None


def _tensor(v: Any, what: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if isinstance(v, (bool, np.bool_)):
        raise InputError(f"{what} must be numbers, got {v!r}")
    if isinstance(v, (int, float, np.integer, np.floating)):
        return torch.tensor(float(v), dtype=dtype, device=device)
    if isinstance(v, np.ndarray):
        v = torch.from_numpy(np.ascontiguousarray(v))
    if isinstance(v, (list, tuple)):
        v = torch.as_tensor(v)
    if not torch.is_tensor(v):
        raise InputError(f"{what} must be a number, tensor or numpy array, got "
                         f"{type(v).__name__}")
    if v.dtype == torch.bool or v.is_complex():
        raise InputError(f"{what} has dtype {v.dtype}; expected real numbers")
    return v.to(dtype=dtype, device=device)


def _rows(v: Any, what: str, n: int, width: int, dtype: torch.dtype,
          device: torch.device) -> torch.Tensor:
    """``v`` broadcast to (n, width): a number, (width,) or (n, width)."""
    t = _tensor(v, what, dtype, device)
    if t.ndim == 0:
        return t.expand(n, width).clone()
    if t.shape == (width,):
        return t.expand(n, width).clone()
    if t.shape == (n, width):
        return t.clone()
    raise InputError(f"{what} has shape {tuple(t.shape)}; expected ({width},) or ({n}, {width})")


def _no_nan(t: torch.Tensor, what: str) -> None:
    if bool(torch.isnan(t).any()):
        raise InputError(f"{what} contains NaN")


@dataclass
class ResolvedCondition:
    """A condition as per-row tensors on the model's device (n rows); see the module doc."""

    values: torch.Tensor
    mask: torch.Tensor
    a: torch.Tensor                      # (n, Q, D), unit norm
    b: torch.Tensor                      # (n, Q)
    a_weight: torch.Tensor               # (n, Q)
    low: torch.Tensor | None = None      # (n, D)
    high: torch.Tensor | None = None
    low_weight: torch.Tensor | None = None
    high_weight: torch.Tensor | None = None
    prior_mean: torch.Tensor | None = None
    prior_var: torch.Tensor | None = None
    prior_weight: torch.Tensor | None = None
    constrained: bool = field(default=False)

    @classmethod
    def resolve(cls, condition: Any, n: int, *, width: int, continuous: int,
                continuous_names: tuple[str, ...], dtype: torch.dtype,
                device: torch.device) -> "ResolvedCondition":
        """Check ``condition`` (None or a :class:`DRMMCondition`) and broadcast it to n rows."""
        if condition is None:
            condition = DRMMCondition()
        if not isinstance(condition, DRMMCondition):
            raise InputError(f"a DRMM condition must be a DRMMCondition, got "
                             f"{type(condition).__name__}")
        c, D = condition, continuous
        if (c.values is None) != (c.mask is None):
            raise InputError("known values need both values and mask (1 known, 0 unknown)")
        if c.mask is None:
            values = torch.zeros(n, width, dtype=dtype, device=device)
            mask = torch.zeros(n, width, dtype=dtype, device=device)
        else:
            mask = _rows(c.mask, "condition mask", n, width, dtype, device)
            _no_nan(mask, "condition mask")
            if bool(((mask < 0) | (mask > 1)).any()):
                raise InputError("condition mask values must lie in [0, 1] (1 known)")
            values = _rows(c.values, "condition values", n, width, dtype, device)
            if bool((torch.isnan(values) & (mask > 0)).any()):
                raise InputError("condition values contain NaN where the mask says known")
            # Unknown entries may hold anything: they are never read.
            values = torch.where(mask > 0, values, torch.zeros((), dtype=dtype, device=device))
            if bool(torch.isinf(values).any()):
                raise InputError("condition values contain infinite known values")
        items = [c.box, c.prior, *tuple(c.inequalities)]
        for item in items:
            if item is not None and getattr(item, "stream", None) not in continuous_names:
                name = getattr(item, "stream", None)
                known = ", ".join(continuous_names) or "none"
                raise InputError(f"unknown stream {name!r} in a {type(item).__name__}; the "
                                 f"model's continuous streams: {known}")
        if not isinstance(c.inequalities, (tuple, list)):
            raise InputError("inequalities must be a tuple of Inequality")
        a_rows, b_rows, w_rows = [], [], []
        for q in c.inequalities:
            if not isinstance(q, Inequality):
                raise InputError(f"inequalities must be Inequality objects, got "
                                 f"{type(q).__name__}")
            a = _tensor(q.a, "inequality a", dtype, device)
            if a.ndim == 0 or a.shape[-1] != D or a.ndim > 2 or (a.ndim == 2 and
                                                                 a.shape[0] != n):
                raise InputError(f"inequality a has shape {tuple(a.shape)}; expected ({D},) or "
                                 f"({n}, {D}) for the stream's {D} variables")
            a = a.expand(n, D)
            b = _tensor(q.b, "inequality b", dtype, device)
            if b.ndim > 1 or (b.ndim == 1 and b.shape[0] != n):
                raise InputError(f"inequality b has shape {tuple(b.shape)}; expected a number "
                                 f"or ({n},)")
            b = b.expand(n)
            w = _tensor(q.weight, "inequality weight", dtype, device)
            if w.ndim != 0 or not bool(torch.isfinite(w)) or float(w) < 0:
                raise InputError(f"inequality weight must be a finite number >= 0, got "
                                 f"{q.weight!r}")
            _no_nan(a, "inequality a")
            _no_nan(b, "inequality b")
            norm = torch.linalg.vector_norm(a, dim=-1)
            if bool((norm == 0).any()) or not bool(torch.isfinite(norm).all()):
                raise InputError("inequality a must be a finite nonzero vector (a.x + b > 0 "
                                 "with a = 0 is always or never true)")
            if not bool(torch.isfinite(b).all()):
                raise InputError("inequality b must be finite")
            a_rows.append(a / norm[:, None])
            b_rows.append(b / norm)
            w_rows.append(w.expand(n))
        res = cls(values, mask,
                  torch.stack(a_rows, 1) if a_rows else values.new_zeros(n, 0, D),
                  torch.stack(b_rows, 1) if b_rows else values.new_zeros(n, 0),
                  torch.stack(w_rows, 1) if w_rows else values.new_zeros(n, 0),
                  constrained=bool(a_rows))
        if c.box is not None:
            box = c.box
            if not isinstance(box, Box):
                raise InputError(f"box must be a Box, got {type(box).__name__}")
            low = _rows(-math.inf if box.low is None else box.low, "box low", n, D, dtype,
                        device)
            high = _rows(math.inf if box.high is None else box.high, "box high", n, D, dtype,
                         device)
            _no_nan(low, "box low")
            _no_nan(high, "box high")
            if bool((low >= high).any()):
                d = int((low >= high).nonzero()[0, 1])
                raise InputError(f"the box has an empty feasible set: low >= high for "
                                 f"variable {d}")
            if bool((low == math.inf).any()) or bool((high == -math.inf).any()):
                raise InputError("the box has an empty feasible set (low = +inf or "
                                 "high = -inf)")
            lw = _rows(box.low_weight, "box low_weight", n, D, dtype, device)
            hw = _rows(box.high_weight, "box high_weight", n, D, dtype, device)
            for t, what in ((lw, "box low_weight"), (hw, "box high_weight")):
                if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
                    raise InputError(f"{what} must be finite and >= 0")
            res.low, res.high, res.low_weight, res.high_weight = low, high, lw, hw
            res.constrained = True
        if c.prior is not None:
            p = c.prior
            if not isinstance(p, GaussianPrior):
                raise InputError(f"prior must be a GaussianPrior, got {type(p).__name__}")
            mean = _rows(p.mean, "prior mean", n, D, dtype, device)
            sd = _rows(p.sd, "prior sd", n, D, dtype, device)
            pw = _rows(p.weight, "prior weight", n, D, dtype, device)
            if not bool(torch.isfinite(mean).all()):
                raise InputError("prior mean must be finite")
            if not bool(torch.isfinite(sd).all()) or bool((sd <= 0).any()):
                raise InputError("prior sd must be finite and > 0")
            if not bool(torch.isfinite(pw).all()) or bool((pw < 0).any()):
                raise InputError("prior weight must be finite and >= 0")
            res.prior_mean, res.prior_var, res.prior_weight = mean, sd * sd, pw
            res.constrained = True
        return res

    def log_factors(self, mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        """Per-component log factors (n, K) of the constraints and prior, for means mu (K, D)
        and variances var (D,) of the continuous stream."""
        n, K = self.values.shape[0], mu.shape[0]
        out = mu.new_zeros(n, K)
        if self.a.shape[1]:
            s = torch.sqrt((self.a * self.a * var).sum(-1))                      # (n, Q)
            z = (torch.einsum("nqd,kd->nqk", self.a, mu) + self.b[..., None]) / s[..., None]
            out = out + (self.a_weight[..., None] * torch.special.log_ndtr(z)).sum(1)
        if self.low is not None:
            sd = torch.sqrt(var)
            hi = torch.special.log_ndtr((self.high[:, None, :] - mu[None]) / sd)
            lo = torch.special.log_ndtr((mu[None] - self.low[:, None, :]) / sd)
            out = out + (self.high_weight[:, None, :] * hi
                         + self.low_weight[:, None, :] * lo).sum(-1)
        if self.prior_mean is not None:
            d = self.prior_mean[:, None, :] - mu[None]
            out = out - 0.5 * (self.prior_weight[:, None, :] * d * d
                               / (var + self.prior_var[:, None, :])).sum(-1)
        return out

    def shift(self, xhat: torch.Tensor) -> None:
        """Move the constraints into the residual space of reconstruction xhat (n, D)."""
        if self.a.shape[1]:
            self.b = self.b + torch.einsum("nqd,nd->nq", self.a, xhat)
        if self.low is not None:
            self.low = self.low - xhat
            self.high = self.high - xhat
        if self.prior_mean is not None:
            self.prior_mean = self.prior_mean - xhat
