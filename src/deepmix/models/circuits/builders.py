"""Builders: an :class:`EinsumNetwork` of a standard region graph in one call.

- :func:`rat_spn`: RAT-SPN, :func:`~.region_graph.random_binary_trees` (Peharz et al. 2019);
- :func:`poon_domingos`: Poon-Domingos image splits, :func:`~.region_graph.poon_domingos_graph`.

The built circuit's :attr:`~EinsumNetwork.config` holds the graph itself, so a saved run does not
depend on the builder or on its split seed.
"""

from __future__ import annotations

from typing import Any, Sequence

from .network import EinsumNetwork
from .region_graph import poon_domingos_graph, random_binary_trees

__all__ = ["rat_spn", "poon_domingos"]


def rat_spn(num_var: int, depth: int, repetitions: int, num_sums: int = 10,
            num_input_distributions: int | None = None, *, seed: int = 0, **options: Any) -> EinsumNetwork:
    """RAT-SPN EinsumNetwork: :func:`random_binary_trees` (split seed ``seed``) with Gaussian leaves.

    ``options`` go to :class:`EinsumNetwork` (``num_dims``, ``leaf``, ``total_count``, ``min_var``,
    ``max_var``, ``init``, ``dtype``); the parameters are initialised from ``seed`` too.
    """
    graph = random_binary_trees(num_var, depth, repetitions, seed=seed)
    return EinsumNetwork(graph, num_sums, num_input_distributions, seed=seed, **options)


def poon_domingos(height: int, width: int, deltas: Sequence[float | Sequence[float]], num_sums: int = 10,
                  num_input_distributions: int | None = None, *, seed: int = 0,
                  **options: Any) -> EinsumNetwork:
    """Poon-Domingos EinsumNetwork of a ``height`` x ``width`` image (:func:`poon_domingos_graph`).

    The EinsumNetworks demo's ``pd_num_pieces`` p corresponds to ``deltas=[height / p]``
    (p = 4 on 28x28: 7x7 leaf blocks). ``options`` go to :class:`EinsumNetwork`.
    """
    graph = poon_domingos_graph(height, width, deltas)
    return EinsumNetwork(graph, num_sums, num_input_distributions, seed=seed, **options)
