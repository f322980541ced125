r"""The EinsumNetwork: a vectorised probabilistic circuit over a region graph.

Every region carries a vector of densities: K = ``num_input_distributions`` at leaf regions
(products of the per-variable factors of :mod:`.leaves`), K = ``num_sums`` at inner regions and
one density at the root.

- Einsum (one per partition with children a, b):
  :math:`o_c = \sum_{i,j} W_{ijc}\, a_i b_j`, :math:`W \ge 0`, :math:`\sum_{ij} W_{ijc} = 1`.
- Mixing (a region with several partitions):
  :math:`o_c = \sum_p V_{cp}\, o^{(p)}_c`, :math:`\sum_p V_{cp} = 1`.

Everything runs in log space with *detached* max shifts,
:math:`\log o_c = a^* + b^* + \log\sum_{ij} W_{ijc} e^{\log a_i - a^*} e^{\log b_j - b^*}`:
the value does not depend on the shift, so cutting its gradient is exact and keeps the
double-backward of score matching clean. Layers follow region heights (0 at leaves, 1 + the
largest child height above), so every child is computed before its parents; all partitions of
one layer are evaluated by one einsum per (K_left, K_right, K_out) shape, then the regions with
several partitions by one mixing step (padded to the largest partition count with zero weights).

Fast paths (each tested equal to its reference): the leaf layer is evaluated in exponential-family
form, :math:`\log\ell_{l,k} = \sum_{d\in S_l} T(x_d)\cdot\theta_{d,r_l,k}`, all leaf regions in
one ``bmm`` (:meth:`EinsumNetwork._leaf_regions`; reference: every factor (N, D, R, K) summed
into its region, :meth:`EinsumNetwork._forward`), and the inner layers keep their values
slot-major (slots, N, K) (:meth:`EinsumNetwork._inner`; reference :meth:`EinsumNetwork._inner_reference`).

Training: gradient objectives through ``log_prob`` (:func:`deepmix.training.fit_density`, with a
closed-form score and Laplacian for exact score matching, see :meth:`EinsumNetwork.score_and_laplacian`),
and EM *through the gradient* (:meth:`EinsumNetwork.em_accumulate` / :meth:`em_update` /
:meth:`fit_em`): for a normalised weight w, :math:`n(w) = w\,\partial_w \sum_b \log p(x_b)` is the
expected count of its edge, and :math:`q_{b,d,k,r} = \partial \log p(x_b)/\partial \log f_{d,k,r}(x_{b,d})`
the posterior responsibility of a leaf factor (the leaf layer turns q into its statistics and
its M-step); the fused path gets the leaf statistics as :math:`\partial L/\partial\theta = \sum_b q\,T(x_b)`
without forming q. Sampling and completion: :mod:`.sampling`.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ...errors import ConfigError, InputError, SpecError
from ..base import Model
from ..registry import register_family
from .config import CircuitConfig, dtype_name
from .leaves import BinomialLeaves, GaussianLeaves, Leaves, make_leaves
from .region_graph import RegionGraph
from .sampling import draw

__all__ = ["EinsumNetwork"]


@dataclass
class _EinsumGroup:
    """Partitions of one layer with the same (K_left, K_right, K_out)."""
    k_left: int
    k_right: int
    k_out: int
    left: torch.Tensor        # slots in the K_left store
    right: torch.Tensor       # slots in the K_right store
    part_pos: torch.Tensor    # positions in the layer's K_out partition store
    param: str


@dataclass
class _Mixing:
    """Regions of one layer with several partitions and the same K_out."""
    k_out: int
    index: torch.Tensor       # (M, Cmax) positions in the layer's K_out partition store (padded)
    mask: torch.Tensor        # (M, Cmax) True for real partitions
    param: str


@dataclass
class _Layer:
    groups: list[_EinsumGroup]
    n_parts: dict[int, int]                 # K_out -> partitions in this layer
    single: dict[int, torch.Tensor]         # K_out -> partition positions of 1-partition regions
    mixing: dict[int, _Mixing]              # K_out -> mixing of the others
    # output slots in the K_out store, in the order [single regions..., mixed regions...]
    out_slots: dict[int, torch.Tensor]
    # K_out -> partition positions of the groups' outputs concatenated in group order, or None
    # when that order is already 0, 1, 2, ... (no scatter needed)
    part_order: dict[int, torch.Tensor | None] = dataclasses.field(default_factory=dict)


@register_family
class EinsumNetwork(Model):
    r"""A smooth, decomposable probabilistic circuit over a :class:`RegionGraph` (family ``"circuit"``).

    .. math:: \log p(x) = \log o_{\text{root}}(x)

    with the leaf, einsum and mixing layers of the module docstring. Weights are softmaxes of
    unconstrained logits over their normalisation axes ((i, j) for einsum, partitions for mixing).
    The leaf layer :attr:`leaves` is a :class:`~.leaves.GaussianLeaves` (unconstrained means,
    :math:`\sigma^2 = v_{\min} + (v_{\max} - v_{\min})\,\mathrm{sigmoid}(\rho)`) or a
    :class:`~.leaves.BinomialLeaves`; its parameters are registered here (``mean`` and
    ``var_raw``, or ``prob_raw``), next to the weight logits ``einsum_<i>`` and ``mixing_<i>``.

    Arguments:
        graph: the region graph.
        num_sums: K of inner regions.
        num_input_distributions: K of leaf regions (default ``num_sums``).
        num_dims: channels per variable (a pixel's colour); the leaves factorise over them.
        leaf: ``"gaussian"`` or ``"binomial"`` (:math:`p = \mathrm{sigmoid}(0.1\,\rho)`, values in
            [0, ``total_count``]; EM keeps p in [1e-6, 1 - 1e-6]).
        total_count: N of the Binomial leaves (255 for raw 8-bit pixels).
        min_var, max_var: bounds of the Gaussian leaf variances.
        init: ``"gradient"`` (logits, means and raw variances / raw probabilities ~ N(0, 1)) or
            ``"em"`` (weights U(0.01, 0.99) normalised, means ~ N(0, 1), variances 1 clipped to the
            bounds; Binomial p ~ U(0.01, 0.99)). :meth:`init_leaves_from_data` is a data-driven
            alternative for the leaves.
        seed: seed of the initialisation.
        dtype: parameter dtype, ``torch.float32`` or ``torch.float64`` (or their names).

    :attr:`config` (a :class:`~.config.CircuitConfig`, the graph included) rebuilds the circuit
    with :meth:`from_config`; with the state_dict that is the whole fitted model
    (:func:`deepmix.training.checkpoint.save_model` / ``load_model``).

    Known limit: SSM/SM through autograd in float32 can give non-finite parameter gradients once
    weights become extreme (an inner sum far below its max shift: its second derivative
    :math:`-1/\text{sum}^2` overflows), while float64 stays finite. Train score objectives in
    float64, or skip non-finite steps (``benchmarks/objectives/mnist_circuits.py`` does).
    """

    family = "circuit"
    config_class = CircuitConfig
    default_objective = "em"

    def __init__(self, graph: RegionGraph, num_sums: int = 10, num_input_distributions: int | None = None,
                 *, num_dims: int = 1, leaf: str = "gaussian", total_count: int = 255,
                 min_var: float = 1e-4, max_var: float = 10.0,
                 init: str = "gradient", seed: int = 0, dtype: torch.dtype | str = torch.float32) -> None:
        super().__init__()
        if not isinstance(graph, RegionGraph):
            raise SpecError(f"graph must be a RegionGraph, got {type(graph).__name__}")
        # the config validates every option (a ConfigError naming it)
        self._config = CircuitConfig.from_graph(
            graph, num_sums=num_sums, num_input_distributions=num_input_distributions,
            num_dims=num_dims, leaf=leaf, total_count=total_count, min_var=min_var,
            max_var=max_var, init=init, seed=seed, dtype=dtype_name(dtype))
        cfg = self._config
        self.graph = graph
        self.num_var, self.num_dims = graph.num_var, cfg.num_dims
        self.num_sums, self.num_input_distributions = cfg.num_sums, int(cfg.num_input_distributions or 0)
        self.num_replicas = graph.num_replicas
        self.min_var, self.max_var = cfg.min_var, cfg.max_var
        self.leaf, self.total_count = cfg.leaf, int(cfg.total_count)
        self._compile(graph)
        shape = (self.num_var, self.num_replicas, self.num_input_distributions, self.num_dims)
        #: The leaf layer: parameter definitions, log-density, derivatives, EM, init and draws.
        self.leaves: Leaves = make_leaves(cfg.leaf, shape, min_var=cfg.min_var, max_var=cfg.max_var,
                                          total_count=cfg.total_count)
        dt = cfg.torch_dtype
        for name, p in self.leaves.create_parameters(dt).items():
            self.register_parameter(name, p)
        for g in (g for layer in self.layers for g in layer.groups):
            self.register_parameter(g.param, nn.Parameter(
                torch.zeros(len(g.left), g.k_left * g.k_right, g.k_out, dtype=dt)))
        for mix in (m for layer in self.layers for m in layer.mixing.values()):
            # only real (region, partition) pairs are parameters: the count is exact
            self.register_parameter(mix.param, nn.Parameter(
                torch.zeros(int(mix.mask.sum()) * mix.k_out, dtype=dt)))
        self.reset_parameters(cfg.init, cfg.seed)
        self._em_stats: dict[str, torch.Tensor] | None = None

    # -- the model protocol ------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: CircuitConfig) -> "EinsumNetwork":
        """A freshly initialised circuit of ``config`` (graph, options, init and seed)."""
        if not isinstance(config, CircuitConfig):
            raise ConfigError(f"from_config needs a CircuitConfig, got {type(config).__name__}")
        return cls(config.graph(), config.num_sums, config.num_input_distributions,
                   num_dims=config.num_dims, leaf=config.leaf, total_count=config.total_count,
                   min_var=config.min_var, max_var=config.max_var, init=config.init,
                   seed=config.seed, dtype=config.dtype)

    @property
    def config(self) -> CircuitConfig:
        """The :class:`~.config.CircuitConfig` that rebuilds this circuit; ``dtype`` is the
        parameters' current dtype (a circuit converted with ``.double()`` saves as float64)."""
        return dataclasses.replace(self._config, dtype=dtype_name(self._ref.dtype))

    # -- structure ---------------------------------------------------------------------------

    def _compile(self, graph: RegionGraph) -> None:
        heights = graph.heights()
        if heights[graph.root] == 0:
            raise SpecError("The root region has no partition; a circuit needs at least one split")
        parts_of: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for p, a, b in graph.partitions:
            parts_of[p].append((a, b))
        size = {r: (1 if r == graph.root else self.num_sums) for r in range(len(graph.scopes))}
        leaves = graph.leaves
        for r in leaves:
            size[r] = self.num_input_distributions
        slot: dict[int, int] = {}
        n_slots: dict[int, int] = defaultdict(int)
        for r in leaves:
            slot[r] = n_slots[size[r]]
            n_slots[size[r]] += 1
        # leaf factors -> leaf regions: (region slot, variable, replica) triples
        lr, lv, lrep = [], [], []
        for r in leaves:
            for v in graph.scopes[r]:
                lr.append(slot[r])
                lv.append(v)
                lrep.append(graph.replicas.get(r, 0))
        self.register_buffer("_leaf_slot", torch.tensor(lr, dtype=torch.long), persistent=False)
        self.register_buffer("_leaf_var", torch.tensor(lv, dtype=torch.long), persistent=False)
        self.register_buffer("_leaf_rep", torch.tensor(lrep, dtype=torch.long), persistent=False)
        self._n_leaf_regions = len(leaves)
        # The fused leaf layer: every leaf region's scope padded to the longest one; padding
        # points at variable D, a zero feature row (so it adds exactly 0), and at variable 0 of
        # the natural parameters (times that zero: no value, no gradient).
        smax = max(len(graph.scopes[r]) for r in leaves)
        var_pad = torch.full((len(leaves), smax), graph.num_var, dtype=torch.long)
        for r in leaves:
            var_pad[slot[r], :len(graph.scopes[r])] = torch.tensor(graph.scopes[r], dtype=torch.long)
        rep = torch.tensor([graph.replicas.get(r, 0) for r in sorted(leaves, key=slot.__getitem__)],
                           dtype=torch.long)
        self.register_buffer("_region_var", var_pad, persistent=False)
        self.register_buffer("_region_var_theta", var_pad.masked_fill(var_pad == graph.num_var, 0),
                             persistent=False)
        self.register_buffer("_region_rep", rep[:, None].expand(-1, smax).contiguous(), persistent=False)
        self._leaf_k = self.num_input_distributions   # the root is never a leaf (checked above)
        self.layers: list[_Layer] = []
        by_height: dict[int, list[int]] = defaultdict(list)
        for r, h in enumerate(heights):
            if h > 0:
                by_height[h].append(r)
        n_params = 0
        for h in sorted(by_height):
            regions = by_height[h]
            n_parts: dict[int, int] = defaultdict(int)
            part_pos: dict[tuple[int, int], int] = {}
            groups_raw: dict[tuple[int, int, int], list[tuple[int, int, int]]] = defaultdict(list)
            for r in regions:
                for c, (a, b) in enumerate(parts_of[r]):
                    ko = size[r]
                    part_pos[(r, c)] = n_parts[ko]
                    n_parts[ko] += 1
                    groups_raw[(size[a], size[b], ko)].append((slot[a], slot[b], part_pos[(r, c)]))
            groups = []
            for (ka, kb, ko), items in groups_raw.items():
                t = torch.tensor(items, dtype=torch.long)
                groups.append(_EinsumGroup(ka, kb, ko, t[:, 0], t[:, 1], t[:, 2], f"einsum_{n_params}"))
                n_params += 1
            single, mixing, out_slots = {}, {}, {}
            for ko in sorted({size[r] for r in regions}):
                rs = [r for r in regions if size[r] == ko]
                ones = [r for r in rs if len(parts_of[r]) == 1]
                many = [r for r in rs if len(parts_of[r]) > 1]
                single[ko] = torch.tensor([part_pos[(r, 0)] for r in ones], dtype=torch.long)
                if many:
                    cmax = max(len(parts_of[r]) for r in many)
                    # padding repeats the region's first partition with a zero weight: no -inf anywhere
                    index = torch.tensor([[part_pos[(r, min(c, len(parts_of[r]) - 1))] for c in range(cmax)]
                                          for r in many], dtype=torch.long)
                    mask = torch.tensor([[c < len(parts_of[r]) for c in range(cmax)] for r in many])
                    mixing[ko] = _Mixing(ko, index, mask, f"mixing_{n_params}")
                    n_params += 1
                for r in ones + many:
                    slot[r] = n_slots[ko]
                    n_slots[ko] += 1
                out_slots[ko] = torch.tensor([slot[r] for r in ones + many], dtype=torch.long)
            part_order: dict[int, torch.Tensor | None] = {}
            for ko in n_parts:
                order = torch.cat([g.part_pos for g in groups if g.k_out == ko])
                identity = bool((order == torch.arange(len(order))).all())
                part_order[ko] = None if identity else order
            self.layers.append(_Layer(groups, dict(n_parts), single, mixing, out_slots, part_order))
        self._root_slot = slot[graph.root]
        self._root_k = size[graph.root]

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "EinsumNetwork":
        # keep the index tensors of the compiled layers on the parameters' device
        super()._apply(fn, *args, **kwargs)
        dev = self._ref.device
        for layer in self.layers:
            for g in layer.groups:
                g.left, g.right, g.part_pos = g.left.to(dev), g.right.to(dev), g.part_pos.to(dev)
            layer.single = {k: v.to(dev) for k, v in layer.single.items()}
            layer.out_slots = {k: v.to(dev) for k, v in layer.out_slots.items()}
            layer.part_order = {k: None if v is None else v.to(dev) for k, v in layer.part_order.items()}
            for m in layer.mixing.values():
                m.index, m.mask = m.index.to(dev), m.mask.to(dev)
        return self

    def extra_repr(self) -> str:
        g = self.graph
        return (f"num_var={self.num_var}, num_dims={self.num_dims}, regions={len(g.scopes)}, "
                f"partitions={len(g.partitions)}, replicas={self.num_replicas}, num_sums={self.num_sums}, "
                f"num_input_distributions={self.num_input_distributions}, {self.leaves.extra_repr()}, "
                f"layers={len(self.layers)}")

    def num_parameters(self) -> int:
        """Number of free numbers (weights counted before normalisation, 2 per leaf channel)."""
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def reset_parameters(self, init: str = "gradient", seed: int = 0) -> None:
        """Re-initialise all parameters (see the class docstring for ``init``): the leaves first,
        then the weight logits, from one generator seeded with ``seed``."""
        if init not in ("gradient", "em"):
            raise ConfigError(f"Unknown init '{init}'; expected 'gradient' or 'em'")
        gen = torch.Generator().manual_seed(seed)
        dt = self._ref.dtype
        self.leaves.reset(self._leaf_params(), init, gen)
        for _, p in self._weight_params():
            if init == "gradient":
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dt))
            else:
                u = 0.01 + 0.98 * torch.rand(p.shape, generator=gen, dtype=torch.float64)
                p.copy_(u.log().to(dt))  # the softmax normalises U(0.01, 0.99)

    def _weight_params(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if n.startswith(("einsum_", "mixing_"))]

    def _leaf_params(self) -> dict[str, torch.Tensor]:
        """The leaf layer's parameters, name -> tensor (what every :class:`Leaves` method takes)."""
        return {name: getattr(self, name) for name in self.leaves.parameter_names}

    @property
    def _ref(self) -> torch.Tensor:
        """A leaf parameter: its device and dtype are the model's."""
        return getattr(self, self.leaves.parameter_names[0])

    @property
    def variance(self) -> torch.Tensor:
        """Gaussian leaf variances (D, R, K, C)."""
        if not isinstance(self.leaves, GaussianLeaves):
            raise AttributeError(f"a circuit with {self.leaf} leaves has no variances")
        return self.leaves.variance(self._leaf_params())

    @property
    def probability(self) -> torch.Tensor:
        """Binomial leaf success probabilities (D, R, K, C)."""
        if not isinstance(self.leaves, BinomialLeaves):
            raise AttributeError(f"a circuit with {self.leaf} leaves has no success probabilities")
        return self.leaves.probability(self._leaf_params())

    def _weights(self) -> dict[str, torch.Tensor]:
        """Normalised weights: einsum (P, Ki*Kj, Ko) over dim 1; mixing (M, Cmax, Ko) over dim 1."""
        out = {}
        for layer in self.layers:
            for g in layer.groups:
                out[g.param] = torch.softmax(getattr(self, g.param), dim=1)
            for m in layer.mixing.values():
                logits = torch.full((*m.mask.shape, m.k_out), float("-inf"), dtype=self._ref.dtype,
                                    device=self._ref.device)
                logits = logits.masked_scatter(m.mask[..., None].expand_as(logits),
                                               getattr(self, m.param))
                out[m.param] = torch.softmax(logits, dim=1)  # padded partitions get weight exactly 0
        return out

    # -- inputs ------------------------------------------------------------------------------

    def _prepare(self, x: Any, mask: Any = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, D, C) float tensor with missing entries zeroed, and the (N, D) observed mask."""
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if not isinstance(x, torch.Tensor):
            raise InputError(f"x must be a torch tensor or numpy array, got {type(x).__name__}")
        D, C = self.num_var, self.num_dims
        if x.ndim == 2 and x.shape[1] == D * C:
            x = x.reshape(x.shape[0], D, C)
        elif not (x.ndim == 3 and x.shape[1:] == (D, C)):
            want = f"(N, {D})" if C == 1 else f"(N, {D}, {C}) or (N, {D * C})"
            raise InputError(f"x has shape {tuple(x.shape)}; this circuit expects {want}")
        if x.dtype == torch.bool or x.is_complex():
            raise InputError(f"x has dtype {x.dtype}; expected real numbers (integer counts "
                             f"for Binomial leaves)")
        if not x.is_floating_point():
            x = x.to(self._ref.dtype)
        x = x.to(device=self._ref.device, dtype=self._ref.dtype)
        if mask is not None:
            if isinstance(mask, np.ndarray):
                mask = torch.from_numpy(mask)
            if not isinstance(mask, torch.Tensor) or mask.shape != (x.shape[0], D):
                raise InputError(f"mask must be a bool tensor of shape {(x.shape[0], D)} (True = observed), "
                                 f"got {getattr(mask, 'shape', type(mask).__name__)}")
            mask = mask.to(device=x.device, dtype=torch.bool)
            if not bool(torch.isfinite(x[mask]).all()):
                raise InputError("x contains NaN or infinite values at observed entries")
            x = torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        # a finite sum proves every entry finite in one pass without a mask tensor; only a
        # non-finite sum (NaN, inf, or an overflow of huge finite values) needs the exact check
        elif x.numel() and not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
            raise InputError("x contains NaN or infinite values; pass mask=... to marginalise missing entries")
        self.leaves.check_input(x)
        return x, mask

    # -- forward -----------------------------------------------------------------------------

    def _leaf_log_density(self, x: torch.Tensor) -> torch.Tensor:
        """log f_{d,r,k}(x_d): (N, D, R, K), summed over the channels."""
        return self.leaves.log_density(self._leaf_params(), x)

    def _leaf_regions(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                      theta: torch.Tensor | None = None) -> torch.Tensor:
        r"""Log-densities of all leaf regions, slot-major (L, N, K), in one batched matmul.

        :math:`\log\ell_{l,k}(x) = \sum_{d\in S_l}\sum_f T_f(x_d)\,\theta_{d,r_l,k,f}` with the
        leaf layer's features T (zeroed where ``mask`` is False: marginalised) and natural
        parameters :math:`\theta` (default :meth:`.leaves.Leaves.natural`); equals summing
        :meth:`_leaf_log_density` over every scope (the reference path, :meth:`_forward`).
        """
        feats = self.leaves.features(x)                                          # (N, D, F)
        if mask is not None:
            feats = feats * mask[..., None].to(feats.dtype)
        if theta is None:
            theta = self.leaves.natural(self._leaf_params())                      # (D, R, K, F)
        L, S = self._region_var.shape
        N, F = feats.shape[0], feats.shape[-1]
        # (D + 1, F, N): variables first so the gather below is contiguous, plus the zero row
        feats_t = nn.functional.pad(feats, (0, 0, 0, 1)).permute(1, 2, 0).contiguous()
        fx = feats_t.index_select(0, self._region_var.flatten()).view(L, S * F, N)
        th = theta[self._region_var_theta, self._region_rep]                     # (L, S, K, F)
        th = th.transpose(2, 3).reshape(L, S * F, th.shape[2])
        return torch.bmm(fx.transpose(1, 2), th)                                 # (L, N, K)

    def _forward(self, logf: torch.Tensor, weights: dict[str, torch.Tensor],
                 keep: bool = False, reference: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
        """Root log-density (N,) from leaf log-factors (N, D, R, K) (0 where marginalised),
        summed into the leaf regions factor by factor (``reference``: by the reference inner
        layers too)."""
        N = logf.shape[0]
        factors = logf[:, self._leaf_var, self._leaf_rep]                       # (N, pairs, K)
        leaf = torch.zeros(N, self._n_leaf_regions, logf.shape[-1], dtype=logf.dtype, device=logf.device)
        leaf = leaf.index_add(1, self._leaf_slot, factors)
        if reference:
            return self._inner_reference(leaf, weights, keep)
        return self._inner(leaf.transpose(0, 1), weights, keep)

    def _inner(self, leaf: torch.Tensor, weights: dict[str, torch.Tensor],
               keep: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
        """Root log-density (N,) from the leaf regions' log-densities, slot-major (L, N, K):
        einsum and mixing layers; ``keep`` also returns every layer's values (N, slots, K) views,
        for conditional draws).

        Every store is slot-major, (slots, N, K), so gathering a layer's children is a contiguous
        ``index_select`` and each einsum group is one ``bmm`` over its partitions without a
        permuted copy; a layer whose groups fill its partitions in order skips the scatter."""
        N = leaf.shape[1]
        store: dict[int, torch.Tensor] = {self._leaf_k: leaf}
        parts_kept = []
        for layer in self.layers:
            parts: dict[int, list[torch.Tensor]] = defaultdict(list)
            for g in layer.groups:
                a = store[g.k_left].index_select(0, g.left)                     # (P, N, Ki)
                b = store[g.k_right].index_select(0, g.right)                   # (P, N, Kj)
                a_max = a.detach().amax(-1, keepdim=True)
                b_max = b.detach().amax(-1, keepdim=True)
                outer = ((a - a_max).exp()[..., :, None] * (b - b_max).exp()[..., None, :]).flatten(2)
                prod = torch.bmm(outer, weights[g.param])                       # (P, N, Ko)
                tiny = torch.finfo(prod.dtype).tiny
                parts[g.k_out].append(prod.clamp_min(tiny).log() + (a_max + b_max))
            part_store = {}
            for ko, items in parts.items():
                vals = items[0] if len(items) == 1 else torch.cat(items, 0)
                order = layer.part_order[ko]
                part_store[ko] = vals if order is None else \
                    torch.empty_like(vals).index_copy(0, order, vals)
            for ko, pstore in part_store.items():
                outs = []
                if len(layer.single[ko]):
                    outs.append(pstore.index_select(0, layer.single[ko]))
                if ko in layer.mixing:
                    m = layer.mixing[ko]
                    M, C = m.index.shape
                    vals = pstore.index_select(0, m.index.flatten()).view(M, C, N, ko)
                    v_max = vals.detach().amax(1, keepdim=True)
                    s = (weights[m.param][:, :, None, :] * (vals - v_max).exp()).sum(1)   # (M, N, Ko)
                    outs.append(s.clamp_min(torch.finfo(s.dtype).tiny).log() + v_max[:, 0])
                new = outs[0] if len(outs) == 1 else torch.cat(outs, 0)
                store[ko] = torch.cat([store[ko], new], 0) if ko in store else new
            parts_kept.append(part_store)
        out = store[self._root_k][self._root_slot, :, 0]
        if not keep:
            return out, {}
        return out, {"store": {k: v.transpose(0, 1) for k, v in store.items()},
                     "parts": [{k: v.transpose(0, 1) for k, v in ps.items()} for ps in parts_kept]}

    def _inner_reference(self, leaf: torch.Tensor, weights: dict[str, torch.Tensor],
                         keep: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
        """Reference of :meth:`_inner`, sample-major: leaf (N, L, K), stores (N, slots, K)."""
        N = leaf.shape[0]
        store: dict[int, torch.Tensor] = {self._leaf_k: leaf}
        parts_kept = []
        for layer in self.layers:
            parts: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
            for g in layer.groups:
                a, b = store[g.k_left][:, g.left], store[g.k_right][:, g.right]   # (N, P, K)
                a_max = a.detach().amax(-1, keepdim=True)
                b_max = b.detach().amax(-1, keepdim=True)
                outer = ((a - a_max).exp()[..., :, None] * (b - b_max).exp()[..., None, :]).flatten(2)
                prod = torch.einsum("npi,pio->npo", outer, weights[g.param])
                tiny = torch.finfo(prod.dtype).tiny
                parts[g.k_out].append((g.part_pos, prod.clamp_min(tiny).log() + a_max + b_max))
            part_store = {}
            for ko, items in parts.items():
                t = torch.empty(N, layer.n_parts[ko], ko, dtype=leaf.dtype, device=leaf.device)
                pos = torch.cat([p for p, _ in items])
                part_store[ko] = t.index_copy(1, pos, torch.cat([v for _, v in items], dim=1))
            for ko, pstore in part_store.items():
                outs = [pstore[:, layer.single[ko]]]
                if ko in layer.mixing:
                    m = layer.mixing[ko]
                    vals = pstore[:, m.index]                                  # (N, M, Cmax, Ko)
                    v_max = vals.detach().amax(2, keepdim=True)
                    s = (weights[m.param] * (vals - v_max).exp()).sum(2)
                    outs.append(s.clamp_min(torch.finfo(s.dtype).tiny).log() + v_max[:, :, 0])
                new = torch.cat(outs, dim=1)
                store[ko] = torch.cat([store[ko], new], dim=1) if ko in store else new
            parts_kept.append(part_store)
        out = store[self._root_k][:, self._root_slot, 0]
        return out, ({"store": store, "parts": parts_kept} if keep else {})

    def log_prob(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        r"""Exact log-density (N,) of x (N, D) (or (N, D, C) / (N, D*C) with ``num_dims`` = C).

        With ``mask`` (N, D) bool, True = observed, the missing variables are marginalised
        exactly: their leaf factors become :math:`\log 1 = 0` (their values, even NaN, are ignored).
        """
        x, mask = self._prepare(x, mask)
        return self._inner(self._leaf_regions(x, mask), self._weights())[0]

    def _log_prob_reference(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`log_prob` by the reference path: every leaf factor (N, D, R, K) evaluated and
        summed into its region one by one (what the fused path must equal)."""
        x, mask = self._prepare(x, mask)
        logf = self._leaf_log_density(x)
        if mask is not None:
            logf = logf * mask[:, :, None, None].to(logf.dtype)
        return self._forward(logf, self._weights(), reference=True)[0]

    def marginal_log_prob(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``log_prob(x, mask)``: log-density of the observed entries (``mask`` True)."""
        return self.log_prob(x, mask)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.log_prob(x, mask)

    # -- closed-form score for exact score matching -------------------------------------------

    def score_and_laplacian(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Score :math:`s = \nabla_x \log p` (N, D*C) and Laplacian :math:`\mathrm{tr}\,\nabla_x^2 \log p` (N,).

        p is linear in the factors :math:`f_{d,j}` of any one variable, so with
        :math:`q_{d,j} = \partial\log p/\partial\log f_{d,j}`, :math:`g = \partial_x \log f = -(x-\mu)/\sigma^2`
        and :math:`h = -1/\sigma^2` (per channel):
        :math:`s_d = \sum_j q_{d,j} g_{d,j}`,
        :math:`\partial^2_{x_d}\log p = \sum_j q_{d,j}(g_{d,j}^2 + h_{d,j}) - s_d^2`.
        One backward pass with ``create_graph`` gives every q, so the cost does not grow with D;
        the result stays differentiable in the parameters (used by ``score_matching``).
        """
        x, _ = self._prepare(x)
        x = x.detach()
        g, h = self._leaf_derivatives(x)                                         # (N, D, R, K, C)
        logf = self._leaf_log_density(x)
        if not logf.requires_grad:
            logf.requires_grad_(True)
        logp = self._forward(logf, self._weights())[0]
        q = torch.autograd.grad(logp.sum(), logf, create_graph=True)[0][..., None]
        s = (q * g).sum((2, 3))                                                  # (N, D, C)
        second = (q * (g * g + h)).sum((2, 3)) - s * s
        return s.flatten(1), second.flatten(1).sum(1)

    def _leaf_derivatives(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """First and second x-derivatives of every log f (broadcast to (N, D, R, K, C))."""
        return self.leaves.derivatives(self._leaf_params(), x)

    # -- EM through the gradient --------------------------------------------------------------

    def em_accumulate(self, x: torch.Tensor) -> torch.Tensor:
        r"""E-step on a batch: add expected counts and leaf statistics; returns log p (N,).

        With :math:`L = \sum_b \log p(x_b)`: weight counts :math:`n = W \odot \partial L/\partial W`,
        leaf responsibilities :math:`q = \partial L / \partial \log f` (summing to 1 over (k, r)
        for every sample and variable) and the leaf layer's statistics (:math:`\sum_b q`,
        :math:`\sum_b q x`, and :math:`\sum_b q x^2` for Gaussian leaves).
        """
        x, _ = self._prepare(x)
        x = x.detach()
        with torch.enable_grad():
            weights = {k: w.detach().requires_grad_(True) for k, w in self._weights().items()}
            theta = self.leaves.natural(self._leaf_params()).detach().requires_grad_(True)
            logp = self._inner(self._leaf_regions(x, theta=theta), weights)[0]
            grads = torch.autograd.grad(logp.sum(), [theta, *weights.values()])
        # dL/dtheta = sum_b q T(x_b): the statistics without forming q (N, D, R, K)
        stats = self.leaves.natural_statistics(grads[0])
        self._add_em_statistics(stats, weights, grads[1:])
        return logp.detach()

    def _em_accumulate_reference(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`em_accumulate` by the reference path: q (N, D, R, K) from the leaf factors,
        statistics by :meth:`.leaves.Leaves.em_statistics` (what the fused path must equal)."""
        x, _ = self._prepare(x)
        x = x.detach()
        with torch.enable_grad():
            weights = {k: w.detach().requires_grad_(True) for k, w in self._weights().items()}
            logf = self._leaf_log_density(x).detach().requires_grad_(True)
            logp = self._forward(logf, weights, reference=True)[0]
            grads = torch.autograd.grad(logp.sum(), [logf, *weights.values()])
        q = grads[0]                                                             # (N, D, R, K)
        self._add_em_statistics(self.leaves.em_statistics(q, x), weights, grads[1:])
        return logp.detach()

    def _add_em_statistics(self, stats: dict[str, torch.Tensor], weights: dict[str, torch.Tensor],
                           grads: Any) -> None:
        for (name, w), gw in zip(weights.items(), grads):
            stats[name] = w.detach() * gw
        if self._em_stats is None:
            self._em_stats = stats
        else:
            for k, v in stats.items():
                self._em_stats[k] = self._em_stats[k] + v

    def reset_em_statistics(self) -> None:
        """Forget the statistics accumulated since the last update."""
        self._em_stats = None

    @torch.no_grad()
    def em_update(self, stepsize: float | None = None) -> None:
        r"""M-step from the accumulated statistics, then reset them.

        :math:`\hat W \propto n` over each normalisation axis; leaves in expectation form
        :math:`\hat\phi = (\sum q x, \sum q x^2) / (\sum q + 10^{-12})` (:meth:`.leaves.Leaves.em_update`).
        With ``stepsize`` s (online / stepwise EM), :math:`\theta \leftarrow (1-s)\theta + s\hat\theta`
        in (W, φ) space, weights clamped to >= 1e-16 and renormalised. Variances are projected
        onto [min_var, max_var] after every update.
        """
        if self._em_stats is None:
            raise ConfigError("em_update called without statistics; call em_accumulate first")
        if stepsize is not None and not 0.0 < stepsize <= 1.0:
            raise ConfigError(f"stepsize must be in (0, 1], got {stepsize}")
        st = self._em_stats
        s = 1.0 if stepsize is None else float(stepsize)
        current = self._weights()
        for layer in self.layers:
            for g in layer.groups:
                self._update_weights(g.param, st[g.param], current[g.param], s, None)
            for m in layer.mixing.values():
                self._update_weights(m.param, st[m.param], current[m.param], s, m.mask[..., None])
        self.leaves.em_update(self._leaf_params(), st, s)
        self._em_stats = None

    def _update_weights(self, name: str, counts: torch.Tensor, current: torch.Tensor, s: float,
                        mask: torch.Tensor | None) -> None:
        total = counts.sum(1, keepdim=True)
        # a region output that no sample used keeps its weights (its counts carry no information)
        w_hat = torch.where(total > 0, counts / total.clamp_min(1e-300), current)
        w = (1 - s) * current + s * w_hat
        if s < 1.0:
            w = w.clamp_min(1e-16)
            if mask is not None:
                w = w * mask
            w = w / w.sum(1, keepdim=True)
        logits = w.clamp_min(torch.finfo(w.dtype).tiny).log()
        p = getattr(self, name)
        if mask is None:
            p.data.copy_(logits)
        else:
            p.data.copy_(logits[mask.expand_as(logits)])

    def em_step(self, x: torch.Tensor, stepsize: float | None = None) -> float:
        """One full-batch EM iteration on x; returns the mean log-likelihood before the update."""
        logp = self.em_accumulate(x)
        self.em_update(stepsize)
        return float(logp.mean())

    def check_input(self, x: Any) -> torch.Tensor:
        """``x`` as a tensor after the checks of :meth:`log_prob` (shape, dtype, NaN)."""
        self._prepare(x)
        return torch.from_numpy(x) if isinstance(x, np.ndarray) else x

    def fit_em(self, data: torch.Tensor, *, epochs: int = 1, batch_size: int = 100,
               stepsize: float | None = None, frequency: int = 1, seed: int = 0) -> list[float]:
        """EM over ``data`` for ``epochs``; returns the mean log-likelihood seen in each epoch.

        ``stepsize=None``: batch EM (statistics of the whole epoch, one update per epoch).
        Otherwise online EM: after every ``frequency`` batches a stepwise update with ``stepsize``.
        A shortcut for ``fit(data, objective="em", ...)`` on the one training loop.
        """
        if epochs < 1 or batch_size < 1 or frequency < 1:
            raise ConfigError(f"epochs, batch_size and frequency must be >= 1, got "
                              f"{epochs}, {batch_size}, {frequency}")
        rows = self.fit(data, objective="em", stepsize=stepsize, frequency=frequency,
                        epochs=epochs, batch_size=batch_size, seed=seed, device=str(self.device),
                        initialize=False)
        return [-r["loss"] for r in rows if "loss" in r]

    @torch.no_grad()
    def init_leaves_from_data(self, data: torch.Tensor, seed: int = 0) -> None:
        """Leaf means = the values of random data rows (one row per (k, r)) plus 1% of the data's
        standard deviation as noise; variances = the per-variable data variance, clipped.
        Binomial leaves: p = (value + 0.5) / (N + 1) of the random rows."""
        data, _ = self._prepare(data)
        gen = torch.Generator().manual_seed(seed)
        R, K = self.num_replicas, self.num_input_distributions
        rows = torch.randint(0, data.shape[0], (R * K,), generator=gen).to(data.device)
        pick = data[rows].reshape(R, K, self.num_var, self.num_dims).permute(2, 0, 1, 3)   # (D,R,K,C)
        self.leaves.init_from_data(self._leaf_params(), pick, data, gen)

    # -- sampling ----------------------------------------------------------------------------

    def _draw(self, n: int, x: torch.Tensor | None, mask: torch.Tensor | None, mode: str,
              generator: torch.Generator | None) -> torch.Tensor:
        """Top-down pass (:func:`.sampling.draw`): ``mode`` "sample" or "mpe"."""
        return draw(self, n, x, mask, mode, generator)

    def sample(self, n: int | None = None, *, generator: torch.Generator | None = None,
               condition: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Ancestral samples (n, D) (or (n, D, C)).

        ``condition=(x, mask)`` (mask True = observed) draws the missing entries of every row of
        x from :math:`p(x_{\\text{missing}} \\mid x_{\\text{observed}})` exactly (choices weighted by
        the children's marginal likelihood of the evidence); observed entries are kept. ``n``
        defaults to, and must equal, the number of rows then. ``generator`` may live on the CPU
        (the same draws on every device) or on the model's device.
        """
        if condition is None:
            if n is None or int(n) != n or n < 1:
                raise InputError(f"n must be a positive integer, got {n}")
            return self._draw(int(n), None, None, "sample", generator)
        if not (isinstance(condition, (tuple, list)) and len(condition) == 2):
            raise InputError("condition must be a tuple (x, mask) with mask True where x is observed")
        x, mask = self._prepare(*condition)
        if n is not None and n != x.shape[0]:
            raise InputError(f"n={n} but the condition has {x.shape[0]} rows; one sample per row")
        return self._draw(x.shape[0], x, mask, "sample", generator)

    def complete(self, x: torch.Tensor, mask: torch.Tensor, *, method: str = "mpe",
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Fill the missing entries (``mask`` False) of x; observed entries are returned unchanged.

        ``method="mpe"``: the usual EinsumNetwork MPE approximation (at every sum the most probable
        child under the evidence, leaves at their modes); ``"sample"``: one conditional sample.
        """
        if method not in ("mpe", "sample"):
            raise ConfigError(f"Unknown completion method '{method}'; expected 'mpe' or 'sample'")
        x, mask = self._prepare(x, mask)
        if mask is None:
            raise InputError("complete needs a mask (True = observed)")
        return self._draw(x.shape[0], x, mask, method, generator)
