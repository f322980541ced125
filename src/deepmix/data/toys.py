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
  :func:`drmm_swissroll` (2-D and 3-D), :func:`drmm_sierpinski`, the 4-link arm :func:`arm_ik`,
  the 2-D humanoid :func:`humanoid_ik` (30 variables; names by :func:`humanoid_columns`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from deepmix.errors import DataError

__all__ = ["TOYS", "SIERPINSKI_VERTICES", "make_toy", "THESIS_TOYS", "thesis_toy",
           "thesis_train_valid", "drmm_swissroll", "drmm_sierpinski", "DRMM_SIERPINSKI_CORNERS",
           "arm_ik", "arm_end_effector", "ARM_LINKS", "HumanoidBone", "HUMANOID_BONES",
           "HUMANOID_ROOT", "HUMANOID_POINTS", "HUMANOID_POSE_DIM", "HUMANOID_DIM",
           "humanoid_columns", "humanoid_joints", "humanoid_segments", "humanoid_observe",
           "humanoid_poses", "humanoid_ik"]

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


# ---------------------------------------------------------------------------------------------
# The DRMM paper's 2-D humanoid for inverse kinematics (Sec. 4.1, Fig. 5; spec drmm §8).


@dataclass(frozen=True)
class HumanoidBone:
    """One bone of :data:`HUMANOID_BONES`.

    ``offset`` is the bone's origin (its joint) in the parent's frame (None parent: the root,
    whose origin is (root_x, root_y)); ``tip`` the far end of its drawn segment in its own frame
    ((0, 0) for the five end-effector bones, which are only points); angles are drawn uniformly
    between ``lo`` and ``hi`` (``lo > hi`` is legal and means the same interval, as in the
    reference rig); ``width`` is the width of the drawn rectangle; ``mass`` its share of the
    body mass."""

    name: str
    parent: int | None
    offset: tuple[float, float]
    lo: float
    hi: float
    tip: tuple[float, float] = (0.0, 0.0)
    width: float = 0.0
    mass: float = 0.0

    @property
    def length(self) -> float:
        return math.hypot(*self.tip)


_PI = math.pi
#: The 16 bones of the 2-D humanoid, parents first, in the order of their angle columns.
#: Geometry and angle limits are those of the reference's IK rig (``Plot_IK.py``, ``fullbody``):
#: torso and upper torso 0.25 long and 0.3 wide, head 0.25 (width 0.15), upper arms and
#: forearms 0.3, thighs and shins 0.35 (width 0.1); shoulders at (+-0.15, 0.25) of the upper
#: torso, hips at (+-0.15, 0) of the torso. The left forearm and thigh limits are written
#: (0.5 pi, 0) and (0.3 pi, -0.1 pi) as the reference writes them: the same intervals as the
#: right side (the limbs are not mirrored). Masses (deepmix's choice; the reference's "centre of
#: mass" is the sum of the 11 rectangles' vertex means divided by 16, not a centre of mass):
#: Winter's (2009) segment fractions, head 0.081, trunk 0.497 (half to each torso bone), upper
#: arm 0.028, forearm + hand 0.022, thigh 0.100, shank + foot 0.061 (they sum to 1), each at the
#: midpoint of its segment.
HUMANOID_BONES: tuple[HumanoidBone, ...] = (
    HumanoidBone("torso", None, (0.0, 0.0), -0.4 * _PI, 0.4 * _PI, (0.0, 0.25), 0.3, 0.2485),
    HumanoidBone("upper_torso", 0, (0.0, 0.25), -0.4 * _PI, 0.4 * _PI, (0.0, 0.25), 0.3, 0.2485),
    HumanoidBone("head", 1, (0.0, 0.25), -0.1 * _PI, 0.1 * _PI, (0.0, 0.25), 0.15, 0.081),
    HumanoidBone("head_top", 2, (0.0, 0.25), 0.0, 0.0),
    HumanoidBone("r_upper_arm", 1, (0.15, 0.25), -0.5 * _PI, 0.5 * _PI, (0.3, 0.0), 0.1, 0.028),
    HumanoidBone("r_forearm", 4, (0.3, 0.0), 0.0, 0.5 * _PI, (0.3, 0.0), 0.1, 0.022),
    HumanoidBone("r_hand", 5, (0.3, 0.0), 0.0, 0.0),
    HumanoidBone("l_upper_arm", 1, (-0.15, 0.25), -0.5 * _PI, 0.5 * _PI, (-0.3, 0.0), 0.1,
                 0.028),
    HumanoidBone("l_forearm", 7, (-0.3, 0.0), 0.5 * _PI, 0.0, (-0.3, 0.0), 0.1, 0.022),
    HumanoidBone("l_hand", 8, (-0.3, 0.0), 0.0, 0.0),
    HumanoidBone("r_thigh", 0, (0.15, 0.0), -0.1 * _PI, 0.3 * _PI, (0.0, -0.35), 0.1, 0.100),
    HumanoidBone("r_shin", 10, (0.0, -0.35), -0.25 * _PI, 0.25 * _PI, (0.0, -0.35), 0.1, 0.061),
    HumanoidBone("r_foot", 11, (0.0, -0.35), 0.0, 0.0),
    HumanoidBone("l_thigh", 0, (-0.15, 0.0), 0.3 * _PI, -0.1 * _PI, (0.0, -0.35), 0.1, 0.100),
    HumanoidBone("l_shin", 13, (0.0, -0.35), -0.25 * _PI, 0.25 * _PI, (0.0, -0.35), 0.1, 0.061),
    HumanoidBone("l_foot", 14, (0.0, -0.35), 0.0, 0.0),
)
#: Root position limits (x, y) of the humanoid: x in [-0.3, 0.3], y in [0.4, 1.0].
HUMANOID_ROOT = ((-0.3, 0.3), (0.4, 1.0))
#: The observed points after the 18 pose columns, in column order: centre of mass, then the
#: origins of the end-effector bones (the reference's order: hands, feet, top of the head).
HUMANOID_POINTS: tuple[str, ...] = ("com", "r_hand", "l_hand", "r_foot", "l_foot", "head_top")
HUMANOID_POSE_DIM = 2 + len(HUMANOID_BONES)                     # 18
HUMANOID_DIM = HUMANOID_POSE_DIM + 2 * len(HUMANOID_POINTS)      # 30


def humanoid_columns() -> dict[str, int]:
    """Column index of every humanoid variable by name: ``root_x``, ``root_y``, the 16 bone
    angles ``<bone>_angle`` (``torso_angle``, ..., ``l_foot_angle``; bones in
    :data:`HUMANOID_BONES`), then
    ``com_x``, ``com_y``, ``r_hand_x``, ..., ``head_top_y`` (:data:`HUMANOID_POINTS`). E.g. a
    mask for "right hand at (0.8, 1.0)" sets columns ``r_hand_x`` and ``r_hand_y``."""
    names = ["root_x", "root_y"] + [f"{b.name}_angle" for b in HUMANOID_BONES]
    names += [f"{p}_{c}" for p in HUMANOID_POINTS for c in "xy"]
    return {name: i for i, name in enumerate(names)}


def _rotate(p: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    # The reference rig's l2g (row vector times [[c, -s], [s, c]]): clockwise for phi > 0.
    c, s = torch.cos(phi), torch.sin(phi)
    return torch.stack([p[..., 0] * c + p[..., 1] * s, -p[..., 0] * s + p[..., 1] * c], -1)


def humanoid_joints(pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Forward kinematics of the humanoid: ``pose`` (..., 18) = (root_x, root_y, 16 bone
    angles in the order of :data:`HUMANOID_BONES`) -> (origins (..., 16, 2), global angles
    (..., 16)). A bone's global angle is :math:`\phi_i = \phi_{parent} + \theta_i` and its
    origin :math:`o_i = o_{parent} + R(\phi_{parent})\,\mathrm{offset}_i`, with
    :math:`R(\phi)(p_x, p_y) = (p_x\cos\phi + p_y\sin\phi, -p_x\sin\phi + p_y\cos\phi)`
    (clockwise for :math:`\phi > 0`, as in the reference rig); the root bone's origin is
    (root_x, root_y)."""
    if pose.shape[-1] != HUMANOID_POSE_DIM:
        raise DataError(f"humanoid_joints: pose has {pose.shape[-1]} columns; expected "
                        f"{HUMANOID_POSE_DIM} (root x, y and {len(HUMANOID_BONES)} angles)")
    origins: list[torch.Tensor] = []
    phis: list[torch.Tensor] = []
    for i, bone in enumerate(HUMANOID_BONES):
        theta = pose[..., 2 + i]
        if bone.parent is None:
            origins.append(pose[..., :2])
            phis.append(theta)
            continue
        off = torch.tensor(bone.offset, dtype=pose.dtype, device=pose.device)
        origins.append(origins[bone.parent] + _rotate(off, phis[bone.parent]))
        phis.append(phis[bone.parent] + theta)
    return torch.stack(origins, -2), torch.stack(phis, -1)


def humanoid_segments(pose: torch.Tensor) -> torch.Tensor:
    """The drawn segments (..., 11, 2, 2) of the 11 bones with a length: (origin, tip) in world
    coordinates, in the order of :data:`HUMANOID_BONES` (end-effector bones left out)."""
    origins, phis = humanoid_joints(pose)
    idx = [i for i, b in enumerate(HUMANOID_BONES) if b.length > 0]
    tips = torch.tensor([HUMANOID_BONES[i].tip for i in idx], dtype=pose.dtype,
                        device=pose.device)
    o = origins[..., idx, :]
    return torch.stack([o, o + _rotate(tips, phis[..., idx])], -2)


def humanoid_observe(pose: torch.Tensor) -> torch.Tensor:
    r"""The humanoid's 30 observed variables (..., 30) of ``pose`` (..., 18): the pose, the
    centre of mass :math:`\sum_i m_i c_i / \sum_i m_i` (:math:`c_i` the midpoint of bone i's
    segment, :math:`m_i` its mass in :data:`HUMANOID_BONES`), then the hands, feet and top of
    the head (the origins of the end-effector bones); column names in :func:`humanoid_columns`."""
    origins, _ = humanoid_joints(pose)
    seg = humanoid_segments(pose)
    m = torch.tensor([b.mass for b in HUMANOID_BONES if b.length > 0], dtype=pose.dtype,
                     device=pose.device)
    com = (m[:, None] * seg.mean(-2)).sum(-2) / m.sum()
    names = [b.name for b in HUMANOID_BONES]
    ends = [origins[..., names.index(p), :] for p in HUMANOID_POINTS[1:]]
    return torch.cat([pose, com] + ends, -1)


def humanoid_poses(n: int, *, seed: int | None = None, generator: torch.Generator | None = None,
                   dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """n uniformly random humanoid poses (n, 18): root x U(-0.3, 0.3), y U(0.4, 1.0), each bone
    angle uniform between its limits (``lo + (hi - lo) u``, so ``lo > hi`` is legal; the five
    end-effector bones are 0)."""
    n = _check_n("humanoid_poses", n)
    g = _torch_generator(seed, generator)
    lo = torch.tensor([r[0] for r in HUMANOID_ROOT] + [b.lo for b in HUMANOID_BONES],
                      dtype=torch.float64)
    hi = torch.tensor([r[1] for r in HUMANOID_ROOT] + [b.hi for b in HUMANOID_BONES],
                      dtype=torch.float64)
    u = torch.rand(n, HUMANOID_POSE_DIM, generator=g, dtype=torch.float64)
    return (lo + (hi - lo) * u).to(dtype)


def humanoid_ik(n: int, *, seed: int | None = None, generator: torch.Generator | None = None,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The DRMM paper's 2-D humanoid IK data (n, 30): :func:`humanoid_observe` of
    :func:`humanoid_poses` (computed in float64, returned in ``dtype``)."""
    return humanoid_observe(humanoid_poses(n, seed=seed, generator=generator)).to(dtype)
