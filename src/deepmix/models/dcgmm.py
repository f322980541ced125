r"""Deep convolutional Gaussian mixture model (DCGMM), Gepperth & Pfülb.

A stack of Folding (F), Pooling (P), convolutional GMM (G) and linear classifier (C) layers built
from a spec string (:mod:`deepmix.models.spec`). Every GMM layer is a density model of its own
input: layer L scores the channel vector :math:`a_{hw}` at every position by
:math:`\log p_L(a_{hw}) = \log\sum_k \pi_k \mathcal N(a_{hw}; \mu_k, \mathrm{diag}(d_k^{-2}))`, and
passes the responsibilities up. Sampling runs the layers in reverse, each turning the control
signal from above into one for the layer below (top-S sampling through the chain of priors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import InputError, NoDensityError, SpecError
from ..layers import GMM, Classifier, Folding, Layer, Pooling
from ..layers.classifier import check_temperature
from ..utils.tensors import all_finite
from .base import Model
from .registry import register_family
from .spec import LayerSpec, format_spec, parse_spec, resolve_architecture

__all__ = ["ModelConfig", "DCGMM", "as_images"]


@dataclass
class ModelConfig:
    """Everything needed to rebuild a DCGMM (serialised to ``config.json``).

    Arguments:
        spec: the layers in long notation (or an architecture name).
        input_shape: (H, W, C) of the images.
        mu_init: centroids start uniform in [-mu_init, mu_init] (reference 0.1).
        d_init: start value of d, the square root of the precision (reference sqrt(20)).
        d_min, d_max: clamp of d after every step (reference upper clamp sqrt(20)).
        seed: seed of the initialisation.
        classifier_temperature: T of a classifier layer's tempered features (1: the papers').
    """

    spec: str
    input_shape: tuple[int, ...] = (28, 28, 1)
    mu_init: float = 0.1
    d_init: float = math.sqrt(20.0)
    d_min: float = 0.1
    d_max: float = math.sqrt(20.0)
    seed: int = 0
    name: str | None = field(default=None)
    classifier_temperature: float = 1.0


def as_images(x: Any, shape: Sequence[int], *, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None, what: str = "images") -> torch.Tensor:
    """Validate and convert images to an (N, H, W, C) float tensor.

    Accepts (N, H, W, C), (N, C, H, W), or (N, H, W) when C = 1, as a tensor or numpy array of
    floating point values (scaled to [0, 1]). Anything else raises :class:`InputError` naming the
    problem: wrong shape, integer dtype (scale first), non-finite values.
    """
    H, W, C = (int(v) for v in shape)
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{what} must be a torch tensor or numpy array, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputError(f"{what} have dtype {x.dtype}; expected floating point values in [0, 1] "
                         f"(divide integer pixels by 255)")
    s = tuple(x.shape)
    if len(s) == 4 and s[1:] == (H, W, C):
        pass
    elif len(s) == 4 and s[1:] == (C, H, W):
        x = x.permute(0, 2, 3, 1)
    elif len(s) == 3 and C == 1 and s[1:] == (H, W):
        x = x.unsqueeze(-1)
    else:
        raise InputError(f"{what} have shape {s}; expected (N, {H}, {W}, {C}) or (N, {C}, {H}, {W})"
                         + (f" or (N, {H}, {W})" if C == 1 else ""))
    x = x.to(device=device, dtype=dtype)
    if not all_finite(x):
        raise InputError(f"{what} contain NaN or infinite values")
    return x.contiguous()


@register_family
class DCGMM(Model):
    """A DCGMM built from a spec string or architecture name.

    Arguments:
        spec: e.g. ``"F(8,2)-G(25)-F(11,1)-G(36)"`` or ``"2L-c"``.
        input_shape: (H, W, C) of the images; default the architecture's own (28x28x1).
        mu_init, d_init, d_min, d_max: GMM initialisation and clamp (see :class:`ModelConfig`).
        seed: seed of the initialisation.
        classifier_temperature: T of the classifier layer's tempered features
            :math:`\\mathrm{softmax}(\\log r / T)` (see :class:`~deepmix.layers.Classifier`).
    """

    family = "dcgmm"
    config_class = ModelConfig
    default_objective = "dcgmm"

    def __init__(self, spec: str, input_shape: Sequence[int] | None = None, *,
                 mu_init: float = 0.1, d_init: float = math.sqrt(20.0), d_min: float = 0.1,
                 d_max: float = math.sqrt(20.0), seed: int = 0,
                 classifier_temperature: float = 1.0) -> None:
        super().__init__()
        text, native = resolve_architecture(spec)
        shape = tuple(int(v) for v in (input_shape or native or (28, 28, 1)))
        if len(shape) != 3 or min(shape) < 1:
            raise SpecError(f"input_shape must be (H, W, C) with positive sizes, got {shape}")
        layer_specs = parse_spec(text)
        self.config = ModelConfig(spec=format_spec(layer_specs), input_shape=shape,
                                  mu_init=mu_init, d_init=d_init, d_min=d_min, d_max=d_max,
                                  seed=seed, name=spec.strip() if "(" not in spec else None,
                                  classifier_temperature=check_temperature(classifier_temperature))
        gen = torch.Generator().manual_seed(int(seed))
        layers: list[Layer] = []
        current = shape
        self.classifier_sources: list[int] = []
        for i, ls in enumerate(layer_specs):
            try:
                if ls.kind == "C" and len(ls.args) > 1:
                    self.classifier_sources = self._classifier_sources(layers, ls.args[1])
                layer = self._make_layer(ls, current, gen,
                                         [layers[j].output_shape for j in self.classifier_sources])
            except SpecError as exc:
                raise SpecError(f"layer {i + 1} ({ls}) of '{self.config.spec}' on input "
                                f"{current[0]}x{current[1]}x{current[2]}: "
                                f"{str(exc).split(': ', 1)[-1]}") from None
            layers.append(layer)
            current = layer.output_shape
        self.layers = nn.ModuleList(layers)
        self.gmm_indices = [i for i, l in enumerate(layers) if isinstance(l, GMM)]
        self.check_classifier_temperature(self.config.classifier_temperature)

    @staticmethod
    def _classifier_sources(layers: list[Layer], n: int) -> list[int]:
        """Indices of the n - 1 highest GMM layers below the top GMM (which feeds C(S, n),
        possibly through Folding/Pooling layers)."""
        top = max(j for j, l in enumerate(layers) if isinstance(l, GMM))
        gmms = [j for j in range(top) if isinstance(layers[j], GMM)]
        if len(gmms) < n - 1:
            raise SpecError(f"C(S,{n}) needs {n - 1} GMM layers below the one it sits on, "
                            f"the model has {len(gmms)}")
        return gmms[::-1][: n - 1]

    def _make_layer(self, ls: LayerSpec, shape: tuple[int, int, int], gen: torch.Generator,
                    extra_shapes: Sequence[tuple[int, int, int]] = ()) -> Layer:
        c = self.config
        if ls.kind == "F":
            return Folding(shape, *ls.args)
        if ls.kind == "P":
            return Pooling(shape, *ls.args)
        if ls.kind == "G":
            return GMM(shape, ls.args[0], ls.independent, mu_init=c.mu_init, d_init=c.d_init,
                       d_min=c.d_min, d_max=c.d_max, generator=gen)
        return Classifier(shape, ls.args[0], extra_shapes, temperature=c.classifier_temperature)

    def check_classifier_temperature(self, temperature: float) -> float:
        """``temperature`` as a float; a :class:`SpecError` unless it is finite and > 0 and,
        when it is not 1, the classifier sits directly on a GMM layer (tempering needs
        responsibility vectors)."""
        t = check_temperature(temperature)
        clf = self.classifier
        if t != 1.0 and clf is not None and not isinstance(self.layers[-2], GMM):
            raise SpecError(f"classifier temperature {t:g} needs {clf.spec()} directly on a GMM "
                            f"layer, but '{self.config.spec}' puts "
                            f"{self.layers[-2].spec()} below it: tempering applies to "
                            f"responsibilities only")
        return t

    @classmethod
    def from_config(cls, config: ModelConfig) -> "DCGMM":
        model = cls(config.spec, config.input_shape, mu_init=config.mu_init,
                    d_init=config.d_init, d_min=config.d_min, d_max=config.d_max, seed=config.seed,
                    classifier_temperature=config.classifier_temperature)
        model.config.name = config.name
        return model

    # ------------------------------------------------------------------------------ structure
    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.config.input_shape)  # type: ignore[return-value]

    @property
    def gmm_layers(self) -> list[GMM]:
        return [self.layers[i] for i in self.gmm_indices]  # type: ignore[misc]

    @property
    def classifier(self) -> Classifier | None:
        last = self.layers[-1]
        return last if isinstance(last, Classifier) else None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def spec(self) -> str:
        return self.config.spec

    def _gmm_layer_index(self, layer: int | None) -> int:
        """Index into ``self.layers`` of GMM number ``layer`` (0-based; negative from the top)."""
        n = len(self.gmm_indices)
        if layer is None:
            layer = -1
        if not -n <= layer < n:
            raise InputError(f"GMM layer {layer} does not exist: this model has {n} GMM layers "
                             f"(0..{n - 1})")
        return self.gmm_indices[layer]

    def check_images(self, x: Any) -> torch.Tensor:
        """Validate and convert images to (N, H, W, C) on the model's device."""
        return as_images(x, self.input_shape, dtype=self.layers[self.gmm_indices[0]].mu.dtype,
                         device=self.device)

    # ----------------------------------------------------------------------------- estimation
    def activations(self, x: Any, upto: int | None = None) -> list[torch.Tensor]:
        """Outputs of every layer (or of layers 0..upto), bottom-up."""
        h = self.check_images(x)
        outs: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Classifier):
                h = layer(h, [outs[j] for j in self.classifier_sources])
            else:
                h = layer(h)
            outs.append(h)
            if upto is not None and i >= upto:
                break
        return outs

    def forward(self, x: Any) -> torch.Tensor:
        """Output of the last layer: top responsibilities (N, H, W, K) or logits (N, 1, 1, S)."""
        return self.activations(x)[-1]

    def _layer_input(self, x: Any, index: int) -> torch.Tensor:
        h = self.check_images(x)
        for layer in self.layers[:index]:
            h = layer(h)
        return h

    @torch.no_grad()
    def log_likelihood(self, x: Any, layer: int | None = None, *,
                       per_position: bool = False) -> torch.Tensor:
        """True log-likelihood in nats of GMM layer ``layer``'s input (default: the top GMM).

        Per sample the mean over positions (N,), or (N, H, W) with ``per_position``. For the first
        GMM layer with non-overlapping patches the *sum* over positions is a normalised density of
        the image: see :meth:`log_prob`.
        """
        idx = self._gmm_layer_index(layer)
        ll = self.layers[idx].log_likelihood(self._layer_input(x, idx))
        return ll if per_position else ll.flatten(1).mean(1)

    @torch.no_grad()
    def annealed_loss(self, x: Any, layer: int | None = None, *,
                      per_position: bool = False) -> torch.Tensor:
        """The training loss :math:`\\ell_\\sigma` of a GMM layer at its current sigma."""
        idx = self._gmm_layer_index(layer)
        loss = self.layers[idx].annealed_loss(self._layer_input(x, idx))
        return loss if per_position else loss.flatten(1).mean(1)

    @torch.no_grad()
    def log_prob(self, x: Any) -> torch.Tensor:
        """Exact log-density of images in nats, (N,), where the model defines one.

        That is the case when the first GMM layer sees non-overlapping patches that tile the image
        (e.g. A, 1L, 2L-b, 2L-d, 3L-b): :math:`\\log p(x) = \\sum_{hw} \\log p_1(x_{hw})`. Deeper
        layers model responsibilities, not pixels, and overlapping patches are not a normalised
        density of the image, so other models raise an error: use :meth:`log_likelihood`.
        """
        idx = self.gmm_indices[0]
        if not self._first_layer_is_density():
            raise NoDensityError(f"model {self.spec()} has no normalised image density (its first GMM "
                             f"layer sees overlapping patches or pooled values); use "
                             f"log_likelihood(x, layer) for per-layer scores")
        return self.layers[idx].log_likelihood(self._layer_input(x, idx)).flatten(1).sum(1)

    def _first_layer_is_density(self) -> bool:
        """Only non-overlapping Folding layers that cover every pixel lie below the first GMM."""
        for layer in self.layers[: self.gmm_indices[0]]:
            if not isinstance(layer, Folding):
                return False
            H, W, _ = layer.input_shape
            Ho, Wo, _ = layer.output_shape
            for size, stride, n_in, n_out in ((layer.fy, layer.sy, H, Ho), (layer.fx, layer.sx, W, Wo)):
                whole = n_out == 1 and size == n_in
                tiles = stride == size and n_in % size == 0
                if not (whole or tiles):
                    return False
        return True

    @torch.no_grad()
    def predict(self, x: Any) -> torch.Tensor:
        """Class predictions of the classifier layer, (N,)."""
        if self.classifier is None:
            raise InputError(f"model {self.spec()} has no classifier layer C(S)")
        return self.forward(x).flatten(1).argmax(1)

    # ------------------------------------------------------------------------------- sampling
    def _generator(self, generator: torch.Generator | None, seed: int | None) -> torch.Generator:
        if generator is not None:
            return generator
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(seed) if seed is not None else int(torch.seed() % 2**63))
        return gen

    @torch.no_grad()
    def top_down(self, control: torch.Tensor | None, start: int, *, n: int | None = None,
                 top_s: int | Sequence[int] = 1, divisor: float = 10.0, use_pi: bool = False,
                 pooling: str = "dense", mode: str = "sample",
                 generator: torch.Generator | None = None,
                 fuse: Callable[[int, torch.Tensor | None], torch.Tensor | None] | None = None,
                 refine: Callable[[int, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Run layers ``start``, ``start - 1``, ..., 0 in backwards mode; returns pixel space.

        The one engine behind sampling, variants and in-painting. ``control`` is the signal into
        layer ``start`` (None for an unconditioned top GMM drawing ``n`` samples).
        ``fuse(i, T)`` may replace the control signal of GMM layer ``i`` just before it is
        used (class signals, template activities, observed pixels); ``refine(i, X)`` may replace
        the output of Folding/Pooling layer ``i`` (sharpening). ``mode`` is passed to the GMM
        layers ("sample": one component per position, "mean": expected centroid).
        """
        per_layer = self.top_s_per_layer(top_s)
        if pooling not in ("dense", "sparse"):
            raise InputError(f"pooling must be 'dense' or 'sparse', got '{pooling}'")
        for i in range(start, -1, -1):
            layer = self.layers[i]
            if isinstance(layer, GMM):
                if fuse is not None:
                    control = fuse(i, control)
                control = layer.backwards(control, generator=generator, n=n, top_s=per_layer[i],
                                          divisor=divisor, use_pi=use_pi, mode=mode)
            elif isinstance(layer, Classifier):
                raise InputError("top_down cannot start at a classifier layer: pass its "
                                 "control signal to the layer below")
            else:
                assert control is not None
                if isinstance(layer, Pooling):
                    control = layer.backwards(control, generator=generator, mode=pooling)
                else:
                    control = layer.backwards(control, generator=generator)
                if refine is not None:
                    control = refine(i, control)
        assert control is not None
        return control

    def top_s_per_layer(self, top_s: int | Sequence[int]) -> dict[int, int]:
        """S of top-S sampling per GMM layer, keyed by layer index.

        ``top_s`` is one S for every GMM layer, or one per GMM layer, lowest first (the
        reference's sampling scripts use, e.g., S = 2 in the lower layers). A layer's S acts on
        the control signal it receives, so the top GMM's S matters only when a signal comes from
        above (class-conditional sampling, variants, in-painting); unconditioned, the top GMM
        draws its components from pi or uniformly.
        """
        gmm = self.gmm_indices
        bad = InputError(f"top_s must be a positive integer or one per GMM layer (lowest first), "
                         f"got {top_s!r}")

        def as_s(v: Any) -> int:
            if isinstance(v, (bool, str, bytes)):
                raise bad
            try:
                f = float(v)
            except (TypeError, ValueError):
                raise bad from None
            if not (f.is_integer() and f >= 1):
                raise bad
            return int(f)

        if isinstance(top_s, (str, bytes)) or not isinstance(top_s, (Sequence, np.ndarray,
                                                                      torch.Tensor)):
            values = [as_s(top_s)] * len(gmm)
        elif isinstance(top_s, (np.ndarray, torch.Tensor)) and top_s.ndim == 0:
            values = [as_s(top_s)] * len(gmm)
        else:
            values = [as_s(v) for v in list(top_s)]
            if len(values) != len(gmm):
                raise InputError(f"top_s lists {len(values)} values, but {self.spec()} has "
                                 f"{len(gmm)} GMM layers (give one S per GMM layer, lowest first)")
        return dict(zip(gmm, values))

    @torch.no_grad()
    def sample(self, n: int, *, top_s: int | Sequence[int] = 1, divisor: float = 10.0,
               use_pi: bool = False, labels: Sequence[int] | torch.Tensor | None = None,
               pooling: str = "dense", generator: torch.Generator | None = None,
               seed: int | None = None, clip: bool = True, batch_size: int | None = None,
               sharpen: Any = None, condition: Any = None) -> torch.Tensor:
        """Draw ``n`` images (n, H, W, C) by top-S sampling through the chain of priors.

        Arguments:
            n: number of samples.
            top_s: S, the number of largest control-signal entries kept per position; one
                value, or one per GMM layer, lowest first.
            divisor: noise std is 1/(d * divisor); ``inf`` disables noise.
            use_pi: the top GMM draws components by pi instead of uniformly.
            labels: class per sample (or one class for all) for class-conditional sampling
                through the classifier; with C(S, n) the signals for the lower GMM layers
                multiply the control signal coming from above (both must agree).
            pooling: up-sampling of Pooling layers, "dense" or "sparse".
            generator, seed: randomness (a seed makes a fresh generator).
            clip: clamp the images to [0, 1].
            batch_size: draw in batches of this size to bound memory; the batches share one
                generator, so a seed fixes the result for a given batch size.
            sharpen: a :class:`~deepmix.inference.Sharpening` (or a dict of its fields, or True
                for the defaults): gradient-ascent sharpening after Folding/Pooling layers.
        """
        if n < 1:
            raise InputError(f"number of samples must be >= 1, got {n}")
        self.top_s_per_layer(top_s)  # bad values fail before anything is drawn
        generator = self._generator(generator, seed)
        if batch_size is not None and 0 < batch_size < n:
            lab = None if labels is None else self.check_labels(labels, n)
            parts = []
            for start in range(0, n, batch_size):
                m = min(batch_size, n - start)
                part_labels = None if lab is None else lab[start:start + m]
                parts.append(self.sample(m, top_s=top_s, divisor=divisor, use_pi=use_pi,
                                         labels=part_labels, pooling=pooling,
                                         generator=generator, clip=clip, sharpen=sharpen))
            return torch.cat(parts)
        control: torch.Tensor | None = None
        fuse = None
        last = len(self.layers) - 1
        if self.classifier is not None:
            last -= 1
            if labels is not None:
                lab = self.check_labels(labels, n)
                signals = self.classifier.backwards_all(lab)
                control = signals[0]
                extra = dict(zip(self.classifier_sources, signals[1:]))
                if extra:
                    def fuse(i: int, t: torch.Tensor | None) -> torch.Tensor | None:
                        if i not in extra or t is None:
                            return t
                        return t.clamp_min(1e-6) * extra[i].clamp_min(1e-6)
        elif labels is not None:
            raise InputError(f"model {self.spec()} has no classifier layer: cannot sample by class")
        # Without a control signal sampling starts at the top GMM; a classifier's signal also
        # passes the layers between it and the top GMM.
        first = last if control is not None else max(self.gmm_indices)
        from .sharpening import sharpening_hook

        out = self.top_down(control, first, n=n, top_s=top_s, divisor=divisor, use_pi=use_pi,
                            pooling=pooling, generator=generator, fuse=fuse,
                            refine=sharpening_hook(self, sharpen))
        return out.clamp(0.0, 1.0) if clip else out

    def check_labels(self, labels: Any, n: int) -> torch.Tensor:
        """Class labels as int64 (n,) on the model's device; one label is repeated n times."""
        if self.classifier is None:
            raise InputError(f"model {self.spec()} has no classifier layer C(S)")
        if torch.is_tensor(labels):
            labels = labels.cpu()
        try:
            lab = torch.as_tensor(np.asarray(labels), device=self.device)
        except (TypeError, ValueError):
            raise InputError(f"class labels must be integers, got {labels!r}") from None
        if lab.is_floating_point() or lab.is_complex() or lab.dtype == torch.bool:
            if not (lab.is_floating_point() and bool((lab == lab.round()).all())):
                raise InputError(f"class labels must be integers, got dtype {lab.dtype}")
        lab = lab.long().reshape(-1)
        if lab.numel() == 1:
            lab = lab.expand(n)
        if lab.numel() != n:
            raise InputError(f"got {lab.numel()} labels for {n} samples")
        S = self.classifier.S
        if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= S):
            raise InputError(f"class labels must lie in 0..{S - 1} (the classifier has {S} "
                             f"classes), got {sorted(set(lab.tolist()))[:10]}")
        return lab

    # ---------------------------------------------------------------------------- convenience
    def fit(self, images: Any, labels: Any = None, **options: Any) -> list[dict]:
        """Train in place (see :func:`deepmix.training.train` for options, the fields of
        :class:`~deepmix.training.TrainConfig`); returns the history."""
        return super().fit(images, labels, **options)
