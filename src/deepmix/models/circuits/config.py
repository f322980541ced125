"""The ``"model"`` section of a circuit run folder: :class:`CircuitConfig`.

The region graph is part of the config (``num_var``, ``scopes``, ``partitions``, ``root``,
``replicas``), so a run folder rebuilds the exact circuit without the builder or its seed; all
fields are JSON-friendly (lists of integers; ``replicas`` as ``[region, replica]`` pairs, since
JSON object keys would be strings).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ...errors import ConfigError
from .leaves import LEAF_FAMILIES
from .region_graph import RegionGraph

__all__ = ["CircuitConfig", "DTYPES", "dtype_name"]

#: Parameter dtypes a circuit config names.
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}


def dtype_name(dtype: torch.dtype | str) -> str:
    """``"float32"`` / ``"float64"`` for a torch dtype or its name; ConfigError otherwise."""
    for name, dt in DTYPES.items():
        if dtype == dt or dtype == name:
            return name
    raise ConfigError(f"dtype must be float32 or float64, got {dtype}")


def _positive_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v < 1:
        raise ConfigError(f"{name} must be a positive integer, got {v}")
    return int(v)


@dataclass
class CircuitConfig:
    r"""Everything that rebuilds an :class:`~deepmix.models.circuits.EinsumNetwork`.

    Arguments:
        num_var, scopes, partitions, root, replicas: the :class:`RegionGraph` (``replicas`` as
            ``(region, replica)`` pairs, leaf regions not named have replica 0).
        num_sums: K of inner regions.
        num_input_distributions: K of leaf regions (None: ``num_sums``; stored resolved).
        num_dims: channels per variable.
        leaf: ``"gaussian"`` or ``"binomial"`` (:mod:`~deepmix.models.circuits.leaves`).
        total_count: N of Binomial leaves.
        min_var, max_var: bounds of Gaussian leaf variances, :math:`0 < v_{\min} < v_{\max}`.
        init: ``"gradient"`` or ``"em"``; ``seed``: seed of that initialisation (a loaded run
            then overwrites every parameter with its weights).
        dtype: ``"float32"`` or ``"float64"``.
    """

    num_var: int
    scopes: tuple[tuple[int, ...], ...]
    partitions: tuple[tuple[int, int, int], ...]
    root: int = 0
    replicas: tuple[tuple[int, int], ...] = ()
    num_sums: int = 10
    num_input_distributions: int | None = None
    num_dims: int = 1
    leaf: str = "gaussian"
    total_count: int = 255
    min_var: float = 1e-4
    max_var: float = 10.0
    init: str = "gradient"
    seed: int = 0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.num_input_distributions is None:
            self.num_input_distributions = self.num_sums
        for name in ("num_sums", "num_input_distributions", "num_dims"):
            setattr(self, name, _positive_int(name, getattr(self, name)))
        if not 0 < self.min_var < self.max_var:
            raise ConfigError(f"Need 0 < min_var < max_var, got {self.min_var} and {self.max_var}")
        self.min_var, self.max_var = float(self.min_var), float(self.max_var)
        if self.leaf not in LEAF_FAMILIES:
            raise ConfigError(f"Unknown leaf '{self.leaf}'; expected "
                              f"{' or '.join(repr(k) for k in LEAF_FAMILIES)}")
        if self.leaf == "binomial":  # Gaussian leaves ignore total_count
            self.total_count = _positive_int("total_count", self.total_count)
        if self.init not in ("gradient", "em"):
            raise ConfigError(f"Unknown init '{self.init}'; expected 'gradient' or 'em'")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        self.dtype = dtype_name(self.dtype)
        try:
            self.num_var, self.root = int(self.num_var), int(self.root)
            self.scopes = tuple(tuple(int(v) for v in s) for s in self.scopes)
            self.partitions = tuple(tuple(int(i) for i in p) for p in self.partitions)  # type: ignore[misc]
            pairs = self.replicas.items() if isinstance(self.replicas, dict) else self.replicas
            self.replicas = tuple(sorted(tuple(int(i) for i in p) for p in pairs))  # type: ignore[misc]
        except (TypeError, ValueError):
            raise ConfigError("the region graph fields (num_var, scopes, partitions, root, replicas) "
                              "must hold integers") from None
        if any(len(p) != 3 for p in self.partitions):
            raise ConfigError("every partition must be a (parent, left, right) triple")
        if any(len(p) != 2 for p in self.replicas):
            raise ConfigError("replicas must be (region, replica) pairs")

    @classmethod
    def from_graph(cls, graph: RegionGraph, **options: Any) -> "CircuitConfig":
        """The config of ``graph`` with ``options`` (the other fields)."""
        return cls(num_var=graph.num_var, scopes=tuple(graph.scopes),  # type: ignore[arg-type]
                   partitions=tuple(graph.partitions), root=graph.root,  # type: ignore[arg-type]
                   replicas=tuple(sorted(graph.replicas.items())), **options)

    def graph(self) -> RegionGraph:
        """The :class:`RegionGraph` of this config (validated: SpecError when malformed)."""
        return RegionGraph(self.num_var, [tuple(s) for s in self.scopes],
                           [tuple(p) for p in self.partitions],  # type: ignore[misc]
                           self.root, dict(self.replicas))

    @property
    def torch_dtype(self) -> torch.dtype:
        """:attr:`dtype` as a torch dtype."""
        return DTYPES[self.dtype]
