r"""The flat Deep Residual Mixture Model (Hämäläinen & Solin 2020; spec drmm §3).

L layers of K components (:class:`~.layer.RMMLayer`); layer l sees the data residual and the
l-1 latent streams of the layers before it (:math:`D_l = D + (l-1)K`). The data are one packed
(N, W) matrix: a continuous stream ``"x"`` of ``n_features`` columns, then categorical streams
``"c0"``, ``"c1"``, ... of ``blocks * categories`` log-probability columns each.

Density (continuous data): with :math:`r = x - \sum_{l<L}\mu_{l,h_l}` (unit Jacobian),

.. math:: p(x) = \sum_{h_1..h_{L-1}} \sum_k w_{L,k}\, \mathcal N(r; \mu_{L,k}, \Sigma_L)
          \prod_{l<L} p_{L,k,l}[h_l],

enumerated exactly by :meth:`DRMM.log_prob` when :math:`K^{L-1} \le 10^6`; otherwise
:meth:`DRMM.log_prob_is` estimates it by importance sampling with the forward pass as proposal.
Sampling, conditioning (:mod:`.conditions`) and completion run the forward pass (spec §5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError, InputError, NoDensityError
from ...utils.tensors import LOG_2PI, as_matrix
from ..base import Model
from ..registry import register_family
from .conditions import DRMMCondition, ResolvedCondition
from .layer import RMMLayer, Stream, StreamSpec

__all__ = ["DRMMConfig", "DRMM", "ForwardPass", "parameter_count", "MAX_PATHS",
           "EXACT_COMPLETION_PATHS"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: Largest number of latent paths per point that :meth:`DRMM.log_prob` enumerates.
MAX_PATHS = 1_000_000
#: Full paths K^L up to which ``deepmix complete --mode mean`` uses the exact conditional mean.
EXACT_COMPLETION_PATHS = 1 << 18
_ELEMENTS = 1 << 22    # bound on (rows x paths x K x D) elements computed at once


@dataclass
class ForwardPass:
    """What a sampling-mode forward pass leaves: per layer the choices h (n,), the logits
    m (n, K) including constraint factors, whether each row's input held information (n,)
    bool; and the last layer's output streams."""

    choices: list[torch.Tensor]
    logits: list[torch.Tensor]
    informed: list[torch.Tensor]
    last: list[Stream]


def _positive_int(name: str, v: Any, minimum: int = 1) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {v!r}")


@dataclass
class DRMMConfig:
    """Everything that rebuilds a :class:`DRMM` (``config.json`` ``"model"``).

    Arguments:
        n_features: D, the width of the continuous data stream ``"x"`` (0: none).
        n_components: K per layer.
        n_layers: L.
        sigma: ``"scalar"`` (one variance per continuous stream and layer, the reference) or
            ``"diagonal"`` (one per variable).
        categorical: M of each categorical data stream ``"c0"``, ``"c1"``, ...
        categorical_blocks: packed blocks of each categorical stream (empty: 1 each).
        dtype: ``"float32"`` or ``"float64"``.
        positions: > 1 gives every layer one weight vector per patch position (rows
            position-major); used by the patch blocks of an image hierarchy.
        image_shape: (H, W, C) for an image model (:class:`~.hierarchy.PatchDRMM`): patch
            blocks of ``patch_layers[j]`` layers x ``patch_components[j]`` components, then the
            global DRMM of ``n_layers`` x ``n_components``; ``n_features`` = H W C.
        patch_marginals: ``"position"`` (one w per patch position, the paper) or ``"global"``.
    """

    n_features: int = 2
    n_components: int = 16
    n_layers: int = 3
    sigma: str = "scalar"
    categorical: tuple[int, ...] = ()
    categorical_blocks: tuple[int, ...] = ()
    dtype: str = "float32"
    positions: int = 1
    image_shape: tuple[int, ...] = ()
    patch_layers: tuple[int, ...] = ()
    patch_components: tuple[int, ...] = ()
    patch_marginals: str = "position"

    def __post_init__(self) -> None:
        _positive_int("n_features", self.n_features, 0)
        _positive_int("n_components", self.n_components, 1)
        _positive_int("n_layers", self.n_layers, 1)
        if self.sigma not in ("scalar", "diagonal"):
            raise ConfigError(f"Unknown sigma '{self.sigma}'; expected scalar or diagonal")
        self.categorical = tuple(self.categorical)
        self.categorical_blocks = tuple(self.categorical_blocks) or (1,) * len(self.categorical)
        if len(self.categorical_blocks) != len(self.categorical):
            raise ConfigError(f"categorical_blocks has {len(self.categorical_blocks)} entries "
                              f"for {len(self.categorical)} categorical streams")
        for m in self.categorical:
            _positive_int("categories of a categorical stream", m, 2)
        for b in self.categorical_blocks:
            _positive_int("blocks of a categorical stream", b, 1)
        if self.n_features == 0 and not self.categorical:
            raise ConfigError("a DRMM needs data: n_features >= 1 or a categorical stream")
        if self.dtype not in _DTYPES:
            raise ConfigError(f"Unknown dtype '{self.dtype}'; expected float32 or float64")
        _positive_int("positions", self.positions, 1)
        self.image_shape = tuple(self.image_shape)
        self.patch_layers = tuple(self.patch_layers)
        self.patch_components = tuple(self.patch_components)
        if self.image_shape:
            if len(self.image_shape) != 3:
                raise ConfigError(f"image_shape must be (H, W, C), got {self.image_shape}")
            for v in self.image_shape:
                _positive_int("image_shape entries", v, 1)
            if not self.patch_layers:
                raise ConfigError("an image DRMM needs at least one patch block "
                                  "(patch_layers, patch_components)")
        if len(self.patch_layers) != len(self.patch_components):
            raise ConfigError(f"patch_layers has {len(self.patch_layers)} entries, "
                              f"patch_components {len(self.patch_components)}")
        if self.patch_layers and not self.image_shape:
            raise ConfigError("patch blocks need an image_shape (H, W, C)")
        for v in self.patch_layers + self.patch_components:
            _positive_int("patch_layers / patch_components entries", v, 1)
        if self.patch_marginals not in ("position", "global"):
            raise ConfigError(f"Unknown patch_marginals '{self.patch_marginals}'; expected "
                              f"position or global")


def parameter_count(n_features: int, n_components: int, n_layers: int, *,
                    categorical_width: int = 0, sigma: str = "scalar") -> int:
    r"""Parameters of a flat DRMM (spec §3): :math:`\sum_l (D_l K + K + s)` with
    :math:`D_l = D + C + (l-1)K` (C categorical data columns) and s the variance parameters
    (1 scalar, D diagonal, none without a continuous stream); for one continuous stream
    :math:`DLK + K^2 L(L-1)/2 + LK + L`."""
    D, K, L, C = n_features, n_components, n_layers, categorical_width
    s = 0 if D == 0 else (1 if sigma == "scalar" else D)
    return (D + C) * L * K + K * K * L * (L - 1) // 2 + L * K + L * s


@register_family
class DRMM(Model):
    r"""Deep Residual Mixture Model: a stack of RMM layers, each modelling the residual of the
    previous ones plus their latent choices (Hämäläinen & Solin 2020)."""

    family = "drmm"
    config_class = DRMMConfig
    default_objective = "drmm-em"

    #: Variants built by :meth:`from_config` for configs they accept (the image hierarchy).
    _variants: list[type] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        DRMM._variants.append(cls)

    def __init__(self, config: DRMMConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = DRMMConfig(**kwargs)
        elif kwargs:
            raise ConfigError("give DRMM a DRMMConfig or keyword options, not both")
        if config.image_shape:
            raise ConfigError("an image DRMM (image_shape set) is a PatchDRMM: build it with "
                              "DRMM.from_config or PatchDRMM")
        self.config = config
        dtype = _DTYPES[config.dtype]
        data: list[StreamSpec] = []
        if config.n_features:
            data.append(StreamSpec("continuous", config.n_features))
        for m, b in zip(config.categorical, config.categorical_blocks):
            data.append(StreamSpec("categorical", m * b, categories=m, blocks=b))
        self.data_specs = data
        K = config.n_components
        layers = []
        for l in range(config.n_layers):
            latent = [StreamSpec("categorical", K, categories=K, latent=True)
                      for _ in range(l)]
            layers.append(RMMLayer(K, data + latent, sigma=config.sigma,
                                   positions=config.positions, dtype=dtype))
        self.layers = nn.ModuleList(layers)

    @classmethod
    def from_config(cls, config: DRMMConfig) -> "DRMM":
        """The flat DRMM of ``config``, or the variant (:class:`~.hierarchy.PatchDRMM`) that
        takes it."""
        for variant in DRMM._variants:
            if variant.accepts(config):
                return variant(config)
        return DRMM(config)

    @classmethod
    def accepts(cls, config: DRMMConfig) -> bool:
        """Whether this variant builds ``config``."""
        return not config.image_shape

    def stages(self) -> list["DRMM"]:
        """The DRMMs that training fits one after the other (a flat DRMM: itself)."""
        return [self]

    def stage_input(self, j: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage j's training rows and mask for data x."""
        return x, torch.ones_like(x)

    # ------------------------------------------------------------------ shapes and inputs
    @property
    def n_components(self) -> int:
        return self.config.n_components

    @property
    def n_layers(self) -> int:
        return self.config.n_layers

    @property
    def width(self) -> int:
        """Columns of the packed data matrix."""
        return sum(s.width for s in self.data_specs)

    @property
    def stream_names(self) -> tuple[str, ...]:
        names = ("x",) if self.config.n_features else ()
        return names + tuple(f"c{i}" for i in range(len(self.config.categorical)))

    @property
    def n_parameters(self) -> int:
        """Number of trainable scalars (equals :func:`parameter_count`)."""
        return sum(p.numel() for p in self.parameters())

    def check_input(self, x: Any) -> torch.Tensor:
        """``x`` as an (N, W) tensor of the model's dtype and device."""
        return as_matrix(x, self.dtype, self.device, n_features=self.width)

    def split(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> list[Stream]:
        """The packed (N, W) data (and mask, default all known) as data streams."""
        if mask is None:
            mask = torch.ones_like(x)
        out, start = [], 0
        for s in self.data_specs:
            out.append(Stream(x[:, start:start + s.width], mask[:, start:start + s.width]))
            start += s.width
        return out

    @staticmethod
    def pack(streams: list[Stream]) -> torch.Tensor:
        return torch.cat([s.value for s in streams], 1)

    # ------------------------------------------------------------------ forward passes
    def argmax_pass(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[
            list[torch.Tensor], list[Stream]]:
        """Forward pass with :math:`h_l = \\arg\\max_k m_k` (training mode); returns the
        choices and the last layer's output streams."""
        streams = self.split(x, mask)
        hs = []
        for layer in self.layers:
            h = layer.membership(streams).argmax(1)
            streams = layer.advance(streams, h)
            hs.append(h)
        return hs, streams

    def reconstruct(self, hs: list[torch.Tensor], last: list[Stream] | None = None
                    ) -> torch.Tensor:
        """Invert the stack for choices hs from the last output streams (None: zero
        residuals, i.e. :math:`\\sum_l \\hat x_l` for the continuous stream)."""
        n = hs[0].shape[0]
        if last is None:
            top = self.layers[-1]
            last = [Stream(mod.zero_residual(n), torch.zeros_like(mod.zero_residual(n)))
                    for mod in top.streams]
        streams = list(last)
        for layer, h in zip(reversed(self.layers), reversed(hs)):
            streams = layer.inverse(streams, h)
        return self.pack(streams)

    @torch.no_grad()
    def initialize(self, x: Any, init: str | None = None, *,
                   generator: torch.Generator | None = None) -> "DRMM":
        """Data-dependent initialisation, layer by layer on x (spec §4): each layer's
        parameters from its input, then the argmax pass with the new means feeds the next."""
        if init not in (None, "data"):
            raise ConfigError(f"Unknown DRMM init '{init}'; expected data")
        streams = self.split(self.check_input(x))
        for layer in self.layers:
            layer.initialize(streams, generator)
            h = layer.membership(streams).argmax(1)
            streams = layer.advance(streams, h)
        return self

    # ------------------------------------------------------------------ density
    def _continuous_only(self, what: str) -> None:
        if self.config.positions != 1:
            raise InputError(f"{what} covers flat DRMMs; this one has per-position weights")
        if self.config.categorical:
            raise InputError(f"{what} covers models of continuous data only; this DRMM has "
                             f"categorical streams "
                             f"{', '.join(n for n in self.stream_names if n != 'x')}")

    def n_paths(self) -> int:
        """:math:`K^{L-1}`, the latent paths :meth:`log_prob` sums over per point."""
        return self.n_components ** (self.n_layers - 1)

    def _last_layer_terms(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                         list[torch.Tensor]]:
        top = self.layers[-1]
        cont = top.streams[0]
        return (top.log_weights(), cont.mu, cont.variances(),
                [mod.log_p() for mod in top.streams[1:]])            # (K, K) each

    def _log_gauss(self, r: torch.Tensor, mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        """log N(r; mu_k, diag var) for r (..., D) against mu (..., K, D): (..., K)."""
        d = r[..., None, :] - mu
        return -0.5 * ((d * d / var).sum(-1) + torch.log(var).sum() + r.shape[-1] * LOG_2PI)

    def _path_chunks(self, device: torch.device, what: str = "log_prob"):
        r"""The full paths in chunks: per chunk of latent paths (P',) their last-layer centres
        :math:`\sum_{l<L} \mu^l_{h_l} + \mu^L_k` (P', K, D) and log weights (P', K); raises
        where the latent paths are too many to enumerate (``what``: the caller, for errors)."""
        self._continuous_only(what)
        P = self.n_paths()
        if P > MAX_PATHS:
            instead = ("the importance-sampling estimate log_prob_is(x, n_samples=...)"
                       if what == "log_prob" else "complete(x, mask, method='mean')")
            raise NoDensityError(f"{what} would enumerate K^(L-1) = {P} latent paths per "
                                 f"point (more than {MAX_PATHS}); use {instead}")
        log_w, mu, _, log_p = self._last_layer_terms()
        K, D, L = self.n_components, mu.shape[1], self.n_layers
        prev_mu = [layer.streams[0].mu for layer in self.layers[:-1]]
        chunk_p = max(1, min(P, _ELEMENTS // max(1, K * D)))
        for start in range(0, P, chunk_p):
            ids = torch.arange(start, min(P, start + chunk_p), device=device)
            offset = mu.new_zeros(len(ids), D)
            path_log = mu.new_zeros(len(ids), K)
            rest = ids
            for l in range(L - 1):
                h = rest % K
                rest = rest // K
                offset = offset + prev_mu[l][h]
                path_log = path_log + log_p[l][:, h].T
            yield offset[:, None, :] + mu[None], log_w + path_log

    def log_prob(self, x: Any) -> torch.Tensor:
        r""":math:`\log p(x)` in nats (N,) by exact enumeration of the :math:`K^{L-1}` paths
        (spec §3, with the :math:`2\pi` constant); differentiable."""
        x = self.check_input(x)
        var = self._last_layer_terms()[2]
        N, KD = x.shape[0], self.n_components * x.shape[1]
        parts = []
        for centres, weights in self._path_chunks(x.device):
            rows = max(1, _ELEMENTS // max(1, centres.shape[0] * KD))
            col = []
            for s in range(0, N, rows):
                lg = self._log_gauss(x[s:s + rows, None, :], centres, var)    # (n, P', K)
                col.append(torch.logsumexp((lg + weights).flatten(1), 1))
            parts.append(torch.cat(col))
        return torch.logsumexp(torch.stack(parts, 1), 1)

    def exact_completion(self) -> bool:
        """Whether :meth:`conditional_mean` applies and is cheap: continuous streams only and
        at most :data:`EXACT_COMPLETION_PATHS` full paths :math:`K^L`."""
        return (not self.config.categorical
                and self.n_components ** self.n_layers <= EXACT_COMPLETION_PATHS)

    @torch.no_grad()
    def conditional_mean(self, x: Any, mask: Any) -> torch.Tensor:
        r"""The exact :math:`E[x_u \mid x_o]` (N, D) of a continuous-only DRMM, observed entries
        (``mask`` True) returned unchanged: the density is a mixture over all :math:`K^L` paths
        p of :math:`N(c_p, \mathrm{diag}\,\sigma^2_L)`, so

        .. math:: E[x_u \mid x_o] = \sum_p \mathrm{softmax}_p\big(\log \pi_p
                  + \log N(x_o; c_{p,o}, \sigma^2_{L,o})\big)\, c_{p,u},

        the least-squares completion under the model (as ``flat_gmm_inpaint`` is for a GMM),
        summed over path chunks with a running log-sum-exp. Raises where
        :meth:`log_prob` would."""
        xc, mt = self._completion_input(x, mask, self.check_input)
        var = self._last_layer_terms()[2].expand(xc.shape[1])
        m = mt.to(xc.dtype)
        prec = m / var                                                   # (N, D): 0 if unknown
        const = -0.5 * (m * (var.log() + LOG_2PI)).sum(1)                # (N,)
        N, KD = xc.shape[0], self.n_components * xc.shape[1]
        # Distances are expanded into products below; centring data and centres on one point
        # (the mean path centre) keeps them free of cancellation on offset data (spec §9).
        ref = sum(layer.streams[0].mu.mean(0) for layer in self.layers)
        xc0 = xc - ref
        top = xc.new_full((N,), -math.inf)
        acc = xc.new_zeros(N, xc.shape[1])                              # sum_p e_p c_p
        total = xc.new_zeros(N)                                          # sum_p e_p
        for centres, weights in self._path_chunks(xc.device, "conditional_mean"):
            c = centres.flatten(0, 1) - ref                              # (P'K, D)
            w = weights.flatten()
            rows = max(1, _ELEMENTS // max(1, centres.shape[0] * KD))
            for s in range(0, N, rows):
                xs, ps = xc0[s:s + rows], prec[s:s + rows]
                # -1/2 sum_o (x - c)^2 / var, expanded: three products, no (n, P'K, D) tensor
                quad = (xs * xs * ps).sum(1, keepdim=True) - 2 * (xs * ps) @ c.T + ps @ (c * c).T
                a = w - 0.5 * quad + const[s:s + rows, None]             # (n, P'K)
                new = torch.maximum(top[s:s + rows], a.max(1).values)
                scale = torch.exp(top[s:s + rows] - new)
                e = torch.exp(a - new[:, None])
                acc[s:s + rows] = acc[s:s + rows] * scale[:, None] + e @ c
                total[s:s + rows] = total[s:s + rows] * scale + e.sum(1)
                top[s:s + rows] = new
        fill = acc / total[:, None] + ref
        return torch.where(mt, xc, fill)

    @torch.no_grad()
    def log_prob_is(self, x: Any, n_samples: int = 1000, *,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        r"""Importance-sampling estimate of :math:`\log p(x)` (N,):
        :math:`\log \frac1S \sum_s p_L(r^s, h^s) / q(h^s \mid x)`, with :math:`h^s` drawn by
        the forward pass (untruncated, temperature 1) and q the product of its per-layer
        probabilities; consistent as S grows."""
        x = self.check_input(x)
        self._continuous_only("log_prob_is")
        return self._importance(x, self._check_n(n_samples), generator, None)

    def _importance(self, x: torch.Tensor, S: int, generator: torch.Generator | None,
                    truncation: float | None) -> torch.Tensor:
        """The IS estimate with q truncated at ``truncation`` x max (renormalised)."""
        log_w, mu, var, log_p = self._last_layer_terms()
        N = x.shape[0]
        rows = max(1, min(N, 65536 // S))
        out = []
        for s0 in range(0, N, rows):
            xs = x[s0:s0 + rows].repeat_interleave(S, 0)
            streams = self.split(xs)
            log_q = xs.new_zeros(xs.shape[0])
            path_log = xs.new_zeros(xs.shape[0], self.n_components)
            for l, layer in enumerate(self.layers[:-1]):
                lq = torch.log_softmax(layer.membership(streams), 1)
                if truncation:
                    keep = lq >= lq.max(1, keepdim=True).values + math.log(truncation)
                    lq = torch.log_softmax(torch.where(keep, lq, torch.full_like(lq, -math.inf)),
                                           1)
                h = self._draw(lq, generator)
                log_q = log_q + lq.gather(1, h[:, None])[:, 0]
                path_log = path_log + log_p[l][:, h].T
                streams = layer.advance(streams, h)
            r = streams[0].value
            lp = torch.logsumexp(log_w + path_log + self._log_gauss(r, mu, var), 1)
            est = torch.logsumexp((lp - log_q).reshape(-1, S), 1) - math.log(S)
            out.append(est)
        return torch.cat(out)

    @torch.no_grad()
    def reference_log_density(self, x: Any, version: str = "v1", n_passes: int = 32, *,
                              generator: torch.Generator | None = None) -> torch.Tensor:
        r"""The reference code's density scores (spec §3, option ``density``), (N,); not
        normalised densities.

        ``"v1"``: :math:`\log \frac1P \sum_p \sum_k \exp(m^{(p)}_{Lk} - \max_{batch,k}
        m^{(p)}_L)`, the last layer's memberships after P stochastic forward passes, relative
        to the batch maximum (so only comparable inside one call; Fig. 1 uses P = 32).
        ``"v3"``: the importance-sampling form with q truncated at 0.5 x max and without the
        :math:`2\pi` constant, P samples.
        """
        x = self.check_input(x)
        self._continuous_only("reference_log_density")
        P = self._check_n(n_passes)
        if version == "v3":
            half_log_2pi = 0.5 * x.shape[1] * LOG_2PI
            return self._importance(x, P, generator, 0.5) + half_log_2pi
        if version != "v1":
            raise ConfigError(f"Unknown reference density '{version}'; expected v1 or v3")
        passes = []
        for _ in range(P):
            streams = self.split(x)
            for layer in self.layers[:-1]:
                m = layer.membership(streams)
                streams = layer.advance(streams, self._draw(m, generator))
            m = self.layers[-1].membership(streams)
            passes.append(torch.logsumexp(m - m.max(), 1))
        return torch.logsumexp(torch.stack(passes), 0) - math.log(P)

    def _draw(self, log_probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        gdev = generator.device if generator is not None else torch.device("cpu")
        p = torch.softmax(log_probs, 1).to(gdev)
        return torch.multinomial(p, 1, generator=generator)[:, 0].to(log_probs.device)

    # ------------------------------------------------------------------ sampling
    def _resolve(self, condition: Any, n: int) -> ResolvedCondition:
        return ResolvedCondition.resolve(
            condition, n, width=self.width, continuous=self.config.n_features,
            continuous_names=self.stream_names[:1] if self.config.n_features else (),
            dtype=self.dtype, device=self.device)

    @torch.no_grad()
    def sample_with_scores(self, n: int, *, generator: torch.Generator | None = None,
                           condition: DRMMCondition | None = None, temperature: float = 1.0,
                           truncation: float | None = None, noise: bool = False,
                           clamp_observed: bool = False, sort_by_density: bool = False
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Forward sampling (spec §5): n samples (n, W) and their scores (n,), the log of the
        last layer's unnormalised, constraint-including membership
        :math:`\log\sum_k e^{m_k + c_k}` (higher = better fit; the reference sorts by it).

        At every layer: m with the condition's masks, plus the constraint/prior log factors;
        :math:`h \sim \mathrm{softmax}(m/T)` (T = 0: argmax), with probabilities below
        ``truncation`` x max set to 0; then residuals, and the constraints move into residual
        space. The sample is :math:`\sum_l \hat x_l` (categorical: the inverse chain from a
        uniform residual); ``noise`` adds :math:`N(0, \sigma_L^2)`; ``clamp_observed`` copies
        the known values (mask > 0) into the output; ``sort_by_density`` orders the samples
        by score, best first (the reference's default; biased if only the first are kept).
        """
        n = self._check_n(n)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or \
                not (0 <= temperature < math.inf):
            raise InputError(f"temperature must be a number >= 0, got {temperature!r}")
        if truncation is not None and not (isinstance(truncation, (int, float))
                                           and 0 <= truncation < 1):
            raise InputError(f"truncation must lie in [0, 1) or be None, got {truncation!r}")
        cond = self._resolve(condition, n)
        passed = self.forward_sample(cond, temperature=temperature, truncation=truncation,
                                     generator=generator)
        hs, score = passed.choices, torch.logsumexp(passed.logits[-1], 1)
        out = self._finish(self.reconstruct(hs), cond, generator, noise, clamp_observed)
        if sort_by_density:
            order = torch.argsort(score, descending=True, stable=True)
            out, score = out[order], score[order]
        return out, score

    def _finish(self, out: torch.Tensor, cond: ResolvedCondition,
                generator: torch.Generator | None, noise: bool,
                clamp_observed: bool) -> torch.Tensor:
        """Output noise N(0, sigma_L^2) on the continuous stream, observed values copied."""
        D, n = self.config.n_features, out.shape[0]
        if noise and D:
            gdev = generator.device if generator is not None else torch.device("cpu")
            eps = torch.randn(n, D, generator=generator, dtype=out.dtype, device=gdev)
            sd = self.layers[-1].streams[0].variances().sqrt()
            out[:, :D] = out[:, :D] + eps.to(out.device) * sd
        if clamp_observed:
            out = torch.where(cond.mask > 0, cond.values, out)
        return out

    def forward_sample(self, cond: ResolvedCondition, *, temperature: float = 1.0,
                       truncation: float | None = None,
                       generator: torch.Generator | None = None) -> "ForwardPass":
        """The forward pass of sampling mode under a resolved condition (moved into residual
        space as it goes): per layer the logits m + constraint factors, the choices h, whether
        the layer's input held any information, and the last layer's output streams."""
        streams = self.split(cond.values, cond.mask)
        has_x = bool(self.config.n_features)
        hs, logits, informed = [], [], []
        for layer in self.layers:
            known = torch.stack([(s.mask > 0).any(1) for s in streams]).any(0)
            informed.append(known | cond.constrained)
            m = layer.membership(streams)
            if has_x and cond.constrained:
                cont = layer.streams[0]
                m = m + cond.log_factors(cont.mu, cont.variances())
            h = self._pick(m, temperature, truncation, generator)
            if has_x:
                cond.shift(layer.streams[0].reconstruction(h))
            streams = layer.advance(streams, h)
            hs.append(h)
            logits.append(m)
        return ForwardPass(hs, logits, informed, streams)

    def _pick(self, m: torch.Tensor, temperature: float, truncation: float | None,
              generator: torch.Generator | None) -> torch.Tensor:
        """h ~ softmax(m / T) with probabilities below truncation x max zeroed; T = 0: argmax."""
        if temperature == 0:
            return m.argmax(1)
        lp = torch.log_softmax(m / temperature, 1)
        if truncation:
            keep = lp >= lp.max(1, keepdim=True).values + math.log(truncation)
            lp = torch.where(keep, lp, torch.full_like(lp, -math.inf))
        return self._draw(lp, generator)

    @torch.no_grad()
    def sample_backward(self, n: int, *, generator: torch.Generator | None = None,
                        condition: DRMMCondition | None = None, temperature: float = 1.0,
                        truncation: float | None = 0.02, skip: float = 0.5,
                        skip_mode: str = "additive", noise: bool = False,
                        clamp_observed: bool = False) -> torch.Tensor:
        r"""Backward sampling (spec §6, paper Sec. 3.7): n samples (n, W) of one condition.

        A forward pass (temperature 1, untruncated) on n copies of the condition; the last
        layer's output latent distributions are batch-averaged (log of the mean softmax) and
        its continuous residuals set to 0; then from the last layer to the first: logits = the
        incoming latent log-probs of that layer + the skip term
        :math:`lpha_{skip} \log \mathrm{mean}_{batch}\,\mathrm{softmax}(m_{fwd})`
        (``skip_mode="additive"``, the paper; ``"average"``: the reference's convex mix
        :math:`(1-a)\,\mathrm{bwd} + a\,\mathrm{skip}`, there with a = 1/3), probabilities below
        ``truncation`` x max zeroed (0.02), :math:`h \sim \mathrm{softmax}(\cdot/T)` (T = 0:
        argmax), and the layer's input is reconstructed :math:`X = R + \hat X(h)`. A layer
        whose input held no known variable, constraint or prior gets skip weight 0.
        """
        from .backward import backward_sample

        n = self._check_n(n)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or \
                not (0 <= temperature < math.inf):
            raise InputError(f"temperature must be a number >= 0, got {temperature!r}")
        if skip_mode not in ("additive", "average"):
            raise ConfigError(f"Unknown skip_mode '{skip_mode}'; expected additive or average")
        if isinstance(skip, bool) or not isinstance(skip, (int, float)) or not 0 <= skip:
            raise InputError(f"skip must be a number >= 0, got {skip!r}")
        if truncation is not None and not (isinstance(truncation, (int, float))
                                           and 0 <= truncation < 1):
            raise InputError(f"truncation must lie in [0, 1) or be None, got {truncation!r}")
        cond = self._resolve(condition, n)
        passed = self.forward_sample(cond, generator=generator)
        out = self.pack(backward_sample(self, passed, generator=generator,
                                        temperature=temperature, truncation=truncation,
                                        skip=skip, skip_mode=skip_mode))
        return self._finish(out, cond, generator, noise, clamp_observed)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None,
               condition: DRMMCondition | None = None, temperature: float = 1.0,
               truncation: float | None = None, noise: bool = False,
               clamp_observed: bool = False) -> torch.Tensor:
        """n samples (n, W), unconditional or under ``condition`` (a :class:`DRMMCondition`);
        the options are those of :meth:`sample_with_scores`."""
        return self.sample_with_scores(n, generator=generator, condition=condition,
                                       temperature=temperature, truncation=truncation,
                                       noise=noise, clamp_observed=clamp_observed)[0]

    @torch.no_grad()
    def complete(self, x: Any, mask: Any, *, method: str = "mean",
                 generator: torch.Generator | None = None, n_samples: int = 64) -> torch.Tensor:
        r"""Fill the missing entries (``mask`` False) of every row of x (N, W) by conditional
        forward sampling on the observed ones: ``"sample"`` one draw, ``"mode"`` the argmax
        path (T = 0), ``"mean"`` the average of ``n_samples`` draws, ``"exact"`` the exact
        conditional mean by enumeration of every path (:meth:`conditional_mean`; continuous
        models within :data:`MAX_PATHS`). Observed entries are returned unchanged.

        ``"mean"`` on a continuous-only model averages Rao-Blackwellised draws: layers
        1..L-1 are sampled, and the last layer's mean is taken in closed form,
        :math:`\sum_{l<L} \mu^l_{h_l} + \sum_k p(h_L = k \mid \cdot)\, \mu^L_k`, the
        expectation of a draw given the first L-1 choices (same mean, less variance; exact
        for L = 1: the isotropic GMM's conditional mean)."""
        if method not in ("mean", "sample", "mode", "exact"):
            raise ConfigError(f"Unknown completion method '{method}'; expected 'mean', "
                              f"'sample', 'mode' or 'exact'")
        if method == "exact":
            return self.conditional_mean(x, mask)
        xc, mt = self._completion_input(x, mask, self.check_input)
        m = mt.to(dtype=xc.dtype)
        N = xc.shape[0]
        reps = n_samples if method == "mean" else 1
        cond = DRMMCondition(values=xc.repeat_interleave(reps, 0),
                             mask=m.repeat_interleave(reps, 0))
        if method == "mean" and not self.config.categorical:
            resolved = self._resolve(cond, N * reps)
            passed = self.forward_sample(resolved, temperature=1.0, generator=generator)
            out = self.reconstruct(passed.choices)
            mu = self.layers[-1].streams[0].mu
            expected = torch.softmax(passed.logits[-1], 1) @ mu
            out = out - mu[passed.choices[-1]] + expected
        else:
            out = self.sample(N * reps, generator=generator, condition=cond,
                              temperature=0.0 if method == "mode" else 1.0)
        fill = out.reshape(N, reps, -1).mean(1)
        return torch.where(mt, xc, fill)
