"""How the commands build, feed and describe each model family from command-line options.

A family that trains on flat rows (the flat GMM, circuits) sees images flattened to (N, H*W*C)
in its own dtype; DCGMM sees (N, H, W, C). Adding a family means one builder here.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

import torch

from ..errors import ConfigError

__all__ = ["BUILDERS", "DEFAULT_OBJECTIVE", "build_model", "model_input", "describe"]


def _gmm(args: argparse.Namespace, shape: tuple[int, int, int]) -> Any:
    from ..models import MixtureDensity

    H, W, C = shape
    dtype = {"float64": torch.float64, "float32": torch.float32}.get(args.dtype)
    if dtype is None:
        raise ConfigError(f"Unknown dtype '{args.dtype}'; expected float64 or float32")
    return MixtureDensity(args.k, H * W * C, args.covariance,
                          parametrization="precision" if args.covariance == "full" else
                          "covariance", dtype=dtype)


def _circuit(args: argparse.Namespace, shape: tuple[int, int, int]) -> Any:
    from ..models import poon_domingos, rat_spn

    H, W, C = shape
    dtype = {"float64": torch.float64, "float32": torch.float32}.get(args.dtype)
    if dtype is None:
        raise ConfigError(f"Unknown dtype '{args.dtype}'; expected float64 or float32")
    if args.structure == "rat-spn":
        return rat_spn(H * W * C, args.depth, args.repetitions, args.k, seed=args.seed,
                       dtype=dtype, init="em")
    if args.structure == "pd":
        if C != 1:
            raise ConfigError("the Poon-Domingos structure takes grey images (one channel)")
        return poon_domingos(H, W, [H / args.pd_pieces], args.k, seed=args.seed, dtype=dtype,
                             init="em")
    raise ConfigError(f"Unknown circuit structure '{args.structure}'; expected rat-spn or pd")


def _deep_gmm(args: argparse.Namespace, shape: tuple[int, int, int]) -> Any:
    from ..models import DeepGMM, DeepGMMConfig

    layers = "hc3,hc3,hc3,bd4" if args.layers is None else args.layers
    return DeepGMM(DeepGMMConfig(shape=tuple(shape), fold=args.fold, layers=layers,
                                 dtype=args.dtype, seed=args.seed, search=args.search,
                                 gating=args.gating,
                                 prior=getattr(args, "prior", None) or
                                 ("gating" if args.gating else "uniform")))


def _drmm(args: argparse.Namespace, shape: tuple[int, int, int]) -> Any:
    from ..models import DRMM, DRMMConfig
    from ..models.drmm import PRESETS, PatchDRMM

    H, W, C = shape
    dtype = getattr(args, "dtype", "float32")
    preset = getattr(args, "preset", None)
    if preset is not None:
        # an image hierarchy (patch blocks + global DRMM) of a named architecture
        if preset not in PRESETS:
            raise ConfigError(f"Unknown DRMM preset '{preset}'; expected "
                              f"{', '.join(PRESETS)}")
        if tuple(PRESETS[preset][0]) != (H, W, C):
            raise ConfigError(f"DRMM preset '{preset}' takes {PRESETS[preset][0]} images, the "
                              f"data are {(H, W, C)}")
        return PatchDRMM.preset(preset, dtype=dtype)
    # The CLI's --dtype defaults to float64 for gmm/circuit; DRMM takes both.
    layers = getattr(args, "layers", None)
    try:
        n_layers = 3 if layers is None else int(layers)
    except ValueError:
        raise ConfigError(f"drmm: --layers is the number of layers, got '{layers}'") from None
    if n_layers < 1:
        raise ConfigError(f"drmm: --layers must be >= 1, got {n_layers}")
    return DRMM(DRMMConfig(n_features=H * W * C, n_components=args.k, n_layers=n_layers,
                           sigma=getattr(args, "sigma", "scalar"), dtype=dtype))


#: family -> builder(args, image shape) of a fresh model.
BUILDERS: dict[str, Callable[[argparse.Namespace, tuple[int, int, int]], Any]] = {
    "gmm": _gmm, "circuit": _circuit, "deep-gmm": _deep_gmm, "drmm": _drmm}
DEFAULT_OBJECTIVE = {"gmm": "em", "circuit": "em", "deep-gmm": "hard-em", "drmm": "drmm-em"}


def build_model(family: str, args: argparse.Namespace, shape: tuple[int, int, int]) -> Any:
    try:
        builder = BUILDERS[family]
    except KeyError:
        raise ConfigError(f"Unknown model family '{family}'; expected dcgmm, "
                          f"{', '.join(BUILDERS)}") from None
    return builder(args, shape)


def model_input(model: Any, images: torch.Tensor) -> torch.Tensor:
    """Images (N, H, W, C) in [0, 1] as the model's input: flat rows in its dtype, except for
    DCGMM, which takes images."""
    if model.family == "dcgmm":
        return images
    x = images.reshape(images.shape[0], -1)
    return x.to(dtype=model.dtype, device=model.device)


def describe(model: Any) -> str:
    """One line naming the model."""
    if model.family == "dcgmm":
        return model.spec()
    if model.family == "gmm":
        return f"flat GMM (K={model.n_components}, {model.covariance_type})"
    if model.family == "deep-gmm":
        return f"deep GMM {model.spec()} (fold {model.config.fold}, {model.n_params()} params)"
    if model.family == "drmm" and hasattr(model, "blocks"):
        return (f"patch DRMM ({len(model.blocks) - 1} patch blocks + global, {model.n_layers} "
                f"layers, {model.n_parameters} parameters)")
    if model.family == "drmm":
        return (f"DRMM (L={model.n_layers}, K={model.n_components}, {model.config.sigma} sigma, "
                f"{model.n_parameters} parameters)")
    return f"{model.family} {type(model).__name__}"
