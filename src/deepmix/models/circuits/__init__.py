r"""EinsumNetworks: vectorised probabilistic circuits over region graphs (RAT-SPN, Poon-Domingos).

The model family ``"circuit"``: :class:`EinsumNetwork` with its :class:`CircuitConfig`.

A *region graph* (:mod:`.region_graph`) has regions (scopes = sets of variables) and partitions
(a region split into exactly two disjoint child regions whose union is the parent scope: smooth
and decomposable). Every region carries a vector of densities: K = ``num_input_distributions`` at
leaf regions, K = ``num_sums`` at inner regions and one density at the root.

- Leaf region with replica r, scope S (:mod:`.leaves`):
  :math:`\log \ell_k(x) = \sum_{d\in S} \log f_{d,k,r}(x_d)`, with Gaussian
  :math:`f_{d,k,r} = \mathcal N(\mu_{d,k,r}, \operatorname{diag}\sigma^2_{d,k,r})` over the
  ``num_dims`` channels of variable d (:class:`GaussianLeaves`), or
  :math:`\mathrm{Binomial}(N, p_{d,k,r})` on integer-valued pixels 0..N (:class:`BinomialLeaves`,
  ``leaf="binomial"``, the thesis' image setup), where x is treated as continuous in the score.
- Einsum (one per partition with children a, b, :mod:`.network`):
  :math:`o_c = \sum_{i,j} W_{ijc}\, a_i b_j`, :math:`W \ge 0`, :math:`\sum_{ij} W_{ijc} = 1`.
- Mixing (a region with several partitions):
  :math:`o_c = \sum_p V_{cp}\, o^{(p)}_c`, :math:`\sum_p V_{cp} = 1`.

Modules: :mod:`.region_graph` (structure and its builders), :mod:`.leaves` (one class per leaf
family), :mod:`.network` (compilation, forward pass, exact marginals, closed-form score, EM
through the gradient), :mod:`.sampling` (ancestral, conditional and MPE draws), :mod:`.config`
(the run-folder config, graph included) and :mod:`.builders` (:func:`rat_spn`,
:func:`poon_domingos`).
"""

from __future__ import annotations

from .builders import poon_domingos, rat_spn
from .config import CircuitConfig
from .leaves import BINOMIAL_LOGIT_SCALE, LEAF_FAMILIES, BinomialLeaves, GaussianLeaves, Leaves
from .network import EinsumNetwork
from .region_graph import RegionGraph, poon_domingos_graph, random_binary_trees

__all__ = ["RegionGraph", "random_binary_trees", "poon_domingos_graph", "EinsumNetwork", "rat_spn",
           "poon_domingos", "CircuitConfig", "Leaves", "GaussianLeaves", "BinomialLeaves",
           "LEAF_FAMILIES", "BINOMIAL_LOGIT_SCALE"]
