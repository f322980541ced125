r"""The deep GMM with locally connected transformations (van den Oord & Dambre), family
``"deep-gmm"``.

Analysis direction (data -> noise): :math:`h_0 = \mathrm{fold}(x)`,
:math:`h_l = f_{l,c_l}(h_{l-1})`. A path c fixes every discrete variable; its score is

.. math:: s_c(x) = \log\pi_c + \log N(h_L; 0, I) + \sum_l \log|\det J_{f_{l,c_l}}|

with a uniform prior :math:`\log\pi_c = -\sum_{\text{vars}}\log(\#\text{values})` (or, with
``prior="factorised"``, :math:`\log\pi_c = \sum_{l,v}\log\pi_{l,v}[c_{l,v}]`, see
:mod:`.prior`; with ``prior="gating"``, :math:`\log\pi_c(x) = \sum_l \log g_l(h_l)[c_l]`,
see :mod:`.gating`), and
:math:`p(x) = \sum_c e^{s_c(x)}`, a GMM with one component per path. Paths are LongTensors of
shape (N, V): the variables of every layer, data side first (one column for a shared layer, P
for an unshared one; see :attr:`DeepGMM.var_slices`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ...errors import ConfigError, InputError, NoDensityError
from ...utils.tensors import as_matrix
from ..base import Model
from ..gmm import MixtureDensity
from ..registry import register_family
from .config import DeepGMMConfig, parse_layers
from .folding import fold, unfold
from .gating import Gate
from .prior import FactorisedPrior
from .tail import AffineTail, tail_start
from .transforms import (DiagonalTransform, FullTransform, HalfConvolution, SharedBlockTransform,
                         Transform, UnsharedBlockTransform)

__all__ = ["DeepGMM"]

_LOG_2PI = math.log(2.0 * math.pi)
# Elements of the largest activity tensor of exact enumeration per chunk.
_EXACT_BUDGET = 1 << 22


def _log_normal(h: torch.Tensor, per_position: bool = False) -> torch.Tensor:
    r""":math:`\log N(h; 0, I)` over the last two dims (or the last one, per position)."""
    q = -0.5 * (h * h + _LOG_2PI)
    return q.sum(-1) if per_position else q.sum((-2, -1))


@register_family
class DeepGMM(Model):
    """Deep GMM with locally connected transformations (block-diagonal, diagonal,
    half-convolution layers; hard EM over paths)."""

    family = "deep-gmm"
    config_class = DeepGMMConfig
    default_objective = "hard-em"

    def __init__(self, config: DeepGMMConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = DeepGMMConfig(**kwargs)
        elif kwargs:
            raise ConfigError("give either a DeepGMMConfig or keyword options, not both")
        self.config = config
        H, W, C = config.shape
        r = config.fold
        self.grid = (H // r, W // r)
        self.P = self.grid[0] * self.grid[1]
        self.Cb = r * r * C
        self.D = H * W * C
        dtype = getattr(torch, config.dtype)
        layers: list[Transform] = []
        hc_index = 0
        for tok in parse_layers(config.layers):
            if tok.kind == "hc":
                layers.append(HalfConvolution(self.grid, self.Cb, tok.n_values, tok.kernel,
                                              parity=hc_index, bias=tok.bias, dtype=dtype))
                hc_index += 1
            else:
                cls = {"full": FullTransform, "diag": DiagonalTransform,
                       "bd": SharedBlockTransform, "ubd": UnsharedBlockTransform}[tok.kind]
                layers.append(cls(self.grid, self.Cb, tok.n_values, dtype=dtype))
        self.layers = torch.nn.ModuleList(layers)
        #: Gating networks, one per mixing layer (Identity elsewhere), when ``config.gating``.
        gate_gen = torch.Generator().manual_seed(config.seed + 1)
        self.gates = torch.nn.ModuleList(
            [Gate(self.grid, self.Cb, layer.n_values, layer.unshared, config.gate_hidden,
                  dtype=dtype, generator=gate_gen)
             if config.gating and layer.n_values > 1 else torch.nn.Identity()
             for layer in layers])
        #: The factorised prior's weights (``prior="factorised"``), else None.
        self.prior = FactorisedPrior([(layer.n_vars, layer.n_values) for layer in layers],
                                     dtype=dtype) if config.prior == "factorised" else None
        offsets = np.cumsum([0] + [layer.n_vars for layer in layers])
        #: Columns of a path tensor that hold each layer's variables.
        self.var_slices = [slice(int(a), int(b)) for a, b in zip(offsets[:-1], offsets[1:])]
        self.n_vars = int(offsets[-1])
        #: :math:`\log \#\text{paths} = \sum_{\text{vars}} \log \#\text{values}`.
        self.log_n_paths = float(sum(layer.n_vars * math.log(layer.n_values)
                                     for layer in layers))
        #: Subtracted before folding (the training mean after initialize, with ``center``).
        self.register_buffer("offset", torch.zeros(self.D, dtype=dtype))
        #: Index of the shared per-position affine tail scored by :class:`AffineTail`, or None.
        self.tail_start = tail_start(self.layers, config.gating)
        self._tail_cache: tuple[Any, AffineTail] | None = None
        g = torch.Generator().manual_seed(config.seed)
        self._perturb(g)

    @classmethod
    def from_config(cls, config: DeepGMMConfig) -> "DeepGMM":
        return cls(config)

    # ------------------------------------------------------------------------------ basics
    def spec(self) -> str:
        return ",".join(layer.spec() for layer in self.layers)

    def n_params(self) -> int:
        """Number of parameters of the transformations (biases included; gates excluded, see
        :meth:`n_gate_params`)."""
        return sum(layer.n_params() for layer in self.layers)

    def n_gate_params(self) -> int:
        """Number of parameters of the gating networks (0 without ``gating``)."""
        return sum(p.numel() for p in self.gates.parameters())

    def n_paths(self) -> float:
        """The number of paths :math:`\\prod_{\\text{vars}} \\#\\text{values}` (a float:
        unshared stacks have astronomically many)."""
        return math.exp(self.log_n_paths)

    @property
    def log_prior(self) -> float:
        """Uniform :math:`\\log\\pi_c = -\\log\\#\\text{paths}` (the factorised prior adds
        :meth:`_prior_term` per layer instead)."""
        return -self.log_n_paths

    def _prior_term(self, i: int, c: torch.Tensor) -> torch.Tensor | float:
        """:math:`\\log\\pi_i[c_i]` (N,) of layer i under the factorised prior (0 otherwise or
        for a layer with one value)."""
        if self.prior is None or self.layers[i].n_values == 1:
            return 0.0
        return self.prior.log_prob(i, c)

    def _prior_table(self, i: int) -> torch.Tensor | None:
        """(n_vars, n_values) log-weights of layer i under the factorised prior, else None."""
        if self.prior is None or self.layers[i].n_values == 1:
            return None
        return self.prior.log_weights(i)

    def prior_paths(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, V) paths drawn from the (non-gated) prior: uniform or factorised."""
        if self.prior is None:
            return self.random_paths(n, generator)
        return torch.cat([self.prior.sample(i, n, generator).to(self.device)
                          for i in range(len(self.layers))], 1)

    @torch.no_grad()
    def path_counts(self, c: torch.Tensor) -> list[torch.Tensor]:
        """Usage counts (n_vars, n_values) of every layer's variables in paths c (N, V)."""
        out = []
        for layer, cl in zip(self.layers, self.split(c.to(self.device))):
            onehot = torch.zeros(layer.n_vars, layer.n_values, dtype=torch.float64,
                                 device=self.device)
            onehot.scatter_add_(1, cl.T, torch.ones(cl.T.shape, dtype=torch.float64,
                                                    device=self.device))
            out.append(onehot)
        return out

    def set_prior_from_counts(self, counts: list[torch.Tensor], smoothing: float = 1.0) -> None:
        r"""The factorised prior's closed-form M step: :math:`\pi_{l,v}[j] \propto
        n_{l,v,j} + \alpha` (a :class:`ConfigError` for another prior)."""
        if self.prior is None:
            raise ConfigError(f"the deep GMM has prior '{self.config.prior}'; usage weights "
                              f"need prior='factorised'")
        self.prior.set_from_counts(counts, smoothing)

    def check_input(self, x: Any) -> torch.Tensor:
        """``x`` as (N, D) rows of the model's dtype: rows in (H, W, C) order or (N, H, W, C)
        images; errors name a wrong type, shape, dtype or NaN."""
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(x))
        if torch.is_tensor(x) and x.ndim == 4:
            if tuple(x.shape[1:]) != tuple(self.config.shape):
                raise InputError(f"images of shape {tuple(x.shape[1:])}; the model takes "
                                 f"{tuple(self.config.shape)}")
            x = x.reshape(x.shape[0], -1)
        return as_matrix(x, self.dtype, self.device, n_features=self.D)

    def fold(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) rows -> (N, P, Cb) folded activities of ``x - offset`` (see :mod:`.folding`)."""
        x = x - self.offset
        return fold(x.reshape(x.shape[0], *self.config.shape), self.config.fold)

    def unfold(self, h: torch.Tensor) -> torch.Tensor:
        """(N, P, Cb) -> (N, D) rows."""
        H, W, _ = self.config.shape
        return unfold(h, self.config.fold, (H, W)).reshape(h.shape[0], self.D) + self.offset

    def split(self, c: torch.Tensor) -> list[torch.Tensor]:
        """A path tensor (N, V) as the per-layer choice tensors (N, n_vars_l)."""
        return [c[:, s] for s in self.var_slices]

    def random_paths(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, V) paths drawn uniformly."""
        where = generator.device if generator is not None else self.device
        cols = [torch.randint(layer.n_values, (n, layer.n_vars), generator=generator,
                              device=where) for layer in self.layers]
        return torch.cat(cols, 1).to(self.device)

    def check_invertible(self) -> None:
        """A :class:`ConfigError` naming the first layer value whose map is singular."""
        for i, layer in enumerate(self.layers):
            table = layer.logdet_table()
            bad = ~torch.isfinite(table)
            if bool(bad.any()):
                v = int(bad.nonzero()[0, 0])
                raise ConfigError(f"deep GMM layer {i + 1} ({layer.spec()}) value {v} is not "
                                  f"invertible (log|det| = {float(table[v].detach())}); re-initialise "
                                  f"it")

    # ------------------------------------------------------------------------ path scores
    def transform(self, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:math:`(h_L, \\sum_l \\log|\\det J_l|)` of folded ``h`` (N, P, Cb) under paths c."""
        logdet = h.new_zeros(h.shape[0])
        for layer, cl in zip(self.layers, self.split(c)):
            h = layer(h, cl)
            logdet = logdet + layer.log_det(cl)
        return h, logdet

    def path_score(self, x: Any, c: torch.Tensor) -> torch.Tensor:
        """:math:`s_c(x)` (N,) for rows x and paths c (N, V); differentiable (the M step)."""
        x = self.check_input(x)
        return self.score_folded(self.fold(x), c.to(self.device))

    def score_folded(self, h0: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """:math:`s_c` of already folded, checked activities h0 (N, P, Cb)."""
        return self._score_activities(self._activities(h0, c), c)

    def _gate_term(self, i: int, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor | float:
        """:math:`\\log g_i(h_i)[c_i]` (0 for a layer without a gate)."""
        gate = self.gates[i]
        return gate.log_prob(h, c) if isinstance(gate, Gate) else 0.0

    def gate_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.gates.parameters())

    def transform_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.layers.parameters())

    # ---------------------------------------------------------------------- path search
    def _chains(self) -> float:
        """Chains per position of a factorising stack (inf if it does not factorise)."""
        first = self.factorised_from()
        if first is None:
            return math.inf
        return float(np.prod([layer.n_values for layer in self.layers[first:]]))

    def _exact_tractable(self) -> bool:
        return min(self.n_paths(), self._chains()) <= self.config.max_exact_paths

    def _exact_chunk(self) -> int:
        """Samples per chunk of exact enumeration (its largest tensor: #paths x chunk x D)."""
        k = min(self.n_paths(), self._chains())
        per_row = k * self.D
        if self.tail_start is not None and self.n_paths() <= self.config.max_exact_paths:
            # The tail's rows: prefix paths x (activities, packed statistics, tail scores).
            tail = self.layers[self.tail_start:]
            q = math.prod(layer.n_values for layer in tail)
            prefix = self.n_paths() / q
            per_row = prefix * max(self.D, self.P * self.Cb * (self.Cb + 3) / 2, q)
        return int(max(1, min(self.config.chunk_size, _EXACT_BUDGET // max(1.0, per_row))))

    def search_method(self, method: str | None = None) -> str:
        """The path search ``search`` runs for ``method`` (None: the config's; ``auto``
        resolved): ``"exact"`` or ``"coordinate"``."""
        return self._method(method)

    def _method(self, method: str | None) -> str:
        method = method or self.config.search
        if method == "auto":
            method = "exact" if self._exact_tractable() else "coordinate"
        if method not in ("exact", "coordinate", "beam"):
            raise ConfigError(f"Unknown path search '{method}'; expected exact, coordinate, "
                              f"beam or auto")
        if method == "beam" and any(layer.unshared for layer in self.layers):
            raise ConfigError(f"beam search takes shared layers only ({self.spec()} has an "
                              f"unshared one, whose values multiply per position); use "
                              f"search='coordinate'")
        return method

    @torch.no_grad()
    def search(self, x: Any, start: torch.Tensor | None = None, *, method: str | None = None,
               generator: torch.Generator | None = None,
               random_start: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The E step: the best path found per sample and its score, ((N, V), (N,)).

        ``exact`` enumerates every path; ``coordinate`` runs the paper's schedule: one pass from
        ``start`` (when given) and ``restarts`` passes from one uniformly random path, keeping
        the better per sample, so the result never scores below ``start``. The random paths
        are ``random_start`` (N, V) when given (a shard of a distributed E step takes its rows
        of the paths drawn for all rows), else drawn from ``generator``. Rows are searched
        independently: a row's result does not depend on the others.
        """
        x = self.check_input(x)
        self.check_invertible()
        method = self._method(method)
        out_c, out_s = [], []
        step = self.config.chunk_size
        if method == "exact":
            step = self._exact_chunk()
        randoms = None
        if method == "coordinate":
            if random_start is None:
                randoms = self.random_paths(x.shape[0], generator)
            elif tuple(random_start.shape) != (x.shape[0], self.n_vars):
                raise InputError(f"random_start must be ({x.shape[0]}, {self.n_vars}) paths, "
                                 f"got {tuple(random_start.shape)}")
            else:
                randoms = random_start.to(self.device)
        for a in range(0, x.shape[0], step):
            h0 = self.fold(x[a:a + step])
            if method == "exact" and self.n_paths() > self.config.max_exact_paths:
                if self._chains() > self.config.max_exact_paths:
                    raise ConfigError(f"exact path search over {self.n_paths():.3g} paths is "
                                      f"intractable; use search='coordinate'")
                c, s, _ = self._factorised_all(h0)
            elif method == "exact":
                c, s, _ = self._enumerate(h0)
            elif method == "beam":
                c, s = self._beam(h0, self.config.beam_width)
                if start is not None:
                    c, s = self._or_start(h0, start[a:a + step], c, s)
            else:
                c, s = self._coordinate(h0, randoms[a:a + step], self.config.restarts)
                if start is not None:
                    c, s = self._or_start(h0, start[a:a + step], c, s)
            out_c.append(c)
            out_s.append(s)
        return torch.cat(out_c), torch.cat(out_s)

    def _affine_tail(self) -> AffineTail:
        """The composite maps of the tail's paths, rebuilt when a parameter changed (and on
        every call while autograd tracks them)."""
        start = self.tail_start
        layers = list(self.layers[start:])
        weights = [None if (lw := self._prior_table(i)) is None else lw[0]
                   for i in range(start, len(self.layers))]
        params = [p for layer in layers for p in layer.parameters()]
        if self.prior is not None:
            params += list(self.prior.parameters())
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return AffineTail(layers, weights)
        key = tuple((p._version, p.data_ptr()) for p in params)
        if self._tail_cache is None or self._tail_cache[0] != key:
            with torch.no_grad():
                self._tail_cache = (key, AffineTail(layers, weights))
        return self._tail_cache[1]

    def _enumerate(self, h0: torch.Tensor, *, use_tail: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every path as a tree sharing data-side prefixes: (best path (N, V), its score,
        logsumexp of all path scores). A shared per-position affine tail (``tail_start``) is
        scored for all its paths at once by :class:`AffineTail` (``use_tail=False``: the plain
        tree, the reference)."""
        N = h0.shape[0]
        H = h0[None]                                           # (K, N, P, Cb)
        S = h0.new_zeros(1, N)                                 # prefix log-dets
        C = torch.zeros(1, N, 0, dtype=torch.long, device=h0.device)
        stop = self.tail_start if use_tail and self.tail_start is not None else len(self.layers)
        for li, layer in enumerate(self.layers[:stop]):
            K = H.shape[0]
            flat = H.reshape(K * N, *H.shape[2:])
            table = layer.logdet_table()
            if layer.n_values == 1:
                zeros = torch.zeros(K * N, layer.n_vars, dtype=torch.long, device=h0.device)
                H = layer(flat, zeros).reshape(H.shape)
                S = S + table[0] * layer.n_vars
                C = torch.cat([C, zeros.reshape(K, N, -1)], 2)
                continue
            allv = layer.forward_all(flat)                     # (n, K*N, P, Cb)
            n = layer.n_values
            if not layer.unshared:
                combos = torch.arange(n, device=h0.device)[:, None]          # (Q, 1)
                out = allv.reshape(n, K, N, *H.shape[2:]).transpose(0, 1)    # (K, n, N, ..)
                ld = table                                                    # (Q,)
            else:
                P = layer.P
                grids = torch.meshgrid(*[torch.arange(n, device=h0.device)] * P, indexing="ij")
                combos = torch.stack([g.reshape(-1) for g in grids], 1)       # (Q, P)
                Q = combos.shape[0]
                pos = torch.arange(P, device=h0.device)[None].expand(Q, P)
                sel = allv.permute(0, 2, 1, 3)[combos, pos]                   # (Q, P, KN, Cb)
                out = sel.permute(2, 0, 1, 3).reshape(K, N, Q, P, -1).transpose(1, 2)
                ld = table[combos].sum(1)
            Q = combos.shape[0]
            lw = self._prior_table(li)
            if lw is not None:      # factorised prior: sum_v log pi_v[combo_v], (Q,)
                ld = ld + lw[torch.arange(lw.shape[0], device=h0.device)[None], combos].sum(1)
            H = out.reshape(K * Q, N, *H.shape[2:])
            S = (S[:, None] + ld[None, :, None]).reshape(K * Q, N)
            if self.config.gating:
                gate = self.gates[self._layer_index(layer)]
                cc = combos[None, :, None].expand(K, Q, N, combos.shape[1]).reshape(K * Q * N, -1)
                g = gate.log_prob(H.reshape(K * Q * N, *H.shape[2:]), cc)
                S = S + g.reshape(K * Q, N)
            C = torch.cat([C[:, None].expand(K, Q, N, C.shape[2]),
                           combos[None, :, None].expand(K, Q, N, combos.shape[1])], 3)
            C = C.reshape(K * Q, N, -1)
        prior = self.log_prior if self.config.prior == "uniform" else 0.0
        if stop < len(self.layers):
            tail = self._affine_tail()
            K, Q = H.shape[0], tail.n_paths
            sc = tail.scores(H.reshape(K * N, *H.shape[2:])).reshape(K, N, Q)
            total = (S[:, :, None] + sc + prior).transpose(1, 2).reshape(K * Q, N)
            best_s, best = total.max(0)
            k, q = best // Q, best % Q
            best_c = torch.cat([C[k, torch.arange(N, device=h0.device)], tail.combos[q]], 1)
            return best_c, best_s, torch.logsumexp(total, 0)
        total = S + _log_normal(H) + prior                     # (#paths, N)
        best_s, best = total.max(0)
        best_c = C.gather(0, best[None, :, None].expand(1, N, C.shape[2]))[0]
        return best_c, best_s, torch.logsumexp(total, 0)

    def _or_start(self, h0: torch.Tensor, start: torch.Tensor, c: torch.Tensor,
                  s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample, the better of (c, s) and one coordinate pass from ``start``: so an E
        step never scores below the previous paths."""
        c1, s1 = self._coordinate(h0, start.to(self.device), 1)
        better = s1 >= s
        return torch.where(better[:, None], c1, c), torch.where(better, s1, s)

    def _beam(self, h0: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        r"""[deepmix] Beam search over a shared stack: (best path kept (N, V), its score).

        Data side first, each of the ``width`` kept prefixes of a sample is extended by every
        value of the next layer; a prefix through layer i is ranked by
        :math:`\log N(h_i; 0, I) + \sum_{j \le i} (\log|\det A_{j,c_j}| + \log\pi_j[c_j]
        + \log g_j(h_j)[c_j])`, the score it would have if no layer followed, and the
        ``width`` best per sample stay. The returned score is the exact path score
        :math:`s_c`, so it is a valid lower bound; with ``width`` >= #paths it is the exact
        search."""
        N = h0.shape[0]
        ar = torch.arange(N, device=h0.device)
        H = h0[None]                                           # (B, N, P, Cb)
        S = h0.new_zeros(1, N)
        C = torch.zeros(1, N, 0, dtype=torch.long, device=h0.device)
        for li, layer in enumerate(self.layers):
            B = H.shape[0]
            flat = H.reshape(B * N, *H.shape[2:])
            n = layer.n_values
            table = layer.logdet_table()
            if n == 1:
                zeros = torch.zeros(B * N, layer.n_vars, dtype=torch.long, device=h0.device)
                H = layer(flat, zeros).reshape(H.shape)
                S = S + table[0] * layer.n_vars
                C = torch.cat([C, zeros.reshape(B, N, -1)], 2)
                continue
            out = layer.forward_all(flat).reshape(n, B, N, *H.shape[2:]).transpose(0, 1)
            ld = table
            lw = self._prior_table(li)
            if lw is not None:
                ld = ld + lw[0]
            H = out.reshape(B * n, N, *H.shape[2:])
            S = (S[:, None] + ld[None, :, None]).reshape(B * n, N)
            values = torch.arange(n, device=h0.device)
            if self.config.gating:
                gate = self.gates[self._layer_index(layer)]
                cc = values[None, :, None, None].expand(B, n, N, 1).reshape(B * n * N, 1)
                S = S + gate.log_prob(H.reshape(B * n * N, *H.shape[2:]), cc).reshape(B * n, N)
            C = torch.cat([C[:, None].expand(B, n, N, C.shape[2]),
                           values[None, :, None, None].expand(B, n, N, 1)], 3)
            C = C.reshape(B * n, N, -1)
            if B * n > width:
                keep = (S + _log_normal(H)).topk(width, 0).indices           # (width, N)
                H, S, C = H[keep, ar], S[keep, ar], C[keep, ar]
        prior = self.log_prior if self.config.prior == "uniform" else 0.0
        total = S + _log_normal(H) + prior
        best_s, best = total.max(0)
        return C[best, ar], best_s

    def _layer_index(self, layer: Transform) -> int:
        return next(i for i, m in enumerate(self.layers) if m is layer)

    def _activities(self, h0: torch.Tensor, c: torch.Tensor, start: int = 0,
                    hs: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """[h_0, ..., h_L] under paths c, recomputing h_{start+1..L} of ``hs`` (the rest kept)."""
        hs = [h0] if hs is None else hs[:start + 1]
        for layer, cl in zip(self.layers[start:], self.split(c)[start:]):
            hs.append(layer(hs[-1], cl))
        return hs

    def _score_activities(self, hs: list[torch.Tensor], c: torch.Tensor) -> torch.Tensor:
        """:math:`s_c = \\log\\pi_c + \\log N(h_L; 0, I) + \\sum_i \\log|\\det A_{i,c_i}|` (N,)
        from the activities ``hs`` of paths c, plus gate terms :math:`\\log g_i(h_i)[c_i]` if gated."""
        if self.config.prior == "uniform":
            logdet = hs[0].new_zeros(hs[0].shape[0])
            for layer, cl in zip(self.layers, self.split(c)):
                logdet = logdet + layer.log_det(cl)
            return self.log_prior + _log_normal(hs[-1]) + logdet
        total = hs[0].new_zeros(hs[0].shape[0])
        for i, (layer, cl) in enumerate(zip(self.layers, self.split(c))):
            total = total + layer.log_det(cl) + self._gate_term(i, hs[i + 1], cl) \
                + self._prior_term(i, cl)
        return total + _log_normal(hs[-1])

    def _coordinate(self, h0: torch.Tensor, c: torch.Tensor,
                    passes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``passes`` sweeps of coordinate ascent from paths c, data side first; each layer's
        variable takes its best value with the others fixed (never lowering the score).

        The activities h_0..h_L of the current paths are kept across layers and passes: a
        change at layer i recomputes only h_{i+1..L}, and a coupled proposal's activities
        become the current ones where it is accepted."""
        c = c.clone()
        hs = self._activities(h0, c)
        if passes == 0:
            return c, self._score_activities(hs, c)
        N, L = h0.shape[0], len(self.layers)
        for _ in range(passes):
            for i, layer in enumerate(self.layers):
                if layer.n_values == 1:
                    continue
                parts = self.split(c)
                n = layer.n_values
                cand = layer.forward_all(hs[i])                            # (n, N, P, Cb)
                hh = cand.reshape(n * N, *h0.shape[1:])
                gates = hh.new_zeros(n * N)
                if self.config.gating:
                    values = torch.arange(n, device=h0.device).repeat_interleave(N)
                    gates = gates + self._gate_term(i, hh, values[:, None].expand(
                        n * N, layer.n_vars))
                for j in range(i + 1, L):
                    cj = parts[j].repeat(n, 1)
                    hh = self.layers[j](hh, cj)
                    if self.config.gating:
                        gates = gates + self._gate_term(j, hh, cj)
                hh = hh.reshape(n, N, *h0.shape[1:])
                table = layer.logdet_table()
                lw = self._prior_table(i)                                    # (n_vars, n)
                cols = self.var_slices[i]
                if not layer.unshared:
                    sc = _log_normal(hh) + table[:, None] + gates.reshape(n, N)   # (n, N)
                    if lw is not None:
                        sc = sc + lw[0][:, None]
                    c[:, cols] = sc.argmax(0)[:, None]
                    hs = self._activities(h0, c, i, hs)
                    continue
                # Per-position terms of candidate "value v at every position".
                sc = _log_normal(hh, per_position=True) + table[:, None, None]  # (n, N, P)
                if lw is not None:
                    sc = sc + lw.T[:, None, :]
                proposal = sc.argmax(0)                                       # (N, P)
                if not self.config.gating and all(
                        self.layers[j].per_position for j in range(i + 1, L)):
                    # The score separates over positions: the per-position argmax is exact.
                    c[:, cols] = proposal
                    hs = self._activities(h0, c, i, hs)
                    continue
                # Positions are coupled above [deepmix]: accept the joint proposal only where
                # it raises the path score.
                trial = c.clone()
                trial[:, cols] = proposal
                hs_trial = self._activities(h0, trial, i, hs)
                accept = self._score_activities(hs_trial, trial) > \
                    self._score_activities(hs, c)
                c = torch.where(accept[:, None], trial, c)
                keep = accept.reshape(N, *[1] * (h0.ndim - 1))
                hs = hs[:i + 1] + [torch.where(keep, a, b)
                                   for a, b in zip(hs_trial[i + 1:], hs[i + 1:])]
                if self.config.coupled_update == "sequential" and not bool(accept.all()):
                    rest = (~accept).nonzero().squeeze(1)
                    c[rest] = self._sequential(h0[rest], c[rest], i)
                    hs = self._activities(h0, c, i, hs)
        return c, self._score_activities(hs, c)

    def _sequential(self, h0: torch.Tensor, c: torch.Tensor, i: int) -> torch.Tensor:
        """Position by position, the best value of layer i's variable at that position with all
        others fixed (m full evaluations per position; never lowers the score)."""
        layer = self.layers[i]
        n, N = layer.n_values, h0.shape[0]
        start = self.var_slices[i].start
        hrep = h0.repeat(n, 1, 1)
        values = torch.arange(n, device=h0.device).repeat_interleave(N)
        for p in range(layer.n_vars):
            trial = c.repeat(n, 1)
            trial[:, start + p] = values
            best = self.score_folded(hrep, trial).reshape(n, N).argmax(0)
            c = c.clone()
            c[:, start + p] = best
        return c

    # ---------------------------------------------------------------------- evaluation
    def log_prob_lower_bound(self, x: Any, *, method: str | None = None,
                             generator: torch.Generator | None = None) -> torch.Tensor:
        """LB(x) = :math:`s_c(x)` of the best path found (a valid lower bound), nats, (N,)."""
        return self.search(x, method=method, generator=generator)[1]

    def log_prob_upper_bound_approx(self, x: Any, *, method: str | None = None,
                                    generator: torch.Generator | None = None) -> torch.Tensor:
        """UB*(x) = LB(x) + log #paths (approximate: a better path may exist), nats, (N,).

        Any prior: :math:`\\sum_c \\pi_c N_c \\le \\#\\text{paths}\\cdot\\max_c \\pi_c N_c`."""
        return self.log_prob_lower_bound(x, method=method, generator=generator) \
            + self.log_n_paths

    def factorised_from(self) -> int | None:
        """Index of the first mixing layer when p(x) factorises over positions above it
        (every layer from there on works per position and every mixing layer is unshared),
        else None."""
        first = next((i for i, layer in enumerate(self.layers) if layer.n_values > 1), None)
        if first is None:
            return None
        rest = self.layers[first:]
        if self.config.prior != "gating" and all(layer.per_position and (layer.unshared or layer.n_values == 1) for layer in rest):
            return first
        return None

    def log_prob(self, x: Any) -> torch.Tensor:
        """Exact :math:`\\log p(x)` (nats, (N,)): by enumerating the paths (at most
        ``max_exact_paths``), or per position for unshared stacks that factorise; else a
        :class:`NoDensityError` naming the bounds."""
        x = self.check_input(x)
        self.check_invertible()
        if self.n_paths() <= self.config.max_exact_paths:
            step = self._exact_chunk()
            return torch.cat([self._enumerate(self.fold(x[a:a + step]))[2]
                              for a in range(0, x.shape[0], step)])
        if self.factorised_from() is not None:
            step = self._exact_chunk()
            return torch.cat([self._factorised(self.fold(x[a:a + step]))
                              for a in range(0, x.shape[0], step)])
        raise NoDensityError(f"the deep GMM {self.spec()} has {self.n_paths():.3g} paths and "
                             f"does not factorise: its exact density is intractable; use "
                             f"log_prob_lower_bound or log_prob_upper_bound_approx")

    def forward(self, x: Any) -> torch.Tensor:
        """:meth:`log_prob`."""
        return self.log_prob(x)

    def _factorised(self, h0: torch.Tensor) -> torch.Tensor:
        """:math:`\\log p = \\sum_p \\log\\sum_{\\text{chains at } p}` (spec section 3)."""
        return self._factorised_all(h0)[2]

    def _factorised_all(self, h0: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For a stack that factorises over positions: (best path (N, V), its score, exact
        log p), by enumerating each position's chains of the mixing layers at once."""
        first = self.factorised_from()
        N = h0.shape[0]
        h = h0
        const = h0.new_zeros(())
        zeros = torch.zeros(N, self.P, dtype=torch.long, device=h0.device)
        for layer in self.layers[:first]:
            h = layer(h, zeros[:, :layer.n_vars])
            const = const + layer.logdet_table()[0] * layer.n_vars
        H = h[None]                                                   # (K, N, P, Cb)
        S = h0.new_zeros(1, N, self.P)
        # chain k's value at every mixing layer (mixed radix, earlier layers slower)
        chains = torch.zeros(1, 0, dtype=torch.long, device=h0.device)
        for li, layer in enumerate(self.layers[first:], first):
            K = H.shape[0]
            flat = H.reshape(K * N, *h.shape[1:])
            table = layer.logdet_table()
            if layer.n_values == 1:
                H = layer(flat, zeros[:, :layer.n_vars].repeat(K, 1)).reshape(H.shape)
                const = const + table[0] * layer.n_vars
                continue
            n = layer.n_values
            H = layer.forward_all(flat).reshape(n, K, N, *h.shape[1:]).transpose(0, 1)
            H = H.reshape(K * n, N, *h.shape[1:])
            S = (S[:, None] + table[None, :, None, None]).reshape(K * n, N, self.P)
            lw = self._prior_table(li)
            if lw is None:
                S = S - math.log(n)                                   # per-position prior
            else:                                                     # factorised: (n, P)
                S = S + lw.T.repeat(K, 1)[:, None, :]
            values = torch.arange(n, device=h0.device)
            chains = torch.cat([chains.repeat_interleave(n, 0),
                                values.repeat(K)[:, None]], 1)
        total = S + _log_normal(H, per_position=True)                 # (K, N, P)
        exact = torch.logsumexp(total, 0).sum(1) + const
        best_s, best_k = total.max(0)                                 # (N, P)
        c = torch.zeros(N, self.n_vars, dtype=torch.long, device=h0.device)
        j = 0
        for layer, cols in zip(self.layers[first:], self.var_slices[first:]):
            if layer.n_values > 1:
                c[:, cols] = chains[best_k, j]
                j += 1
        # Deterministic layers below contribute no prior; the constant holds their log-dets.
        return c, best_s.sum(1) + const, exact

    # ---------------------------------------------------------------------- sampling
    def sample(self, n: int, *, generator: torch.Generator | None = None,
               condition: Any = None) -> torch.Tensor:
        """``n`` rows (n, D): a path from the prior (uniform, factorised, or the gates on the
        way down),
        :math:`\\epsilon \\sim N(0, I)`, the inverses from
        layer L down to 1, unfolded."""
        if condition is not None:
            raise InputError("the deep GMM samples unconditionally (condition=None)")
        return self.sample_with_paths(n, generator=generator)[0]

    @torch.no_grad()
    def sample_with_paths(self, n: int, *, generator: torch.Generator | None = None,
                          paths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows (n, D), their paths (n, V)); ``paths`` fixes the paths instead of drawing
        them from the prior."""
        n = self._check_n(n)
        self.check_invertible()
        c = self.prior_paths(n, generator) if paths is None else paths.to(self.device)
        eps = torch.randn(n, self.P, self.Cb, generator=generator, dtype=self.dtype,
                          device=generator.device if generator is not None else self.device)
        h = eps.to(self.device)
        gated = self.config.gating and paths is None
        for i in reversed(range(len(self.layers))):
            layer, cols = self.layers[i], self.var_slices[i]
            if gated and isinstance(self.gates[i], Gate):
                # c_i ~ g_i(h_i), drawn on the way down from the generation-side input
                c[:, cols] = self.gates[i].sample(h, generator).to(self.device)
            h = layer.inverse(h, c[:, cols])
        return self.unfold(h), c

    # ---------------------------------------------------------------------- initialisation
    @torch.no_grad()
    def _perturb(self, generator: torch.Generator, scale: float = 0.01) -> None:
        """Identity + relative noise N(0, scale²) on every non-HC layer (HC kernels stay 0)."""
        for layer in self.layers:
            if isinstance(layer, HalfConvolution):
                continue
            if isinstance(layer, DiagonalTransform):
                layer.log_scale.copy_(scale * torch.randn(layer.log_scale.shape,
                                                          generator=generator,
                                                          dtype=layer.log_scale.dtype))
                continue
            w = layer.weight
            noise = torch.randn(w.shape, generator=generator, dtype=w.dtype).to(w.device)
            w.add_(scale * noise)

    @torch.no_grad()
    def initialize(self, x: Any, init: str | None = None, *,
                   generator: torch.Generator | None = None, ridge: float = 1e-6) -> "DeepGMM":
        """[deepmix] the offset at the data mean (``center``); HC kernels at 0; the first BD /
        full / diagonal layer from the data side whitens its input (per position for shared BD, pooled over positions for an unshared
        bank): :math:`W = \\mathrm{chol}(\\Sigma + \\epsilon I)^{-1}`, :math:`t = -W\\mu`;
        every other layer the identity; all with relative noise N(0, 0.01²)."""
        if init not in (None, "whiten"):
            raise ConfigError(f"Unknown deep GMM init '{init}'; expected whiten")
        x = self.check_input(x)
        g = generator if generator is not None else torch.Generator().manual_seed(
            self.config.seed)
        for layer in self.layers:
            if isinstance(layer, HalfConvolution):
                for p in layer.parameters():
                    p.zero_()
            elif isinstance(layer, DiagonalTransform):
                layer.log_scale.zero_()
                layer.bias.zero_()
            else:
                layer.weight.copy_(torch.eye(layer.weight.shape[-1], dtype=layer.weight.dtype)
                                   .expand_as(layer.weight))
                layer.bias.zero_()
        self._perturb(g)
        if self.prior is not None:
            for theta in self.prior.logits:
                theta.zero_()                   # uniform until the first M step
        self.offset.copy_(x.mean(0) if self.config.center else torch.zeros_like(self.offset))
        h = self.fold(x)
        zeros = torch.zeros(h.shape[0], self.P, dtype=torch.long, device=self.device)
        for layer in self.layers:
            if not isinstance(layer, HalfConvolution):
                self._whiten(layer, h, ridge)
                break
            h = layer(h, zeros[:, :layer.n_vars])
        self.check_invertible()
        return self

    @classmethod
    @torch.no_grad()
    def from_gaussian_mixture(cls, gmm: Any, shape: tuple[int, int, int], *, fold: int = 4,
                              layers: str | None = None, variance_floor: float | None = None,
                              floor_weight: float = 0.01, **options: Any) -> "DeepGMM":
        r"""[deepmix] A deep GMM whose density is exactly the diagonal GMM ``gmm`` (a fitted
        :class:`deepmix.GaussianMixture`, scikit-learn ``GaussianMixture`` or a
        :class:`~deepmix.models.MixtureDensity`, ``diag`` or ``spherical``), to train further.

        ``layers`` (default ``"hc5,hc5,hc5,diag<K>"``) must hold exactly one ``diag<K>`` layer
        with K = the mixture's components; every other layer starts as the identity (HC
        kernels 0, block matrices I, biases 0) and the prior is ``factorised`` with the
        mixture's weights. With offset :math:`o` (the mixture's mean under ``center``, else
        0), :math:`h = \mathrm{fold}(x - o)` and the diag layer's value k
        :math:`a_k = -\tfrac12\log\sigma_k^2`, :math:`t_k = -e^{a_k}\,\mathrm{fold}(\mu_k - o)`,
        path k scores :math:`\log w_k + \log N(x; \mu_k, \mathrm{diag}\,\sigma_k^2)`.
        ``variance_floor`` f [deepmix]: ``layers`` must then hold one ``diag2`` layer on the
        noise side of ``diag<K>``; its value 0 is the identity and its value 1 widens every
        component at pixel i by :math:`c_i = \max(1, f / \mathrm{median}_k \sigma^2_{ki})`, with
        prior weights :math:`(1 - \epsilon, \epsilon)`, :math:`\epsilon` = ``floor_weight``:

        .. math:: p(x) = \sum_k w_k \big[(1-\epsilon)\,N(x; \mu_k, \sigma_k^2)
                  + \epsilon\,N(x; \mu_k, c\,\sigma_k^2)\big].

        Why: on dequantised images many pixels are constant in training (variance near the
        dequantisation floor 1/(12 * 256^2)), and a test image with ink there costs ~1e5 nats
        under every narrow component; the wide twins bound that cost for
        :math:`-\log(1-\epsilon)` nats on ordinary images.
        ``options`` are further :class:`DeepGMMConfig` fields (``prior`` must be factorised)."""
        if isinstance(gmm, MixtureDensity):
            kind = gmm.covariance_type
            w, mu, var = gmm.weights, gmm.means, gmm.covariances
        elif all(hasattr(gmm, a) for a in ("weights_", "means_", "covariances_")):
            kind = getattr(gmm, "covariance_type", "diag")
            w, mu, var = gmm.weights_, gmm.means_, gmm.covariances_
        else:
            raise InputError(f"from_gaussian_mixture needs a fitted GaussianMixture or a "
                             f"MixtureDensity, got {type(gmm).__name__}")
        w, mu, var = (torch.as_tensor(np.asarray(v.detach().cpu() if torch.is_tensor(v) else v),
                                      dtype=torch.float64) for v in (w, mu, var))
        if kind not in ("diag", "spherical"):
            raise ConfigError(f"from_gaussian_mixture takes a diag or spherical mixture, got "
                              f"covariance_type '{kind}'")
        K, D = mu.shape
        var = var.reshape(K, -1).expand(K, D)
        layers = f"hc5,hc5,hc5,diag{K}" if layers is None else layers
        if options.setdefault("prior", "factorised") != "factorised":
            raise ConfigError(f"from_gaussian_mixture needs prior='factorised' (the mixture's "
                              f"weights), got '{options['prior']}'")
        model = cls(DeepGMMConfig(shape=tuple(shape), fold=fold, layers=layers, **options))
        if model.D != D:
            raise InputError(f"the mixture has {D} features; shape {tuple(shape)} has "
                             f"{model.D}")
        diag = [i for i, layer in enumerate(model.layers)
                if isinstance(layer, DiagonalTransform) and layer.n_values == K]
        if len(diag) != 1:
            raise ConfigError(f"from_gaussian_mixture needs exactly one diag{K} layer in "
                              f"'{layers}' (the mixture's {K} components)")
        for layer in model.layers:
            for p in layer.parameters():
                p.zero_()
            if isinstance(layer, (FullTransform, SharedBlockTransform, UnsharedBlockTransform)):
                layer.weight.copy_(torch.eye(layer.weight.shape[-1], dtype=layer.weight.dtype)
                                   .expand_as(layer.weight))
        dtype = model.dtype
        offset = (w @ mu) if model.config.center else torch.zeros(D, dtype=torch.float64)
        model.offset.copy_(offset.to(dtype))
        H, W, C = model.config.shape
        layer = model.layers[diag[0]]
        # (the argument ``fold`` shadows the function here)
        a = model.fold((-0.5 * var.log()).to(dtype) + model.offset)                # (K, P, Cb)
        m = model.fold(mu.to(dtype))
        layer.log_scale.copy_(a.to(dtype))
        layer.bias.copy_((-(a.exp()) * m).to(dtype))
        counts = [torch.ones(lay.n_vars, lay.n_values, dtype=torch.float64)
                  for lay in model.layers]
        counts[diag[0]] = w.reshape(1, K)
        if variance_floor is not None:
            wide = model._widen(diag[0], var, variance_floor, floor_weight)
            counts[wide] = torch.tensor([[1.0 - floor_weight, floor_weight]], dtype=torch.float64)
        model.set_prior_from_counts(counts, smoothing=0.0)
        model.check_invertible()
        return model

    def _widen(self, k_layer: int, var: torch.Tensor, floor: float, weight: float) -> int:
        """Set the one ``diag2`` layer above ``k_layer`` to (identity, widen by c); its index."""
        if not (isinstance(floor, (int, float)) and math.isfinite(floor) and floor > 0):
            raise ConfigError(f"variance_floor must be a positive number, got {floor!r}")
        if not (isinstance(weight, (int, float)) and 0.0 < weight < 1.0):
            raise ConfigError(f"floor_weight must lie in (0, 1), got {weight!r}")
        wide = [i for i, layer in enumerate(self.layers)
                if i > k_layer and isinstance(layer, DiagonalTransform) and layer.n_values == 2]
        if len(wide) != 1:
            raise ConfigError(f"variance_floor needs exactly one diag2 layer after the "
                              f"diag{var.shape[0]} layer in '{self.config.layers}'")
        layer = self.layers[wide[0]]
        c = (floor / var.median(0).values).clamp(min=1.0)                      # (D,)
        # fold() subtracts the offset; adding it first folds a per-pixel field unchanged
        b = self.fold((-0.5 * c.log()).to(self.dtype)[None] + self.offset)
        layer.log_scale[1].copy_(b.reshape(layer.log_scale[1].shape))
        return wide[0]

    def _whiten(self, layer: Transform, h: torch.Tensor, ridge: float) -> None:
        N = h.shape[0]
        if isinstance(layer, FullTransform):
            rows = h.reshape(1, N, -1)                                   # (groups, N, d)
        elif isinstance(layer, UnsharedBlockTransform):
            rows = h.reshape(1, N * self.P, self.Cb)
        elif isinstance(layer, DiagonalTransform):
            mean = h.mean(0)
            std = (h.var(0, unbiased=False) + ridge).sqrt()
            layer.log_scale.add_(-std.log())
            layer.bias.copy_(-mean * layer.log_scale.exp())
            return
        else:
            rows = h.transpose(0, 1)                                     # (P, N, Cb)
        mean = rows.mean(1, keepdim=True)
        xc = rows - mean
        cov = xc.transpose(1, 2) @ xc / rows.shape[1]
        eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
        L, info = torch.linalg.cholesky_ex(cov + ridge * eye)
        if bool((info != 0).any()):
            raise ConfigError(f"deep GMM initialisation: the data covariance of layer "
                              f"{layer.spec()} is not positive definite even with ridge "
                              f"{ridge}; raise the ridge")
        Winv = torch.linalg.solve_triangular(L, eye.expand_as(L), upper=False)  # chol^{-1}
        mean = mean.squeeze(1)                                           # (groups, d)
        # Keep the relative perturbation: W_v = (I + noise_v) chol^{-1}.
        w = layer.weight
        if isinstance(layer, FullTransform):
            w.copy_(w @ Winv[0])
            layer.bias.copy_(-(w @ mean[0]))
        elif isinstance(layer, UnsharedBlockTransform):
            w.copy_(w @ Winv[0])
            layer.bias.copy_(-(w @ mean[0]))
        else:                                                            # (n, P, Cb, Cb)
            w.copy_(w @ Winv[None])
            layer.bias.copy_(-torch.einsum("vpij,pj->vpi", w, mean))
