r"""Region graphs: the structure of a smooth, decomposable circuit (RAT-SPN, Poon-Domingos).

A *region graph* over variables :math:`0 .. D-1` has regions (scopes, sets of variables) and
partitions: a partition :math:`(P, A, B)` splits region P into two children with

.. math:: \operatorname{sc}(A) \cap \operatorname{sc}(B) = \emptyset, \qquad
          \operatorname{sc}(A) \cup \operatorname{sc}(B) = \operatorname{sc}(P)

(decomposable and smooth). Regions without partitions are leaves; the root's scope is every
variable. Leaf regions carry a *replica* index: the leaves of one replica are disjoint, so one
replica is one set of per-variable densities (:mod:`.leaves`), and RAT-SPN's repetitions are
replicas.

Builders: :func:`random_binary_trees` (RAT-SPN) and :func:`poon_domingos_graph` (image splits).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ...errors import SpecError

__all__ = ["RegionGraph", "random_binary_trees", "poon_domingos_graph", "cut_points"]


@dataclass
class RegionGraph:
    """A region graph over variables ``0 .. num_var-1``.

    Arguments:
        num_var: number of variables D.
        scopes: the scope of every region (region id = position); equal scopes are allowed
            (RAT-SPN repetitions) and are distinct regions.
        partitions: ``(parent, left, right)`` region ids; every partition splits its parent into
            two disjoint halves whose union is the parent's scope.
        root: id of the root region (scope = all variables).
        replicas: replica index of every leaf region's parameters (default 0), a dict or
            ``(region, replica)`` pairs; leaf regions of one replica must not overlap, so each
            replica is a set of per-variable densities.
    """

    num_var: int
    scopes: list[tuple[int, ...]]
    partitions: list[tuple[int, int, int]]
    root: int
    replicas: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scopes = [tuple(sorted(int(v) for v in s)) for s in self.scopes]
        self.partitions = [tuple(int(i) for i in p) for p in self.partitions]  # type: ignore[misc]
        # a dict or (region, replica) pairs; JSON turns int keys into strings, int() undoes that
        try:
            self.replicas = {int(r): int(k) for r, k in dict(self.replicas).items()}
        except (TypeError, ValueError):
            raise SpecError(f"replicas must map region ids to replica indices (a dict or "
                            f"(region, replica) pairs), got {self.replicas!r:.80}") from None
        self.validate()

    @property
    def leaves(self) -> list[int]:
        """Ids of the leaf regions (regions without a partition), in id order."""
        parents = {p for p, _, _ in self.partitions}
        return [r for r in range(len(self.scopes)) if r not in parents]

    @property
    def num_replicas(self) -> int:
        """Number of leaf parameter sets: 1 + the largest replica index of a leaf region."""
        return 1 + max((self.replicas.get(r, 0) for r in self.leaves), default=0)

    def children(self) -> dict[int, list[int]]:
        """Region id -> its child regions (both children of every partition, in order)."""
        children: dict[int, list[int]] = defaultdict(list)
        for p, a, b in self.partitions:
            children[p] += [a, b]
        return children

    def validate(self) -> None:
        """Raise :class:`SpecError` unless the graph is a smooth, decomposable, acyclic DAG."""
        n = len(self.scopes)
        if self.num_var < 1:
            raise SpecError(f"A region graph needs at least one variable, got num_var={self.num_var}")
        if not 0 <= self.root < n:
            raise SpecError(f"Root region {self.root} does not exist ({n} regions)")
        for r, s in enumerate(self.scopes):
            if not s:
                raise SpecError(f"Region {r} has an empty scope")
            if len(set(s)) != len(s) or s[0] < 0 or s[-1] >= self.num_var:
                raise SpecError(f"Region {r} has scope {s} outside 0..{self.num_var - 1} or with repeats")
        if set(self.scopes[self.root]) != set(range(self.num_var)):
            raise SpecError(f"The root scope covers {len(self.scopes[self.root])} of {self.num_var} variables")
        for k, (p, a, b) in enumerate(self.partitions):
            if not all(0 <= i < n for i in (p, a, b)):
                raise SpecError(f"Partition {k} {(p, a, b)} names a region that does not exist")
            sa, sb = set(self.scopes[a]), set(self.scopes[b])
            if sa & sb:
                raise SpecError(f"Partition {k} of region {p} is not decomposable: children {a} and {b} "
                                f"share variables {sorted(sa & sb)[:5]}")
            if sa | sb != set(self.scopes[p]):
                raise SpecError(f"Partition {k} of region {p} is not smooth: its children cover "
                                f"{sorted(sa | sb)[:8]}... not the parent scope {self.scopes[p][:8]}...")
        # Acyclic and connected: every region reachable from the root, a topological order exists.
        children = self.children()
        seen, stack = {self.root}, [self.root]
        while stack:
            for c in children[stack.pop()]:
                if c not in seen:
                    seen.add(c)
                    stack.append(c)
        if len(seen) != n:
            raise SpecError(f"{n - len(seen)} regions are not reachable from the root")
        self.heights()  # raises on cycles
        for rep in set(self.replicas.get(r, 0) for r in self.leaves):
            covered: list[int] = []
            for r in self.leaves:
                if self.replicas.get(r, 0) == rep:
                    covered += self.scopes[r]
            if len(covered) != len(set(covered)):
                raise SpecError(f"Leaf regions of replica {rep} overlap; give overlapping leaves "
                                f"different replicas")

    def heights(self) -> list[int]:
        """Height of every region: 0 at leaves, 1 + the largest child height otherwise."""
        n = len(self.scopes)
        children = self.children()
        height = [-1] * n
        state = [0] * n  # 0 new, 1 on the stack, 2 done
        for start in range(n):
            if state[start]:
                continue
            stack = [(start, iter(children[start]))]
            state[start] = 1
            while stack:
                node, it = stack[-1]
                nxt = next(it, None)
                if nxt is None:
                    stack.pop()
                    height[node] = 1 + max((height[c] for c in children[node]), default=-1)
                    state[node] = 2
                elif state[nxt] == 1:
                    raise SpecError(f"The region graph has a cycle through region {nxt}")
                elif state[nxt] == 0:
                    state[nxt] = 1
                    stack.append((nxt, iter(children[nxt])))
        return height


def random_binary_trees(num_var: int, depth: int, repetitions: int, *, seed: int = 0) -> RegionGraph:
    """RAT-SPN region graph: ``repetitions`` random binary trees of ``depth`` splits under one root.

    Each repetition splits the root scope, then every resulting region, ``depth`` times into two
    halves of a fresh random permutation of its scope (first half ``round(n/2)``, at least one
    variable each); its leaf regions get replica r. The root mixes the R repetitions.
    """
    if depth < 1 or repetitions < 1:
        raise SpecError(f"RAT-SPN needs depth >= 1 and repetitions >= 1, got {depth} and {repetitions}")
    if 2 ** depth > num_var:
        raise SpecError(f"RAT-SPN depth {depth} needs 2**depth <= num_var, got num_var={num_var}")
    rng = np.random.default_rng(seed)
    scopes: list[tuple[int, ...]] = [tuple(range(num_var))]
    partitions: list[tuple[int, int, int]] = []
    replicas: dict[int, int] = {}
    for r in range(repetitions):
        frontier = [0]
        for _ in range(depth):
            nxt = []
            for reg in frontier:
                scope = list(scopes[reg])
                perm = rng.permutation(scope)
                cut = min(max(int(round(len(scope) / 2)), 1), len(scope) - 1)
                ids = []
                for half in (perm[:cut], perm[cut:]):
                    scopes.append(tuple(sorted(int(v) for v in half)))
                    ids.append(len(scopes) - 1)
                partitions.append((reg, ids[0], ids[1]))
                nxt += ids
            frontier = nxt
        for leaf in frontier:
            replicas[leaf] = r
    return RegionGraph(num_var, scopes, partitions, root=0, replicas=replicas)


def cut_points(length: int, delta: float) -> list[int]:
    r"""Poon-Domingos cut points of an axis of ``length`` pixels:
    :math:`\lceil i\,\delta \rceil` for :math:`i = 1 .. \lfloor (s - 1) / \delta \rfloor`."""
    return [int(math.ceil(i * delta)) for i in range(1, int(math.floor((length - 1) / delta)) + 1)]


def poon_domingos_graph(height: int, width: int, deltas: Sequence[float | Sequence[float]]) -> RegionGraph:
    """Poon-Domingos region graph of a ``height`` x ``width`` image (variable = ``y * width + x``).

    Cut points on an axis of length s with displacement δ are ``ceil(i δ)``, i = 1..floor((s-1)/δ).
    Starting at the full image, every rectangle is split at every cut point strictly inside it, on
    both axes, using the coarsest δ that has such a point; equal rectangles are one shared region.
    Rectangles without interior cut points are leaves. ``deltas`` holds numbers or (δ_y, δ_x) pairs.
    """
    if height < 1 or width < 1:
        raise SpecError(f"Poon-Domingos needs a positive image shape, got {height}x{width}")
    pairs = []
    for d in deltas:
        dy, dx = (float(d), float(d)) if np.isscalar(d) else (float(d[0]), float(d[1]))  # type: ignore[index]
        if dy <= 0 or dx <= 0:
            raise SpecError(f"Poon-Domingos deltas must be positive, got {d}")
        pairs.append((dy, dx))
    if not pairs:
        raise SpecError("Poon-Domingos needs at least one delta")
    pairs.sort(key=lambda p: -p[0] * p[1])  # coarsest first
    cuts = [(cut_points(height, dy), cut_points(width, dx)) for dy, dx in pairs]
    ids: dict[tuple[int, int, int, int], int] = {}
    scopes: list[tuple[int, ...]] = []
    partitions: list[tuple[int, int, int]] = []

    def region(box: tuple[int, int, int, int]) -> tuple[int, bool]:
        if box in ids:
            return ids[box], False
        y0, y1, x0, x1 = box
        scopes.append(tuple(y * width + x for y in range(y0, y1) for x in range(x0, x1)))
        ids[box] = len(scopes) - 1
        return ids[box], True

    root, _ = region((0, height, 0, width))
    queue = [(0, height, 0, width)]
    while queue:
        box = queue.pop()
        y0, y1, x0, x1 = box
        for cy, cx in cuts:
            inner_y = [c for c in cy if y0 < c < y1]
            inner_x = [c for c in cx if x0 < c < x1]
            if inner_y or inner_x:
                break
        else:
            continue
        children = [((y0, c, x0, x1), (c, y1, x0, x1)) for c in inner_y]
        children += [((y0, y1, x0, c), (y0, y1, c, x1)) for c in inner_x]
        for a, b in children:
            ia, new_a = region(a)
            ib, new_b = region(b)
            partitions.append((ids[box], ia, ib))
            queue += [bx for bx, new in ((a, new_a), (b, new_b)) if new]
    return RegionGraph(height * width, scopes, partitions, root=root)


