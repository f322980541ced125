"""deepmix: deep mixture models of images (DCGMM and friends) on PyTorch.

Quick use::

    import deepmix
    images = deepmix.data.load_images("mnist").to_tensor()
    model = deepmix.DCGMM("2L-c")
    model.fit(images, epochs=3, out_dir="runs/mnist")
    model = deepmix.load("runs/mnist")
    ll = model.log_likelihood(images[:100], layer=0)
    samples = model.sample(64, seed=0)

Every family (``deepmix.models.family_names()``: dcgmm, gmm, circuit) is a
:class:`deepmix.models.Model` with ``log_prob``, ``sample(n, *, generator, condition)`` and a JSON
config; :func:`deepmix.fit` trains any of them with a pluggable objective, and :func:`load`
rebuilds any run folder.
"""

from __future__ import annotations

from . import data  # noqa: F401  (``deepmix.data.load_images`` after a bare ``import deepmix``)
from .errors import DeepmixError
from .models import ARCHITECTURES, DCGMM, Model
from .training import FitConfig, GaussianMixture, TrainConfig, fit, load_model, save_model, train

__version__ = "0.1.0"
__all__ = ["DCGMM", "GaussianMixture", "Model", "ARCHITECTURES", "TrainConfig", "train",
           "FitConfig", "fit", "load", "save", "DeepmixError", "__version__"]


def load(directory, device: str = "cpu"):
    """Rebuild a trained model from its run folder (``config.json`` + ``weights.safetensors``);
    the folder's ``family`` picks the class through the registry (DCGMM, the flat GMM's
    ``MixtureDensity``, a circuit's ``EinsumNetwork``, ...)."""
    return load_model(directory, device=device)


def save(model, directory):
    """Write a loadable run folder of any family's model (or of a fitted
    :class:`GaussianMixture`, whose density ``model_`` is saved)."""
    if isinstance(model, GaussianMixture):
        model = model.model_
    return save_model(model, directory)
