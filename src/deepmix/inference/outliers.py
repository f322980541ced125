r"""Outlier detection with a DCGMM: per-sample scores and per-position inlier statistics.

Every GMM layer :math:`L` of a DCGMM is a density model of its own input, so every layer gives an
outlier score, the position mean of its log-likelihood (Gepperth & Pfülb, Sec. III-H / V-B):

.. math:: s_L(x) = \frac1{P_L} \sum_{hw} \log p_L(a^{(L)}_{hw}(x)),

with :math:`a^{(L)}` the layer's input and :math:`P_L` its number of positions. Low scores flag
outliers; the papers find the top GMM layer the best detector.

For *where* an image is atypical (in-painting with an unknown mask, paper Sec. II-B5),
:class:`InlierStatistics` keeps, per GMM layer and per position, the mean :math:`m_{hw}` and
standard deviation :math:`s_{hw}` of :math:`\log p_L(a_{hw})` over training images, and marks a
position of a new image as an outlier when

.. math:: \log p_L(a_{hw}(x)) < m_{hw} - c\, s_{hw}.

How well the scores separate known inliers from outliers (AUROC) is a metric on arrays,
:func:`deepmix.metrics.auroc.outlier_separation`;
:func:`deepmix.experiments.dcgmm_outliers.detect_outliers` scores a model's layers and measures
them in one call.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import CheckpointError, InputError
from ..utils.io import atomic_path

__all__ = ["outlier_scores", "layer_scores", "per_position_log_likelihood", "InlierStatistics"]

#: Format tag of a saved :class:`InlierStatistics` file.
FORMAT = "deepmix-inlier-statistics/1"


def _layer_numbers(model: Any, layers: int | Sequence[int] | str | None) -> list[int]:
    """GMM layer numbers (0-based, non-negative) from an int, a list, "all" or None (= top)."""
    n = len(model.gmm_indices)
    if layers is None:
        layers = [-1]
    elif isinstance(layers, str):
        if layers != "all":
            raise InputError(f"unknown layer selection '{layers}'; give a GMM layer number or 'all'")
        layers = list(range(n))
    elif isinstance(layers, (int, np.integer)):
        layers = [int(layers)]
    out = []
    for layer in layers:
        model._gmm_layer_index(int(layer))  # raises InputError naming the valid range
        out.append(int(layer) % n)
    return out


def _check_batch_size(batch_size: int) -> int:
    if int(batch_size) < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    return int(batch_size)


@torch.no_grad()
def per_position_log_likelihood(model: Any, x: Any, layers: int | Sequence[int] | str | None = -1,
                                *, batch_size: int = 500) -> dict[int, torch.Tensor]:
    """Per-position log-likelihoods ``{layer: (N, H_L, W_L)}`` of the chosen GMM layers.

    One forward pass per batch serves all layers. Tensors are returned on the CPU.

    Arguments:
        model: a :class:`~deepmix.models.DCGMM`.
        x: images (N, H, W, C), (N, C, H, W) or (N, H, W) for C = 1, float in [0, 1].
        layers: GMM layer number(s) (0-based, negative from the top), "all", or None (the top).
        batch_size: images per forward pass (bounds memory).
    """
    from ..layers import GMM

    wanted = _layer_numbers(model, layers)
    batch_size = _check_batch_size(batch_size)
    images = model.check_images(x)
    last = model.gmm_indices[max(wanted)]
    parts: dict[int, list[torch.Tensor]] = {L: [] for L in wanted}
    for start in range(0, images.shape[0], batch_size):
        h = images[start:start + batch_size]
        for i, layer in enumerate(model.layers[:last + 1]):
            if isinstance(layer, GMM):
                L = model.gmm_indices.index(i)
                if L in parts:
                    parts[L].append(layer.log_likelihood(h).cpu())
            if i < last:  # the layers above the highest wanted GMM are never needed
                h = layer(h)
    out = {}
    for L in wanted:
        if parts[L]:
            out[L] = torch.cat(parts[L])
        else:  # no images: an empty (0, H, W) tensor of the layer's shape
            H, W, _ = model.gmm_layers[L].input_shape
            out[L] = torch.zeros(0, H, W)
    return out


def layer_scores(model: Any, x: Any, layers: int | Sequence[int] | str | None = "all", *,
                 batch_size: int = 500) -> dict[int, torch.Tensor]:
    """Outlier scores ``{layer: (N,)}`` (position-mean log-likelihood) of several GMM layers."""
    per = per_position_log_likelihood(model, x, layers, batch_size=batch_size)
    return {L: v.flatten(1).mean(1) for L, v in per.items()}


def outlier_scores(model: Any, x: Any, layer: int = -1, *, batch_size: int = 500) -> torch.Tensor:
    r"""Outlier score :math:`s_L(x)` of each image, (N,): the position-mean log-likelihood in nats
    of GMM layer ``layer`` (0-based, negative from the top; default the top). Low = atypical."""
    L = _layer_numbers(model, layer)[0]
    return layer_scores(model, x, L, batch_size=batch_size)[L]


class InlierStatistics:
    r"""Per-layer, per-position mean and std of the log-likelihood on inlier (training) images.

    ``stats = InlierStatistics().fit(model, train_images)`` gathers, for every GMM layer L and
    position (h, w), :math:`m_{hw} = \overline{\log p_L(a_{hw})}` and the standard deviation
    :math:`s_{hw}` (unbiased, over images). ``stats.outlier_mask(model, x, layer, c)`` is then a
    boolean (N, H_L, W_L) tensor, True where :math:`\log p_L(a_{hw}(x)) < m_{hw} - c\,s_{hw}`.

    ``stats.save(path)`` / ``InlierStatistics.load(path)`` write and read a safetensors file
    (atomically; the model's spec and input shape are stored and checked on use).

    Attributes (after ``fit``):
        mean_, std_: ``{layer: (H_L, W_L) float32 tensor}``, for every GMM layer.
        n_: number of images the statistics were gathered on.
        spec_, input_shape_: the model they belong to.
    """

    def __init__(self) -> None:
        self.mean_: dict[int, torch.Tensor] = {}
        self.std_: dict[int, torch.Tensor] = {}
        self.n_: int = 0
        self.spec_: str | None = None
        self.input_shape_: tuple[int, int, int] | None = None

    # ------------------------------------------------------------------------------- fitting
    def fit(self, model: Any, images: Any, *, layers: int | Sequence[int] | str = "all",
            batch_size: int = 500) -> "InlierStatistics":
        """Gather the statistics of ``images`` (inliers, e.g. the training set); returns self.

        Sums and sums of squares are accumulated per batch in float64, so memory stays at one
        batch and the result does not depend on the batch size beyond rounding.
        """
        from ..layers import GMM

        wanted = _layer_numbers(model, layers)
        batch_size = _check_batch_size(batch_size)
        x = model.check_images(images)
        N = int(x.shape[0])
        if N < 2:
            raise InputError(f"inlier statistics need at least 2 images, got {N}")
        s1: dict[int, torch.Tensor] = {}
        s2: dict[int, torch.Tensor] = {}
        last = model.gmm_indices[max(wanted)]
        with torch.no_grad():
            for start in range(0, N, batch_size):
                h = x[start:start + batch_size]
                for i, layer in enumerate(model.layers[:last + 1]):
                    if isinstance(layer, GMM) and model.gmm_indices.index(i) in wanted:
                        L = model.gmm_indices.index(i)
                        ll = layer.log_likelihood(h).double().cpu()
                        s1[L] = s1.get(L, 0) + ll.sum(0)
                        s2[L] = s2.get(L, 0) + (ll * ll).sum(0)
                    if i < last:
                        h = layer(h)
        self.mean_, self.std_ = {}, {}
        for L in wanted:
            mean = s1[L] / N
            var = ((s2[L] - N * mean * mean) / (N - 1)).clamp_min(0.0)
            self.mean_[L] = mean.float()
            self.std_[L] = var.sqrt().float()
        self.n_ = N
        self.spec_ = model.spec()
        self.input_shape_ = tuple(int(v) for v in model.input_shape)  # type: ignore[assignment]
        return self

    # ----------------------------------------------------------------------------------- use
    def _check(self, model: Any, layer: int) -> int:
        if not self.mean_:
            raise InputError("InlierStatistics are not fitted: call fit(model, images) first")
        if model.spec() != self.spec_ or tuple(model.input_shape) != self.input_shape_:
            raise InputError(f"these inlier statistics belong to {self.spec_} on "
                             f"{self.input_shape_}, not to {model.spec()} on {model.input_shape}")
        L = _layer_numbers(model, layer)[0]
        if L not in self.mean_:
            raise InputError(f"no statistics for GMM layer {L}: fitted layers are "
                             f"{sorted(self.mean_)}")
        return L

    def z_scores(self, model: Any, x: Any, layer: int = -1, *,
                 batch_size: int = 500) -> torch.Tensor:
        r"""Standardised log-likelihood :math:`(\log p_L(a_{hw}) - m_{hw}) / s_{hw}`, (N, H, W).

        Positions whose training std is 0 give 0 where the value equals the mean and -inf / +inf
        below / above it."""
        L = self._check(model, layer)
        ll = per_position_log_likelihood(model, x, L, batch_size=batch_size)[L]
        diff = ll - self.mean_[L]
        std = self.std_[L].expand_as(diff)
        z = diff / std
        return torch.where((std == 0) & (diff == 0), torch.zeros_like(z), z)

    def outlier_mask(self, model: Any, x: Any, layer: int = -1, c: float = 2.0, *,
                     batch_size: int = 500) -> torch.Tensor:
        r"""Boolean (N, H_L, W_L), True where :math:`\log p_L(a_{hw}(x)) < m_{hw} - c\,s_{hw}`.

        Arguments:
            model: the DCGMM the statistics were fitted with.
            x: images (N, H, W, C), (N, C, H, W) or (N, H, W), float in [0, 1].
            layer: GMM layer number (0-based, negative from the top; default the top).
            c: threshold in standard deviations (larger = fewer positions flagged).
            batch_size: images per forward pass.
        """
        if not np.isfinite(float(c)):
            raise InputError(f"c must be a finite number, got {c}")
        L = self._check(model, layer)
        ll = per_position_log_likelihood(model, x, L, batch_size=batch_size)[L]
        return ll < (self.mean_[L] - float(c) * self.std_[L])

    # ---------------------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Write the statistics to a safetensors file (atomically)."""
        from safetensors.torch import save_file

        if not self.mean_:
            raise InputError("InlierStatistics are not fitted: nothing to save")
        tensors = {}
        for L in self.mean_:
            tensors[f"layer{L}.mean"] = self.mean_[L].contiguous()
            tensors[f"layer{L}.std"] = self.std_[L].contiguous()
        meta = {"format": FORMAT, "spec": str(self.spec_), "n": str(self.n_),
                "input_shape": json.dumps(list(self.input_shape_ or ()))}
        path = Path(path)
        with atomic_path(path, suffix=".safetensors") as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "InlierStatistics":
        """Read statistics written by :meth:`save`; :class:`CheckpointError` if unusable."""
        from ..utils.io import read_safetensors

        tensors, meta = read_safetensors(path, "inlier statistics file", FORMAT)
        self = cls()
        try:
            for key, t in tensors.items():
                name, kind = key.split(".")
                L = int(name.removeprefix("layer"))
                (self.mean_ if kind == "mean" else self.std_)[L] = t.float()
            self.n_ = int(meta["n"])
            self.spec_ = meta["spec"]
            self.input_shape_ = tuple(int(v) for v in json.loads(meta["input_shape"]))  # type: ignore[assignment]
        except (KeyError, ValueError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"inlier statistics file {path} is malformed ({exc})") from None
        if set(self.mean_) != set(self.std_) or any(
                self.mean_[L].shape != self.std_[L].shape for L in self.mean_):
            raise CheckpointError(f"inlier statistics file {path} has unmatched mean/std tensors")
        return self
