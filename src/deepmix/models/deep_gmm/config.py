"""The deep GMM's configuration and its layer-spec language.

A stack is written data side first, as comma-separated tokens:

- ``full<n>``: one full D x D matrix per value (small data; the DGMM-2014 layer), n values;
- ``diag<n>``: diagonal, :math:`e^a \\odot h + t`, n values;
- ``bd<n>``: block-diagonal, shared latent (one choice per layer), n values;
- ``ubd<m>``: block-diagonal, unshared latent (a bank of m blocks, one choice per position);
- ``hc<k>`` or ``hc<k>x<n>``: half-convolution with a k x k kernel (k odd), n values (default 1);
  a trailing ``b`` (``hc5b``, ``hc5x2b``) adds a bias per value to the updated half.

For example ``"hc5,hc5,hc5,bd4"`` (the spec's Table-1/2 stacks) or ``"hc3,ubd4,hc3,ubd4"``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...errors import ConfigError, SpecError

__all__ = ["DeepGMMConfig", "LayerToken", "parse_layers", "SEARCH_METHODS", "PRIORS"]

SEARCH_METHODS = ("auto", "exact", "coordinate", "beam")
PRIORS = ("uniform", "factorised", "gating")

_TOKEN = re.compile(r"^(?:(full|diag|bd|ubd)(\d+)|hc(\d+)(?:x(\d+))?(b)?)$")


@dataclass(frozen=True)
class LayerToken:
    """One parsed layer: its kind, number of values and (HC) kernel size."""

    kind: str
    n_values: int
    kernel: int = 0
    #: HC only: a per-value bias on the updated half (``hc<k>b``)
    bias: bool = False


def parse_layers(spec: str) -> list[LayerToken]:
    """``"hc5,hc5,bd4"`` -> tokens; a :class:`SpecError` names the first token that does not
    parse."""
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError(f"deep GMM layer spec must be a non-empty string such as "
                        f"'hc5,hc5,bd4', got {spec!r}")
    out = []
    for raw in spec.split(","):
        tok = raw.strip().lower()
        m = _TOKEN.match(tok)
        if m is None:
            raise SpecError(f"deep GMM layer spec {spec!r}: cannot parse {raw.strip()!r}; "
                            f"expected full<n>, diag<n>, bd<n>, ubd<m>, hc<k>, hc<k>x<n> or "
                            f"hc<k>[x<n>]b")
        if m.group(1):
            kind, n, k = m.group(1), int(m.group(2)), 0
        else:
            kind, k, n = "hc", int(m.group(3)), int(m.group(4) or 1)
        if n < 1:
            raise SpecError(f"deep GMM layer spec {spec!r}: {tok!r} needs at least one value")
        out.append(LayerToken(kind, n, k, bias=bool(m.group(5))))
    return out


@dataclass
class DeepGMMConfig:
    """Everything that rebuilds a :class:`~deepmix.models.DeepGMM`.

    Arguments:
        shape: (H, W, C) of the images; the model reads rows of H*W*C values in (H, W, C)
            order, or (N, H, W, C) images.
        fold: r, the folding factor: images become (H/r, W/r, r*r*C) grids.
        layers: the layer spec (module docstring), data side first.
        dtype: ``"float64"`` or ``"float32"``.
        seed: seeds the parameters' initial perturbation in :meth:`from_config`.
        search: path search of the E step and of the lower bound: ``"exact"``, ``"coordinate"``,
            ``"beam"`` or ``"auto"`` (exact while there are at most ``max_exact_paths`` paths,
            else coordinate).
        max_exact_paths: the largest number of paths ``exact`` (and an exact ``log_prob`` by
            enumeration) will enumerate.
        chunk_size: samples per chunk in path search (bounds memory).
        beam_width: [deepmix] prefixes kept per sample by ``search="beam"`` (shared layers
            only): data side first, every layer extends each kept prefix by all its values
            and keeps the ``beam_width`` best, a prefix scored as if its partial activity were
            the last (log N(h_i; 0, I) + its log-dets and prior terms).
        restarts: coordinate passes from a random path per E step (the paper: 2, after one pass
            from the previous paths).
        coupled_update: how coordinate search updates an unshared layer whose positions are
            coupled by a layer above (HC, full, shared): ``"joint"`` proposes every position's
            argmax at once and keeps it only if the path score rises; ``"sequential"`` then
            updates the rejected samples position by position (exact per coordinate, m x P
            evaluations).
        center: [deepmix] :meth:`~deepmix.models.DeepGMM.initialize` stores the training mean
            and the model folds ``x - mean`` (a shift, log-det 0), so the half-convolutions'
            zero padding and kernels see centred data; on MNIST's constant background this is
            what lets HC layers learn (see docs/deep-gmm.md).
        prior: the path prior :math:`\\pi_c`: ``"uniform"`` (the paper's), ``"factorised"``
            ([deepmix]: learned categorical weights per variable, :mod:`.prior`) or
            ``"gating"`` (:mod:`.gating`).
        gating: the older switch for ``prior="gating"`` (kept so that old configs load): the
            path prior is :math:`\\prod_l g_l(h_l)[c_l]` with a gating network per mixing
            layer instead of uniform; untrained gates are uniform. Kept equal to
            ``prior == "gating"``.
        gate_hidden: channels of the gates' two 3x3 convolutions.
    """

    shape: tuple[int, ...] = (8, 8, 1)
    fold: int = 2
    layers: str = "hc3,bd2"
    dtype: str = "float64"
    seed: int = 0
    search: str = "auto"
    max_exact_paths: int = 10000
    chunk_size: int = 1000
    beam_width: int = 16
    restarts: int = 2
    coupled_update: str = "joint"
    center: bool = True
    gating: bool = False
    gate_hidden: int = 64
    prior: str = "uniform"

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ConfigError(f"shape must be (H, W, C) with positive sizes, got {self.shape}")
        H, W, _ = self.shape
        if isinstance(self.fold, bool) or not isinstance(self.fold, int) or self.fold < 1:
            raise ConfigError(f"fold must be a positive integer, got {self.fold!r}")
        if H % self.fold or W % self.fold:
            raise SpecError(f"fold r={self.fold} does not tile {H}x{W} images (H and W must be "
                            f"multiples of r)")
        parse_layers(self.layers)
        if self.dtype not in ("float64", "float32"):
            raise ConfigError(f"Unknown dtype '{self.dtype}'; expected float64 or float32")
        if self.search not in SEARCH_METHODS:
            raise ConfigError(f"Unknown path search '{self.search}'; expected one of "
                              f"{', '.join(SEARCH_METHODS)}")
        if self.coupled_update not in ("joint", "sequential"):
            raise ConfigError(f"Unknown coupled_update '{self.coupled_update}'; expected joint "
                              f"or sequential")
        if self.prior not in PRIORS:
            raise ConfigError(f"Unknown deep GMM prior '{self.prior}'; expected one of "
                              f"{', '.join(PRIORS)}")
        if not isinstance(self.gating, bool):
            raise ConfigError(f"gating must be true or false, got {self.gating!r}")
        # ``gating`` predates ``prior``: an old config has gating=True and no prior.
        if self.gating and self.prior == "uniform":
            self.prior = "gating"
        elif self.gating and self.prior != "gating":
            raise ConfigError(f"gating=True contradicts prior='{self.prior}'; give prior only")
        self.gating = self.prior == "gating"
        for name in ("max_exact_paths", "chunk_size", "beam_width", "restarts", "gate_hidden"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "restarts"
                                                                   else 1):
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
