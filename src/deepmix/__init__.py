"""deepmix: deep mixture models of images (DCGMM and friends) on PyTorch.

Quick use::

    import deepmix
    images = deepmix.data.load_images("mnist").to_tensor()
    model = deepmix.DCGMM("2L-c")
    model.fit(images, epochs=3, out_dir="runs/mnist")
    model = deepmix.load("runs/mnist")
    ll = model.log_likelihood(images[:100], layer=0)
    samples = model.sample(64, seed=0)
"""

from __future__ import annotations

from . import data  # noqa: F401  (``deepmix.data.load_images`` after a bare ``import deepmix``)
from .errors import DeepmixError
from .models import ARCHITECTURES, DCGMM
from .training import TrainConfig, load_model, train

__version__ = "0.1.0"
__all__ = ["DCGMM", "ARCHITECTURES", "TrainConfig", "train", "load", "DeepmixError", "__version__"]


def load(directory, device: str = "cpu"):
    """Rebuild a trained model from its run folder (``config.json`` + ``weights.safetensors``):
    a :class:`DCGMM`, or a flat-GMM ``MixtureDensity`` for ``deepmix fit-gmm`` runs."""
    return load_model(directory, device=device)
