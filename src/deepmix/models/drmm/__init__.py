"""Deep Residual Mixture Models (spec drmm): :class:`DRMM`, its layers and conditions."""

from .components import CategoricalComponents, ContinuousComponents, block_log_softmax
from .conditions import Box, DRMMCondition, GaussianPrior, Inequality, ResolvedCondition
from .layer import LATENT_EPS, RMMLayer, Stream, StreamSpec
from .model import DRMM, MAX_PATHS, DRMMConfig, ForwardPass, parameter_count
from .hierarchy import PRESETS, PatchDRMM  # noqa: E402,I001  (a variant of DRMM.from_config)
from .patches import extract_patches, fold_patches, same_padding

__all__ = ["DRMM", "DRMMConfig", "parameter_count", "MAX_PATHS", "RMMLayer", "Stream",
           "StreamSpec", "LATENT_EPS", "ContinuousComponents", "CategoricalComponents",
           "block_log_softmax", "DRMMCondition", "Inequality", "Box", "GaussianPrior",
           "ResolvedCondition", "ForwardPass", "PatchDRMM", "PRESETS", "extract_patches",
           "fold_patches", "same_padding"]
