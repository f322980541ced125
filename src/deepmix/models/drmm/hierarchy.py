r"""The hierarchical patch DRMM for images (spec drmm §7, paper Sec. 4.2, App. C.5).

Block j extracts 3x3 patches with stride 2 (TF SAME padding) of its input grid, folds the
patch positions into the batch and models them with one L_j-layer DRMM shared by all positions
(with per-position weights w by default); its output is the last layer's L_j latent streams at
half resolution (residuals discarded), a latent's mask 0 where all inputs of its patch were
unknown. Block 1's input is the image (continuous, 9C per patch); block j > 1 sees the previous
block's latent grid as one categorical stream of 9 L_{j-1} blocks of K_{j-1}. A global flat DRMM
models the last grid, flattened. Sampling and completion: patch blocks encode the known pixels
by argmax, the global block samples forward (T = 1) and backward with batch averaging over
copies of each image, and the patch blocks go backward by argmax (T = 0) with skip terms;
patches are inverted by overlap-averaging (categorical: average the log-probs, then
log_softmax per block).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ...errors import ConfigError, InputError, NoDensityError
from ..base import Model
from .backward import backward_pass, backward_sample
from .components import block_log_softmax
from .conditions import ResolvedCondition
from .layer import Stream
from .model import DRMM, DRMMConfig
from .patches import extract_patches, fold_patches, same_padding

__all__ = ["PatchDRMM", "PRESETS"]

#: Named architectures: (image shape, ((layers, K) per patch block), (global layers, K)).
PRESETS: dict[str, tuple[tuple[int, int, int], tuple[tuple[int, int], ...], tuple[int, int]]] = {
    # paper Table 1
    "mnist": ((28, 28, 1), ((2, 64), (4, 64)), (4, 256)),
    # the reference MNIST tutorial's sizes, shrunk to fit a 2-core CPU
    "mnist-small": ((28, 28, 1), ((1, 32), (2, 32)), (3, 64)),
}


def _plain(values: torch.Tensor, mask: torch.Tensor) -> ResolvedCondition:
    n = values.shape[0]
    return ResolvedCondition(values, mask, values.new_zeros(n, 0, 0), values.new_zeros(n, 0),
                             values.new_zeros(n, 0))


class PatchDRMM(DRMM):
    r"""An image DRMM: patch DRMM blocks per resolution and a global DRMM (family ``drmm``;
    built by :meth:`DRMM.from_config` when the config has an ``image_shape``)."""

    #: Image models use rho_final 0.5 (spec §4).
    default_rho_final = 0.5

    @classmethod
    def accepts(cls, config: DRMMConfig) -> bool:
        return bool(config.image_shape)

    def __init__(self, config: DRMMConfig) -> None:
        Model.__init__(self)
        if not config.image_shape or not config.patch_layers:
            raise ConfigError("a patch DRMM needs image_shape and patch_layers")
        H, W, C = config.image_shape
        if config.n_features != H * W * C:
            raise ConfigError(f"n_features must be H*W*C = {H * W * C} for image_shape "
                              f"{tuple(config.image_shape)}, got {config.n_features}")
        self.config = config
        common = dict(sigma=config.sigma, dtype=config.dtype)
        blocks, shapes = [], []
        h, w, prev = H, W, None
        for L, K in zip(config.patch_layers, config.patch_components):
            ho, wo = same_padding(h)[2], same_padding(w)[2]
            positions = ho * wo if config.patch_marginals == "position" else 1
            if prev is None:
                cfg = DRMMConfig(n_features=9 * C, n_components=K, n_layers=L,
                                 positions=positions, **common)
            else:
                cfg = DRMMConfig(n_features=0, categorical=(prev[1],),
                                 categorical_blocks=(9 * prev[0],), n_components=K, n_layers=L,
                                 positions=positions, **common)
            blocks.append(DRMM(cfg))
            shapes.append((h, w))
            h, w, prev = ho, wo, (L, K)
        self.grid_shapes = shapes + [(h, w)]       # input grid of every block, then the last
        top = DRMMConfig(n_features=0, categorical=(prev[1],),
                         categorical_blocks=(h * w * prev[0],),
                         n_components=config.n_components, n_layers=config.n_layers, **common)
        self.blocks = nn.ModuleList(blocks + [DRMM(top)])

    @classmethod
    def preset(cls, name: str, dtype: str = "float32") -> "PatchDRMM":
        """A named architecture of :data:`PRESETS`."""
        if name not in PRESETS:
            raise ConfigError(f"Unknown patch DRMM preset '{name}'; expected "
                              f"{', '.join(PRESETS)}")
        shape, patch, (L, K) = PRESETS[name]
        return cls(DRMMConfig(n_features=int(np.prod(shape)), n_components=K, n_layers=L,
                              image_shape=shape, patch_layers=tuple(p[0] for p in patch),
                              patch_components=tuple(p[1] for p in patch), dtype=dtype))

    # ------------------------------------------------------------------ shapes
    @property
    def width(self) -> int:
        return self.config.n_features

    @property
    def stream_names(self) -> tuple[str, ...]:
        return ("x",)

    @property
    def n_layers(self) -> int:
        return sum(b.n_layers for b in self.blocks)

    def _channels(self, j: int) -> int:
        """Channels of block j's input grid."""
        if j == 0:
            return self.config.image_shape[2]
        b = self.blocks[j - 1]
        return b.n_layers * b.n_components

    # ------------------------------------------------------------------ encoding
    def _encode(self, j: int, grid: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """Block j's argmax pass on grid (N, h, w, c): the latent grid (N, h', w', L K), its
        mask, and the forward record."""
        n = grid.shape[0]
        patches, pmask = extract_patches(grid, mask)
        block = self.blocks[j]
        passed = block.forward_sample(_plain(patches, pmask), temperature=0.0)
        L = block.n_layers
        latent = torch.cat([s.value for s in passed.last[-L:]], 1)
        known = (pmask > 0).any(1, keepdim=True).to(latent.dtype).expand_as(latent)
        h, w = self.grid_shapes[j + 1]
        return (latent.reshape(n, h, w, -1), known.reshape(n, h, w, -1), passed)

    def _image(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.config.image_shape)

    def stages(self) -> list[DRMM]:
        """The DRMMs trained one after the other (spec §7): patch blocks, then the global."""
        return list(self.blocks)

    @torch.no_grad()
    def stage_input(self, j: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage j's training rows (values, mask) for images x (N, H*W*C)."""
        grid = self._image(x)
        mask = torch.ones_like(grid)
        for i in range(j):
            if i == len(self.blocks) - 1:
                break
            grid, mask, _ = self._encode(i, grid, mask)
        if j < len(self.blocks) - 1:
            return extract_patches(grid, mask)
        return grid.reshape(grid.shape[0], -1), mask.reshape(mask.shape[0], -1)

    @torch.no_grad()
    def initialize(self, x: Any, init: str | None = None, *,
                   generator: torch.Generator | None = None) -> "PatchDRMM":
        """Every block in turn on the previous blocks' encoding of x (spec §4)."""
        x = self.check_input(x)
        for j, block in enumerate(self.blocks):
            values, _ = self.stage_input(j, x)
            block.initialize(values, init, generator=generator)
        return self

    # ------------------------------------------------------------------ density
    def log_prob(self, x: Any) -> torch.Tensor:
        raise NoDensityError("a patch DRMM has no normalised image density (overlapping "
                             "patches); use a flat DRMM's log_prob, or compare completions")

    def log_prob_is(self, x: Any, n_samples: int = 1000, *,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        return self.log_prob(x)

    def exact_completion(self) -> bool:
        return False

    def conditional_mean(self, x: Any, mask: Any) -> torch.Tensor:
        raise NoDensityError("a patch DRMM has no exact conditional mean (no normalised image "
                             "density); use complete(x, mask, method='mean'), the average of "
                             "backward samples")

    # ------------------------------------------------------------------ sampling
    def sample_with_scores(self, n: int, **options: Any) -> Any:
        raise InputError("a patch DRMM samples backward only: use sample(n, condition=...) or "
                         "complete(x, mask)")

    def sample_backward(self, n: int, **options: Any) -> Any:
        raise InputError("a patch DRMM always samples backward: use sample(n, condition=...)")

    @torch.no_grad()
    def _backward_images(self, x: torch.Tensor, mask: torch.Tensor, copies: int, *,
                         generator: torch.Generator | None, truncation: float | None,
                         skip: float) -> torch.Tensor:
        """(N * copies, H*W*C) samples: copies backward samples of each row's condition."""
        N = x.shape[0]
        grid, gmask = self._image(x), self._image(mask)
        records = []
        for j in range(len(self.blocks) - 1):
            grid, gmask, passed = self._encode(j, grid, gmask)
            records.append(passed)
        top = self.blocks[-1]
        flat = grid.reshape(N, -1).repeat_interleave(copies, 0)
        fmask = gmask.reshape(N, -1).repeat_interleave(copies, 0)
        passed = top.forward_sample(_plain(flat, fmask), generator=generator)
        streams = backward_sample(top, passed, generator=generator, temperature=1.0,
                                  truncation=truncation, skip=skip, skip_mode="additive",
                                  groups=N)
        values = block_log_softmax(streams[0].value, top.config.categorical[0])
        n = N * copies
        h, w = self.grid_shapes[-1]
        grid = values.reshape(n, h, w, -1)
        for j in range(len(self.blocks) - 2, -1, -1):
            block, rec = self.blocks[j], records[j]
            P = grid.shape[1] * grid.shape[2]
            L, K = block.n_layers, block.n_components
            rows = grid.reshape(n * P, L * K)
            lead = [Stream(mod.zero_residual(n * P), torch.zeros_like(mod.zero_residual(n * P)))
                    for mod in block.layers[-1].streams[:len(block.data_specs)]]
            latents = [Stream(rows[:, l * K:(l + 1) * K], torch.ones_like(rows[:, :K]))
                       for l in range(L)]
            # forward records are per image: repeat for the copies (rows image-major)
            rep = lambda t: t.reshape(N, P, -1).repeat_interleave(copies, 0).reshape(  # noqa
                n * P, -1)
            skips = [(torch.log_softmax(rep(m), 1), rep(inf[:, None].to(m.dtype))[:, 0])
                     for m, inf in zip(rec.logits, rec.informed)]
            out = backward_pass(block, lead + latents, skips, generator=generator,
                                temperature=0.0, truncation=truncation, skip=skip,
                                skip_mode="additive")
            patches = block.pack(out)
            hh, ww = self.grid_shapes[j]
            c = self._channels(j)
            grid = fold_patches(patches, n, (hh, ww, c))
            if j > 0:
                grid = block_log_softmax(grid, self.blocks[j - 1].n_components)
        return grid.reshape(n, -1)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None,
               condition: Any = None, truncation: float | None = 0.02, skip: float = 0.5,
               **unused: Any) -> torch.Tensor:
        """n images (n, H*W*C): backward samples of one condition (None: nothing known; or a
        :class:`DRMMCondition` with ``values``/``mask`` of one image), batch-averaged over
        the n copies."""
        n = self._check_n(n)
        if unused:
            raise InputError(f"a patch DRMM samples with truncation and skip only, not "
                             f"{', '.join(sorted(unused))}")
        cond = self._resolve(condition, 1)
        if cond.constrained:
            raise InputError("a patch DRMM is conditioned on known pixels only (values and "
                             "mask), not on inequalities, boxes or priors")
        return self._backward_images(cond.values[:1], cond.mask[:1], n, generator=generator,
                                     truncation=truncation, skip=skip)

    @torch.no_grad()
    def complete(self, x: Any, mask: Any, *, method: str = "sample",
                 generator: torch.Generator | None = None, n_samples: int = 16) -> torch.Tensor:
        """Fill the missing pixels (``mask`` False) of every row of x (N, H*W*C) from
        ``n_samples`` backward samples of that image: ``"sample"`` the first, ``"mean"``
        their average. Observed pixels are returned unchanged."""
        if method not in ("mean", "sample"):
            raise ConfigError(f"Unknown completion method '{method}'; expected 'mean' or "
                              f"'sample'")
        xc, mt = self._completion_input(x, mask, self.check_input)
        S = self._check_n(n_samples)
        out = self._backward_images(xc, mt.to(xc.dtype), S, generator=generator,
                                    truncation=0.02, skip=0.5).reshape(xc.shape[0], S, -1)
        fill = out.mean(1) if method == "mean" else out[:, 0]
        return torch.where(mt, xc, fill)
