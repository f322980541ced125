"""Training: the loop, its configuration, annealing and checkpoints."""

from .annealing import SigmaController, annealing_matrix, initial_sigma
from .checkpoint import load_model, save_model
from .config import TrainConfig
from .loop import FitConfig, fit, fit_density
from .objectives import (OBJECTIVES, Objective, get_objective, make_objective, nll, score_matching,
                         sliced_score_matching)
from .trainer import fit_model, train
from .gaussian_mixture import GaussianMixture

from ..models.base import install_training as _install

_install(fit=fit_model, save=save_model)

__all__ = ["GaussianMixture", "SigmaController", "annealing_matrix", "initial_sigma", "load_model", "save_model",
           "TrainConfig", "train", "FitConfig", "fit", "Objective", "make_objective", "OBJECTIVES", "fit_density", "get_objective", "nll",
           "score_matching", "sliced_score_matching"]
