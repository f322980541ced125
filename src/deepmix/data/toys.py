"""2-D toy densities of the flow / score-matching literature, for quick density figures.

Two families share the names halfmoons, spirals and board but not their shape:

- :func:`make_toy` (:data:`TOYS`): deepmix's own generators. They return float32 (n, 2) arrays
  roughly inside [-4, 4]^2, drawn with ``numpy.random.default_rng(seed)`` so that a seed
  reproduces them exactly. ``noise`` is the standard deviation of isotropic Gaussian noise added
  to the points (``None``: the toy's default).
- :func:`thesis_toy` (:data:`THESIS_TOYS`): the thesis' versions (pc-training spec §6.1), with
  their own geometry (scikit-learn's ``make_moons`` with noise 0.1; spirals with uniform jitter;
  a checkerboard scaled by 2), float64, centred and shuffled, 20 000 points of seed 42 by
  default. :func:`thesis_train_valid` is the thesis' 10 000 train / 10 000 validation split of
  them, the data of ``deepmix fit-gmm --data halfmoons`` and of
  :mod:`deepmix.experiments.thesis_toys`.
- The DRMM paper's data (spec drmm §8), as torch tensors from a seed or ``torch.Generator``:
  :func:`drmm_swissroll` (2-D and 3-D), :func:`drmm_sierpinski`, the 4-link arm :func:`arm_ik`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from deepmix.errors import DataError

__all__ = ["TOYS", "SIERPINSKI_VERTICES", "make_toy", "THESIS_TOYS", "thesis_toy",
           "thesis_train_valid", "drmm_swissroll", "drmm_sierpinski", "DRMM_SIERPINSKI_CORNERS",
           "arm_ik", "arm_end_effector", "ARM_LINKS"]

TOYS: tuple[str, ...] = ("halfmoons", "spirals", "board", "swissroll", "sierpinski")
#: The thesis' toys (:func:`thesis_toy`): same names as three of :data:`TOYS`, other shapes.
THESIS_TOYS: tuple[str, ...] = ("halfmoons", "spirals", "board")

#: Corners of the Sierpinski triangle: equilateral, side 4, centroid at the origin.
SIERPINSKI_VERTICES = np.array(
    [[-2.0, -2.0 / np.sqrt(3.0)], [2.0, -2.0 / np.sqrt(3.0)], [0.0, 4.0 / np.sqrt(3.0)]]
)


def _halfmoons(n: int, rng: np.random.Generator) -> np.ndarray:
    # sklearn's make_moons geometry, centred and scaled by 2; the moon of each point is random
    # so that the two moons interleave in the array.
    t = rng.uniform(0.0, np.pi, n)
    upper = rng.random(n) < 0.5
    x = np.where(upper, np.cos(t), 1.0 - np.cos(t))
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    return 2.0 * np.stack([x - 0.5, y - 0.25], axis=1)


def _spirals(n: int, rng: np.random.Generator) -> np.ndarray:
    # Two arms, each 1.5 turns; sqrt keeps the density along the arc roughly uniform.
    t = np.sqrt(rng.random(n)) * 3.0 * np.pi
    sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    return sign[:, None] * np.stack([-np.cos(t) * t, np.sin(t) * t], axis=1) / 3.0


def _board(n: int, rng: np.random.Generator) -> np.ndarray:
    # 4x4 checkerboard on [-2, 2]^2: uniform over the 8 unit squares with floor(x)+floor(y) even.
    x = rng.uniform(-2.0, 2.0, n)
    y = rng.uniform(0.0, 1.0, n) + 2.0 * rng.integers(0, 2, n) - 2.0  # in [-2,-1) or [0,1)
    y = y + np.floor(x) % 2  # shift by one row under odd columns
    return np.stack([x, y], axis=1)


def _swissroll(n: int, rng: np.random.Generator) -> np.ndarray:
    # sklearn's make_swiss_roll (x, z) coordinates, t in [1.5 pi, 4.5 pi], scaled by 1/5.
    t = 1.5 * np.pi * (1.0 + 2.0 * rng.random(n))
    return np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / 5.0


def _sierpinski(n: int, rng: np.random.Generator) -> np.ndarray:
    # Chaos game run as n independent chains from uniform points in the triangle; each step
    # halves the distance to the attractor, so after 40 steps it is below 4 * 2^-40.
    a, b = rng.random(n), rng.random(n)
    flip = a + b > 1.0
    a, b = np.where(flip, 1.0 - a, a), np.where(flip, 1.0 - b, b)
    v = SIERPINSKI_VERTICES
    p = v[0] + a[:, None] * (v[1] - v[0]) + b[:, None] * (v[2] - v[0])
    for _ in range(40):
        p = 0.5 * (p + v[rng.integers(0, 3, n)])
    return p


_GENERATORS: dict[str, tuple[Callable[[int, np.random.Generator], np.ndarray], float]] = {
    # name: (generator, default noise std)
    "halfmoons": (_halfmoons, 0.1),
    "spirals": (_spirals, 0.1),
    "board": (_board, 0.0),
    "swissroll": (_swissroll, 0.1),
    "sierpinski": (_sierpinski, 0.0),
}


def make_toy(name: str, n: int, *, seed: int | None = None, noise: float | None = None) -> np.ndarray:
    """Draw ``n`` points of the 2-D toy ``name`` (one of :data:`TOYS`) as float32 (n, 2).

    Arguments:
        name: halfmoons, spirals, board (4x4 checkerboard on [-2, 2]^2), swissroll or sierpinski.
        n: Number of points, at least 1.
        seed: Seed of the random generator; the same seed gives the same points.
        noise: Std of added Gaussian noise; None uses the toy's default (0 for board and
            sierpinski, whose points then lie exactly on their support).
    """
    if name not in _GENERATORS:
        raise DataError(f"Unknown toy data set '{name}'; known: {', '.join(TOYS)}.")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise DataError(f"Toy data set '{name}': n must be an integer >= 1, got {n!r}.")
    generate, default_noise = _GENERATORS[name]
    std = default_noise if noise is None else float(noise)
    if not np.isfinite(std) or std < 0:
        raise DataError(f"Toy data set '{name}': noise must be a finite std >= 0, got {noise!r}.")
    rng = np.random.default_rng(seed)
    points = generate(int(n), rng)
    if std > 0:
        points = points + std * rng.standard_normal(points.shape)
    return points.astype(np.float32)


def thesis_toy(name: str, n: int = 20_000, seed: int = 42) -> np.ndarray:
    """The thesis' version of a 2-D toy set, centred and shuffled, float64 (n, 2).

    Not the same points as :func:`make_toy` of the same name (see the module docstring).
    """
    rng = np.random.default_rng(seed)
    if name == "halfmoons":
        from sklearn.datasets import make_moons

        x = make_moons(n, noise=0.1, random_state=seed)[0]
    elif name == "spirals":
        m = n // 2
        t = np.sqrt(rng.uniform(size=m)) * 3 * math.pi
        arm = np.stack([-t * np.cos(t) + 0.5 * rng.uniform(size=m),
                        t * np.sin(t) + 0.5 * rng.uniform(size=m)], 1)
        x = np.concatenate([arm, -arm]) / 3 + 0.1 * rng.normal(size=(2 * m, 2))
    elif name == "board":
        x1 = rng.uniform(-2, 2, n)
        x2 = rng.uniform(size=n) - 2 * rng.integers(0, 2, n) + np.floor(x1) % 2
        x = 2 * np.stack([x1, x2], 1)
    else:
        raise DataError(f"Unknown thesis toy '{name}'; known: {', '.join(THESIS_TOYS)}")
    x = x[rng.permutation(len(x))]
    return (x - x.mean(0)).astype(np.float64)


def thesis_train_valid(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The thesis' split of :func:`thesis_toy` ``name``: (train, valid) float64 tensors of
    10 000 x 2 each (the default 20 000 points of seed 42)."""
    x = torch.from_numpy(thesis_toy(name))
    return x[:10_000], x[10_000:]


# ---------------------------------------------------------------------------------------------
# The DRMM paper's toy data (spec drmm §8), drawn with torch from a seed or a torch.Generator.

#: Link lengths of the planar 4-link arm of the DRMM paper's Fig. 7 (total reach 1.2).
ARM_LINKS = (0.3, 0.3, 0.3, 0.3)


def _torch_generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    if generator is not None and seed is not None:
        raise DataError("give a seed or a generator, not both")
    if generator is not None:
        return generator
    return torch.Generator().manual_seed(0 if seed is None else int(seed))


def _check_n(name: str, n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise DataError(f"Toy data set '{name}': n must be an integer >= 1, got {n!r}.")
    return int(n)


def drmm_swissroll(n: int, *, dims: int = 2, seed: int | None = None,
                   generator: torch.Generator | None = None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    r"""The DRMM paper's Swiss roll (n, dims): :math:`\theta \sim U[0, 4\pi)` kept with
    probability :math:`\theta / 4\pi` (uniform along the arc), the point
    :math:`0.5\,\theta\,(\sin\theta, \cos\theta)` scaled by :math:`1/2\pi` into [-1, 1];
    ``dims=3`` appends a third coordinate U(-2, 2) (the 3-D roll of Fig. 7)."""
    n = _check_n("drmm_swissroll", n)
    if dims not in (2, 3):
        raise DataError(f"drmm_swissroll: dims must be 2 or 3, got {dims!r}")
    g = _torch_generator(seed, generator)
    out = torch.empty(0, dtype=torch.float64)
    while out.shape[0] < n:       # rejection: accepts about half of the draws
        theta = 4.0 * math.pi * torch.rand(2 * n, generator=g, dtype=torch.float64)
        keep = torch.rand(2 * n, generator=g, dtype=torch.float64) < theta / (4.0 * math.pi)
        out = torch.cat([out, theta[keep]])
    theta = out[:n]
    pts = 0.5 * theta[:, None] * torch.stack([torch.sin(theta), torch.cos(theta)], 1)
    pts = pts / (2.0 * math.pi)
    if dims == 3:
        pts = torch.cat([pts, 4.0 * torch.rand(n, 1, generator=g, dtype=torch.float64) - 2.0], 1)
    return pts.to(dtype)


#: Corners of the DRMM paper's Sierpinski triangle: on the unit circle at 0, 120, 240 degrees.
DRMM_SIERPINSKI_CORNERS = torch.tensor(
    [[math.cos(a), math.sin(a)] for a in (0.0, 2.0 * math.pi / 3.0, 4.0 * math.pi / 3.0)],
    dtype=torch.float64)


def drmm_sierpinski(n: int, *, depth: int = 7, seed: int | None = None,
                    generator: torch.Generator | None = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Points (n, 2) uniform over the ``3**depth`` triangles of a depth-``depth`` Sierpinski
    triangle with corners on the unit circle at 0, 120 and 240 degrees: a uniform point of the
    whole triangle moved ``depth`` times halfway to a random corner."""
    n = _check_n("drmm_sierpinski", n)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise DataError(f"drmm_sierpinski: depth must be an integer >= 0, got {depth!r}")
    g = _torch_generator(seed, generator)
    v = DRMM_SIERPINSKI_CORNERS
    a, b = torch.rand(n, generator=g, dtype=torch.float64), torch.rand(n, generator=g,
                                                                        dtype=torch.float64)
    flip = a + b > 1.0
    a, b = torch.where(flip, 1.0 - a, a), torch.where(flip, 1.0 - b, b)
    p = v[0] + a[:, None] * (v[1] - v[0]) + b[:, None] * (v[2] - v[0])
    for _ in range(depth):
        p = 0.5 * (p + v[torch.randint(0, 3, (n,), generator=g)])
    return p.to(dtype)


def arm_end_effector(angles: torch.Tensor, links: tuple[float, ...] = ARM_LINKS) -> torch.Tensor:
    r"""Forward kinematics of a planar arm rooted at the origin: angles (..., J) relative to the
    previous link, :math:`\phi_j = \sum_{i \le j}\theta_i`, tip
    :math:`\sum_j \ell_j (\cos\phi_j, \sin\phi_j)`, (..., 2)."""
    if angles.shape[-1] != len(links):
        raise DataError(f"arm_end_effector: {angles.shape[-1]} angles for {len(links)} links")
    phi = torch.cumsum(angles, -1)
    ell = torch.tensor(links, dtype=angles.dtype, device=angles.device)
    return torch.stack([(ell * torch.cos(phi)).sum(-1), (ell * torch.sin(phi)).sum(-1)], -1)


def arm_ik(n: int, *, seed: int | None = None, generator: torch.Generator | None = None,
           links: tuple[float, ...] = ARM_LINKS, dtype: torch.dtype = torch.float32
           ) -> torch.Tensor:
    r"""The planar 4-link arm of the DRMM paper's Fig. 7 (n, 6): angles U(-pi/2, pi/2) and
    the end effector (x, y) of :func:`arm_end_effector` (links 0.3)."""
    n = _check_n("arm_ik", n)
    g = _torch_generator(seed, generator)
    angles = (torch.rand(n, len(links), generator=g, dtype=torch.float64) - 0.5) * math.pi
    return torch.cat([angles, arm_end_effector(angles, links)], 1).to(dtype)
