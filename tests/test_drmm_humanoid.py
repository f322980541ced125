"""The DRMM paper's 2-D humanoid IK data (data/toys.py; spec drmm §8, Sec. 4.1)."""

from __future__ import annotations

import math

import pytest
import torch

from deepmix.data import humanoid_columns, humanoid_ik, humanoid_observe, humanoid_poses
from deepmix.data.toys import (HUMANOID_BONES, HUMANOID_DIM, HUMANOID_POSE_DIM, HUMANOID_ROOT,
                               humanoid_joints, humanoid_segments)
from deepmix.errors import DataError

F64 = torch.float64
COL = humanoid_columns()


def point(x: torch.Tensor, name: str) -> torch.Tensor:
    return x[..., [COL[f"{name}_x"], COL[f"{name}_y"]]]


def test_columns_are_the_30_documented_variables():
    assert HUMANOID_DIM == 30 and HUMANOID_POSE_DIM == 18 and len(COL) == 30
    assert sorted(COL.values()) == list(range(30))
    assert (COL["root_x"], COL["root_y"], COL["torso_angle"], COL["l_foot_angle"]) == (0, 1, 2, 17)
    assert (COL["com_x"], COL["r_hand_x"], COL["l_hand_x"], COL["r_foot_x"], COL["l_foot_x"],
            COL["head_top_y"]) == (18, 20, 22, 24, 26, 29)


def test_zero_pose_is_the_documented_t_pose():
    pose = torch.zeros(1, 18, dtype=F64)
    pose[0, :2] = torch.tensor([0.1, 0.8])            # root at (0.1, 0.8), all angles 0
    x = humanoid_observe(pose)[0]
    r = torch.tensor([0.1, 0.8], dtype=F64)
    expect = {"r_hand": (0.75, 0.5), "l_hand": (-0.75, 0.5), "r_foot": (0.15, -0.7),
              "l_foot": (-0.15, -0.7), "head_top": (0.0, 0.75)}
    for name, p in expect.items():
        torch.testing.assert_close(point(x, name), r + torch.tensor(p, dtype=F64))
    # centre of mass, hand-computed from the documented masses at segment midpoints:
    # trunk 0.2485 at y 0.125 and 0.375, head 0.081 at 0.625, arms (0.028 + 0.022) at 0.5,
    # thighs 0.1 at -0.175, shins 0.061 at -0.525 (x: symmetric)
    com_y = (0.2485 * 0.125 + 0.2485 * 0.375 + 0.081 * 0.625 + 2 * 0.05 * 0.5
             + 2 * (0.1 * -0.175 + 0.061 * -0.525))
    torch.testing.assert_close(point(x, "com"), r + torch.tensor([0.0, com_y], dtype=F64))
    torch.testing.assert_close(x[:18], pose[0])


def test_positive_angles_turn_clockwise():
    pose = torch.zeros(1, 18, dtype=F64)
    pose[0, COL["torso_angle"]] = math.pi / 2        # the whole body lies along +x
    x = humanoid_observe(pose)[0]
    torch.testing.assert_close(point(x, "head_top"), torch.tensor([0.75, 0.0], dtype=F64))
    torch.testing.assert_close(point(x, "r_hand"), torch.tensor([0.5, -0.75], dtype=F64))


def test_bone_lengths_are_preserved_for_random_poses():
    pose = humanoid_poses(500, seed=1)
    origins, _ = humanoid_joints(pose)
    for i, bone in enumerate(HUMANOID_BONES):
        if bone.parent is not None:                   # joint to parent joint: |offset|
            d = (origins[:, i] - origins[:, bone.parent]).norm(dim=1)
            torch.testing.assert_close(d, torch.full_like(d, math.hypot(*bone.offset)))
    seg = humanoid_segments(pose)
    lengths = torch.tensor([b.length for b in HUMANOID_BONES if b.length > 0], dtype=F64)
    torch.testing.assert_close((seg[:, :, 1] - seg[:, :, 0]).norm(dim=-1),
                               lengths.expand(500, -1))
    # each end effector sits at the tip of its parent's segment (hand = end of the forearm)
    names = [b.name for b in HUMANOID_BONES]
    with_len = [b.name for b in HUMANOID_BONES if b.length > 0]
    for end, parent in (("r_hand", "r_forearm"), ("l_foot", "l_shin"), ("head_top", "head")):
        torch.testing.assert_close(origins[:, names.index(end)],
                                   seg[:, with_len.index(parent), 1])


def test_angles_and_root_within_limits_and_cover_them():
    pose = humanoid_poses(20_000, seed=2)
    lo = torch.tensor([r[0] for r in HUMANOID_ROOT] + [min(b.lo, b.hi) for b in HUMANOID_BONES],
                      dtype=F64)
    hi = torch.tensor([r[1] for r in HUMANOID_ROOT] + [max(b.lo, b.hi) for b in HUMANOID_BONES],
                      dtype=F64)
    assert bool((pose >= lo).all() and (pose <= hi).all())
    width = hi - lo
    moving = width > 0
    # uniform: the observed range covers almost all of each interval (min > max included)
    span = pose.max(0).values - pose.min(0).values
    assert bool((span[moving] > 0.99 * width[moving]).all())
    assert bool((pose[:, ~moving] == 0).all())        # the five end-effector "bones"
    assert HUMANOID_BONES[8].lo > HUMANOID_BONES[8].hi   # left forearm: written (0.5 pi, 0)
    lf = pose[:, COL["l_forearm_angle"]]
    assert 0.0 <= float(lf.min()) and float(lf.max()) <= 0.5 * math.pi
    torch.testing.assert_close(lf.mean(), torch.tensor(0.25 * math.pi, dtype=F64), atol=0.02,
                               rtol=0)


def test_com_is_the_mass_weighted_mean_of_segment_midpoints():
    pose = humanoid_poses(200, seed=4)
    x = humanoid_observe(pose)
    seg = humanoid_segments(pose)
    bones = [b for b in HUMANOID_BONES if b.length > 0]
    assert abs(sum(b.mass for b in bones) - 1.0) < 1e-12
    com = sum(b.mass * seg[:, i].mean(1) for i, b in enumerate(bones))
    torch.testing.assert_close(point(x, "com"), com)


def test_seeded_and_generator_reproducible():
    a = humanoid_ik(300, seed=7)
    assert a.shape == (300, 30) and a.dtype == torch.float32
    assert torch.equal(a, humanoid_ik(300, seed=7))
    assert torch.equal(a, humanoid_ik(300, generator=torch.Generator().manual_seed(7)))
    assert not torch.equal(a, humanoid_ik(300, seed=8))
    torch.testing.assert_close(humanoid_observe(a[:, :18].double()).float(), a)


def test_bad_input():
    with pytest.raises(DataError, match="columns"):
        humanoid_observe(torch.zeros(3, 17))
    with pytest.raises(DataError, match="n must be"):
        humanoid_ik(0)
    with pytest.raises(DataError, match="not both"):
        humanoid_poses(3, seed=1, generator=torch.Generator())
