"""Training objectives: what a family plugs into the one training loop.

Gradient objectives (``mle``/``sgd``, ``sm``, ``ssm``) train any family with a differentiable
``log_prob``; EM objectives (``em``) are family-specific. :func:`make_objective` finds one by
``(family, name)``; :func:`register_objective` adds one. The plain loss functions
(:func:`nll`, :func:`score_matching`, :func:`sliced_score_matching`) stay importable here.
"""

from .base import (LoopInfo, Objective, ObjectiveOptions, make_objective, objective_class, objective_names,
                   register_objective)
from .dcgmm import DCGMMObjective, DCGMMOptions, split_train_config
from .em import (CircuitEM, CircuitEMOptions, GaussianMixtureEM, GaussianMixtureEMOptions,
                 GaussianMixtureStepwiseEM, StepwiseEMOptions)
from .gradient import (GradientObjective, GradientOptions, MaximumLikelihood, ScoreMatching,
                       SlicedOptions, SlicedScoreMatching)
from .deep_gmm import HardEM, HardEMOptions
from .drmm import DRMMObjective, DRMMOptions
from .losses import OBJECTIVES, get_objective, nll, score_matching, sliced_score_matching

__all__ = ["LoopInfo", "DCGMMObjective", "DCGMMOptions", "split_train_config", "Objective", "ObjectiveOptions", "make_objective", "objective_class", "objective_names",
           "register_objective", "GaussianMixtureEM", "GaussianMixtureEMOptions", "GaussianMixtureStepwiseEM", "StepwiseEMOptions", "CircuitEM",
           "CircuitEMOptions", "GradientObjective", "GradientOptions", "SlicedOptions",
           "MaximumLikelihood", "ScoreMatching", "SlicedScoreMatching", "OBJECTIVES",
           "get_objective", "nll", "score_matching", "sliced_score_matching",
           "HardEM", "HardEMOptions", "DRMMObjective", "DRMMOptions"]

