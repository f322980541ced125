"""Inverse kinematics with a DRMM (arm and 2-D humanoid): goals, inequality constraints, tip error.

usage: .venv/bin/python benchmarks/drmm/ik.py [--rig arm|humanoid] [--quick] [--layers 1 2 4]
       [--components 64] [--steps 8000] [--sigma scalar] [--truncation 0 0.05]

``--rig humanoid`` (the paper's Sec. 4.1 / Fig. 5 task, reduced): see :func:`run_humanoid`.

``--rig arm`` (the default). Data (spec drmm §8, Fig. 7's arm): 6 raw variables, 4 joint angles U(-pi/2, pi/2) relative to
the previous link, links 0.3 (reach 1.2), and the end effector (x, y); no normalisation. Each
DRMM (L layers x K) is trained by the paper's hard EM, batch 256, lr0 0.002, init batch 1024.
Then, per truncation alpha_t of the forward sampler (0: the paper; 0.05: the reference's
``fwd_truncation``):

- unconditional: 4096 samples; own-tip error = |fk(sampled angles) - sampled (x, y)|;
- goal: 32 reachable goals (end effectors of held-out poses), 64 samples each conditioned on the
  end effector (mask); tip error = |fk(sampled angles) - goal|; hit = error < 5 % of the reach
  (0.06); "best of 64" = the top sample by the last layer's score (the reference's sorting);
- goal + inequalities: the same goals with theta_1 > 0 and theta_2 < 0 (weight 1 each, and
  weight 3 each as the reference's IK script uses for its hard limits):
  constraint satisfaction rate (both hold) and the tip hit rate.

Issue 19 goal: hit rate >= 90 % conditioned on a goal; constraints satisfied by >= 95 %.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment, markdown_table, train_drmm, write_results  # noqa: E402

from deepmix.data import arm_end_effector, arm_ik, humanoid_columns, humanoid_ik  # noqa: E402
from deepmix.data import humanoid_observe  # noqa: E402
from deepmix.data.toys import HUMANOID_BONES, HUMANOID_ROOT, humanoid_segments  # noqa: E402
from deepmix.metrics.constraints import constraint_satisfaction  # noqa: E402
from deepmix.models.drmm import DRMMCondition, Inequality  # noqa: E402
from deepmix.plots.density import save_figure, subplots  # noqa: E402

REACH = 1.2
HIT = 0.05 * REACH



def _train(x, layers: int, args):
    """A DRMM of ``layers`` layers on ``x`` with the run's options; (model, seconds, the mean
    per-layer sigma of the continuous stream)."""
    model, seconds = train_drmm(x, layers=layers, components=args.components, steps=args.steps,
                                batch=256, lr=args.lr, init_batch=1024, sigma=args.sigma,
                                curriculum=args.curriculum)
    sig = [float(layer.streams[0].variances().detach().sqrt().mean()) for layer in model.layers]
    return model, seconds, sig

def tip_stats(err: torch.Tensor) -> dict[str, float]:
    q = torch.quantile(err.double(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
    return {"hit": float((err < HIT).double().mean()), "p10": float(q[0]),
            "median": float(q[1]), "p90": float(q[2])}


def evaluate(model, goals: torch.Tensor, per_goal: int, truncation: float | None,
             seed: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(seed)
    trunc = truncation or None
    out: dict[str, float] = {}
    s = model.sample(4096, generator=g, truncation=trunc)
    for k, v in tip_stats((arm_end_effector(s[:, :4]) - s[:, 4:]).norm(dim=1)).items():
        out[f"uncond_{k}"] = v
    mask = torch.tensor([0, 0, 0, 0, 1, 1.0])
    n = len(goals) * per_goal
    values = torch.cat([torch.zeros(len(goals), 4), goals], 1).repeat_interleave(per_goal, 0)
    target = values[:, 4:]
    def ineq(w: float) -> tuple:
        return (Inequality(torch.tensor([1.0, 0, 0, 0, 0, 0]), 0.0, weight=w),     # theta_1 > 0
                Inequality(torch.tensor([0, -1.0, 0, 0, 0, 0]), 0.0, weight=w))    # theta_2 < 0
    for name, cond in (("goal", DRMMCondition(values=values, mask=mask)),
                       ("constr", DRMMCondition(values=values, mask=mask,
                                                inequalities=ineq(1.0))),
                       ("constr_w3", DRMMCondition(values=values, mask=mask,
                                                   inequalities=ineq(3.0)))):
        s, score = model.sample_with_scores(n, generator=g, condition=cond, truncation=trunc)
        err = (arm_end_effector(s[:, :4]) - target).norm(dim=1)
        # how well the sampled end-effector coordinates reproduce the goal (~ sigma_L)
        out[f"{name}_coord_median"] = float((s[:, 4:] - target).norm(dim=1).median())
        for k, v in tip_stats(err).items():
            out[f"{name}_{k}"] = v
        best = score.reshape(len(goals), per_goal).argmax(1)
        best_err = err.reshape(len(goals), per_goal).gather(1, best[:, None])[:, 0]
        out[f"{name}_best_of_{per_goal}_hit"] = float((best_err < HIT).double().mean())
        if name.startswith("constr"):
            ok = (s[:, 0] > 0) & (s[:, 1] < 0)
            out[f"{name}_satisfied"] = float(ok.double().mean())
            out[f"{name}_hit_and_satisfied"] = float((ok & (err < HIT)).double().mean())
    return out


def run_arm(args: argparse.Namespace) -> None:
    if args.quick:
        args.layers, args.steps = [1, 2], 1500
    args.layers = args.layers or [1, 2, 4]
    args.components = args.components or 64
    args.steps = args.steps or 8000
    args.truncation = args.truncation or [0.0, 0.05]
    x = arm_ik(262_144, seed=0)
    goals = arm_ik(args.goals, seed=1)[:, 4:]
    rows = []
    for L in args.layers:
        model, seconds, sig = _train(x, L, args)
        for trunc in args.truncation:
            row = {"layers": L, "K": args.components, "params": model.n_parameters,
                   "curriculum": args.curriculum, "sigma": args.sigma,
                   "truncation": trunc, "steps": args.steps, "train_s": round(seconds, 1),
                   "sigma_per_layer": [round(v, 4) for v in sig]}
            row.update(evaluate(model, goals, 64, trunc, seed=2))
            rows.append(row)
            print(f"L={L} K={args.components} trunc={trunc}: uncond own-tip hit "
                  f"{row['uncond_hit']:.2f} (median {row['uncond_median']:.3f}); goal hit "
                  f"{row['goal_hit']:.2f} (median {row['goal_median']:.3f}, best of 64 "
                  f"{row['goal_best_of_64_hit']:.2f}); constrained: satisfied "
                  f"{row['constr_satisfied']:.2f}, hit {row['constr_hit']:.2f}; weight 3: satisfied "
                  f"{row['constr_w3_satisfied']:.2f}, hit {row['constr_w3_hit']:.2f}  "
                  f"[{seconds:.0f} s, sigma {sig}]", flush=True)
    name = args.name or ("drmm_ik_quick" if args.quick else "drmm_ik")
    cols = ["layers", "K", "params", "truncation", "steps", "uncond_hit", "uncond_median",
            "goal_hit", "goal_median", "goal_coord_median", "goal_p90", "goal_best_of_64_hit", "constr_satisfied",
            "constr_hit", "constr_w3_satisfied", "constr_w3_hit", "train_s"]
    md = (f"# DRMM arm IK (`benchmarks/drmm/ik.py{' --quick' if args.quick else ''}`)\n\n"
          f"Hit = tip within {HIT:.2f} (5 % of the reach {REACH}) of the goal (own end effector "
          f"for unconditional samples). Goal: issue 19 wants goal_hit >= 0.9 and "
          f"constr_satisfied >= 0.95. sigma={args.sigma}, batch 256, lr0 {args.lr}, "
          f"indicative CPU times.\n\n" + markdown_table(rows, cols))
    write_results(name, {**environment(args.threads), "args": vars(args), "rows": rows}, md)


# ------------------------------------------------------------------------------ humanoid
COL = humanoid_columns()
#: Standing height of the humanoid's T-pose: legs 0.7 + trunk 0.5 + head 0.25.
HEIGHT = 1.45
HUMANOID_HIT = 0.05 * HEIGHT
#: The reference IK script's goals (Plot_IK.py): feet at (-+0.2, 0), right hand at (0.8, 1.0).
GOALS = {"l_foot": (-0.2, 0.0), "r_foot": (0.2, 0.0), "r_hand": (0.8, 1.0)}
#: The points its inequalities constrain.
IEQ_POINTS = ("head_top", "r_hand", "l_hand", "l_foot", "r_foot")
Y_MAX, Y_MIN, X_ABS = 1.2, 0.0, 0.5


def humanoid_inequalities(y_max_weight: float, other_weight: float) -> list[tuple[str, Inequality]]:
    """The reference script's inequalities a.x + b > 0 on head top, hands and feet: y < 1.2
    (weight ``y_max_weight``), y > 0, x > -0.5, x < 0.5 (weight ``other_weight``); zero
    weights are left out."""
    out = []
    def one(name: str, col: str, sign: float, b: float, w: float) -> None:
        if w > 0:
            a = torch.zeros(len(COL))
            a[COL[col]] = sign
            out.append((name, Inequality(a, b, weight=w)))
    for p in IEQ_POINTS:
        one(f"{p}_y<{Y_MAX}", f"{p}_y", -1.0, Y_MAX, y_max_weight)
    for p in IEQ_POINTS:
        one(f"{p}_y>{Y_MIN}", f"{p}_y", 1.0, -Y_MIN, other_weight)
        one(f"{p}_x>-{X_ABS}", f"{p}_x", 1.0, X_ABS, other_weight)
        one(f"{p}_x<{X_ABS}", f"{p}_x", -1.0, X_ABS, other_weight)
    return out


def humanoid_panels() -> dict[str, tuple[bool, list[tuple[str, Inequality]]]]:
    """The reference's Fig. 5 panels: name -> (goals on?, inequalities)."""
    return {"samples": (False, []),
            "goals": (True, []),
            "goals, y < 1.2": (True, humanoid_inequalities(3.0, 0.0)),
            "inequalities": (False, humanoid_inequalities(3.0, 1.0))}


def goal_condition(goals: bool, ineqs: list[tuple[str, Inequality]]) -> DRMMCondition | None:
    if not goals and not ineqs:
        return None
    kw: dict = {"inequalities": tuple(i for _, i in ineqs)}
    if goals:
        values, mask = torch.zeros(len(COL)), torch.zeros(len(COL))
        for p, (gx, gy) in GOALS.items():
            for c, v in (("x", gx), ("y", gy)):
                values[COL[f"{p}_{c}"]] = v
                mask[COL[f"{p}_{c}"]] = 1.0
        kw.update(values=values, mask=mask)
    return DRMMCondition(**kw)


def in_limits(pose: torch.Tensor) -> torch.Tensor:
    lo = torch.tensor([r[0] for r in HUMANOID_ROOT] + [min(b.lo, b.hi) for b in HUMANOID_BONES])
    hi = torch.tensor([r[1] for r in HUMANOID_ROOT] + [max(b.lo, b.hi) for b in HUMANOID_BONES])
    return ((pose >= lo - 1e-6) & (pose <= hi + 1e-6)).all(1)


def evaluate_humanoid(model, batches: int, truncation: float | None, seed: int
                      ) -> tuple[dict[str, dict[str, float]], dict[str, torch.Tensor]]:
    """Per panel: the samples' own consistency, goal errors and constraint satisfaction, all
    recomputed by forward kinematics from the sampled root and angles (the sampled end-effector
    coordinates are only the model's guess); returns (metrics, samples per panel)."""
    g = torch.Generator().manual_seed(seed)
    n = 64 * batches                      # the reference's sampling batch 64
    out, kept = {}, {}
    for panel, (goals, ineqs) in humanoid_panels().items():
        cond = goal_condition(goals, ineqs)
        s, score = model.sample_with_scores(n, generator=g, condition=cond,
                                            truncation=truncation or None)
        fk = humanoid_observe(s[:, :18].double()).float()
        r: dict[str, float] = {}
        pts = [c for c in COL if c.endswith("_x") and not c.startswith("root")]
        own = torch.stack([(fk[:, [COL[c], COL[c] + 1]] - s[:, [COL[c], COL[c] + 1]]).norm(dim=1)
                           for c in pts], 1)
        r["own_point_median"] = float(own.median())      # |fk(angles) - sampled coordinates|
        r["pose_in_limits"] = float(in_limits(s[:, :18]).double().mean())
        best = score.reshape(batches, 64).argmax(1) + 64 * torch.arange(batches)
        if goals:
            err = torch.stack([(fk[:, [COL[f"{p}_x"], COL[f"{p}_y"]]] - torch.tensor(xy)).norm(dim=1)
                               for p, xy in GOALS.items()], 1)             # (n, 3)
            for j, p in enumerate(GOALS):
                r[f"{p}_err_median"] = float(err[:, j].median())
            worst = err.max(1).values
            r["goal_err_median"] = float(err.median())
            r["goal_err_p90"] = float(torch.quantile(err.flatten().double(), 0.9))
            r["goal_hit"] = float((worst < HUMANOID_HIT).double().mean())   # all three within
            r["best_of_64_goal_err_median"] = float(err[best].median())
            r["best_of_64_goal_hit"] = float((worst[best] < HUMANOID_HIT).double().mean())
            coord = torch.stack([(s[:, [COL[f"{p}_x"], COL[f"{p}_y"]]] - torch.tensor(xy)).norm(dim=1)
                                 for p, xy in GOALS.items()], 1)
            r["goal_coord_err_median"] = float(coord.median())
        if ineqs:
            per = [constraint_satisfaction(fk, ie.a, ie.b) for _, ie in ineqs]
            ok = torch.stack([fk @ ie.a + ie.b > 0 for _, ie in ineqs], 1).all(1)
            ok_coord = torch.stack([s @ ie.a + ie.b > 0 for _, ie in ineqs], 1).all(1)
            r["ineq_each"] = {n: v for (n, _), v in zip(ineqs, per)}
            r["ineq_each_min"] = min(per)
            r["ineq_each_mean"] = sum(per) / len(per)
            r["ineq_all"] = float(ok.double().mean())
            r["ineq_all_coords"] = float(ok_coord.double().mean())
            r["best_of_64_ineq_all"] = float(ok[best].double().mean())
            if goals:
                r["hit_and_ineq_all"] = float((ok & (worst < HUMANOID_HIT)).double().mean())
        # without any condition: how often the model's free samples satisfy them (baseline)
        out[panel], kept[panel] = r, s
        kept[panel + "/best"] = best
    base = humanoid_inequalities(3.0, 1.0)
    fk = humanoid_observe(kept["samples"][:, :18].double()).float()
    out["samples"]["ineq_all_unconstrained"] = float(
        torch.stack([fk @ ie.a + ie.b > 0 for _, ie in base], 1).all(1).double().mean())
    return out, kept


def draw_humanoids(ax, samples: torch.Tensor, best: torch.Tensor, shown: int = 10) -> None:
    """The first ``shown`` samples faint, the best of the first batch of 64 dark (as Fig. 5)."""
    seg = humanoid_segments(samples[:, :18].double())
    widths = [b.width for b in HUMANOID_BONES if b.length > 0]
    def one(k: int, color: str, alpha: float) -> None:
        for j, w in enumerate(widths):
            p = seg[k, j].numpy()
            ax.plot(p[:, 0], p[:, 1], color=color, alpha=alpha, lw=20 * w, solid_capstyle="round")
    for k in range(shown):
        one(k, "gray", 0.25)
    one(int(best[0]), "#202020", 0.9)


def plot_humanoid(kept: dict[str, torch.Tensor], title: str, path: Path) -> Path:
    from matplotlib.patches import Rectangle
    panels = humanoid_panels()
    fig, axes = subplots(1, len(panels), size=3.0)
    for ax, (panel, (goals, ineqs)) in zip(axes[0], panels.items()):
        draw_humanoids(ax, kept[panel], kept[panel + "/best"])
        if goals:
            for gx, gy in GOALS.values():
                ax.scatter([gx], [gy], marker="x", color="black", s=60, zorder=5)
        names = [n for n, _ in ineqs]
        if any("<1.2" in n for n in names):
            ax.add_patch(Rectangle((-3, Y_MAX), 6, 6, color="r", alpha=0.3, lw=0))
        if any(">0.0" in n for n in names):
            ax.add_patch(Rectangle((-3, Y_MIN - 3), 6, 3, color="r", alpha=0.3, lw=0))
            ax.add_patch(Rectangle((X_ABS, -3), 3, 6, color="r", alpha=0.3, lw=0))
            ax.add_patch(Rectangle((-X_ABS - 3, -3), 3, 6, color="r", alpha=0.3, lw=0))
        ax.set_xlim(-1.1, 1.1)
        ax.set_ylim(-0.4, 1.8)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(panel, fontsize=9)
    fig.suptitle(title, fontsize=8)
    return save_figure(fig, path)


def run_humanoid(args: argparse.Namespace) -> None:
    """The paper's Sec. 4.1 humanoid (30 raw variables, :func:`deepmix.data.humanoid_ik`),
    reduced: the paper trains 10 x 256 for 100k steps (batch 256, lr0 0.002) on 1M poses; here
    6 x 128 for 20k steps (``--quick``: 4 x 64, 2000 steps) on 2^18 poses. Sampling (batches of
    64, as the reference) per panel of the reference's Fig. 5 script: unconditional; feet at
    (-+0.2, 0) and right hand at (0.8, 1.0) (mask); those goals + y < 1.2 on head top, hands
    and feet (weight 3); all inequalities (y < 1.2 weight 3; y > 0, |x| < 0.5 weight 1; no
    goals, as the reference, since the hand goal x = 0.8 violates |x| < 0.5). Goal error and
    constraint satisfaction are recomputed by forward kinematics from the sampled root and
    angles. Hit: all three goals within 5 % of the standing height (0.0725)."""
    if args.quick:
        args.layers, args.components, args.steps = [4], 64, 2000
        args.batches = min(args.batches, 8)
    args.layers = args.layers or [6]
    args.components = args.components or 128
    args.steps = args.steps or 20000
    args.truncation = args.truncation or [0.0]
    x = humanoid_ik(262_144, seed=0)
    # how restrictive the inequalities are: the share of the training poses satisfying them
    data_rate = {panel: float(torch.stack([x @ ie.a + ie.b > 0 for _, ie in ineqs], 1)
                              .all(1).double().mean())
                 for panel, (_, ineqs) in humanoid_panels().items() if ineqs}
    rows = []
    name = args.name or ("drmm_ik_humanoid_quick" if args.quick else "drmm_ik_humanoid")
    for L in args.layers:
        model, seconds, sig = _train(x, L, args)
        for trunc in args.truncation:
            metrics, kept = evaluate_humanoid(model, args.batches, trunc, seed=2)
            row = {"layers": L, "K": args.components, "params": model.n_parameters,
                   "truncation": trunc, "steps": args.steps, "train_s": round(seconds, 1),
                   "sigma_L": round(sig[-1], 4), "sigma_per_layer": [round(v, 4) for v in sig],
                   "panels": metrics}
            for panel, rate in data_rate.items():
                metrics[panel]["ineq_all_data"] = rate
            rows.append(row)
            g, gi, ie = metrics["goals"], metrics["goals, y < 1.2"], metrics["inequalities"]
            print(f"humanoid L={L} K={args.components} trunc={trunc}: goals err median "
                  f"{g['goal_err_median']:.3f} hit {g['goal_hit']:.2f} (best of 64 "
                  f"{g['best_of_64_goal_hit']:.2f}); + y<1.2: err {gi['goal_err_median']:.3f}, "
                  f"satisfied {gi['ineq_all']:.2f}; all inequalities satisfied "
                  f"{ie['ineq_all']:.2f} (unconstrained "
                  f"{metrics['samples']['ineq_all_unconstrained']:.2f})  [{seconds:.0f} s]",
                  flush=True)
            stem = name if len(args.layers) * len(args.truncation) == 1 else \
                f"{name}_{L}x{args.components}_t{trunc:g}"
            title = (f"DRMM {L} x {args.components}, {args.steps} steps, batch 256 "
                     f"(paper: 10 x 256, 100k); dark: best of 64 by score; goals x, "
                     f"forbidden red. Machine shared with other jobs.")
            row["png"] = plot_humanoid(kept, title, RESULTS / f"{stem}.png").name
    flat = []
    for row in rows:
        for panel, m in row["panels"].items():
            flat.append({"model": f"{row['layers']} x {row['K']}", "steps": row["steps"],
                         "trunc": row["truncation"], "panel": panel, **m})
    cols = ["model", "steps", "trunc", "panel", "pose_in_limits", "own_point_median",
            "goal_err_median", "goal_err_p90", "r_hand_err_median", "l_foot_err_median",
            "r_foot_err_median", "goal_hit", "best_of_64_goal_hit", "goal_coord_err_median",
            "ineq_all", "ineq_each_min", "best_of_64_ineq_all", "ineq_all_coords",
            "hit_and_ineq_all", "ineq_all_data", "ineq_all_unconstrained"]
    md = (f"# DRMM humanoid IK (`benchmarks/drmm/ik.py --rig humanoid"
          f"{' --quick' if args.quick else ''}`)\n\n"
          f"2-D humanoid of the paper's Sec. 4.1 (30 raw variables, 2^18 random poses). Goals: "
          f"feet at (-+0.2, 0), right hand at (0.8, 1.0); inequalities on head top, hands, feet: "
          f"y < 1.2 (weight 3), y > 0, |x| < 0.5 (weight 1). Errors and satisfaction are "
          f"recomputed by forward kinematics from the sampled root and angles "
          f"(goal_coord_err, ineq_all_coords: the sampled coordinates instead); ineq_all_data: "
          f"the share of the training poses that satisfy the panel's inequalities. goal_hit: all three goals within "
          f"{HUMANOID_HIT:.4f} (5 % of the standing height {HEIGHT}); "
          f"{64 * args.batches} samples per panel in batches of 64; best of 64 by the last "
          f"layer's score. Batch 256, lr0 {args.lr}; times indicative (machine shared with "
          f"other jobs). Figures: " + ", ".join(f"`{r['png']}`" for r in rows) + "\n\n"
          + "| model | params | sigma_L | train_s |\n|---|---|---|---|\n"
          + "".join(f"| {r['layers']} x {r['K']} | {r['params']} | {r['sigma_L']} | "
                    f"{r['train_s']} |\n" for r in rows) + "\n"
          + markdown_table(flat, cols))
    write_results(name, {**environment(args.threads), "args": vars(args), "rows": rows}, md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rig", default="arm", choices=["arm", "humanoid"])
    ap.add_argument("--layers", nargs="+", type=int, default=None,
                    help="arm: 1 2 4; humanoid: 6")
    ap.add_argument("--components", type=int, default=None, help="arm: 64; humanoid: 128")
    ap.add_argument("--steps", type=int, default=None, help="arm: 8000; humanoid: 20000")
    ap.add_argument("--sigma", default="scalar", choices=["scalar", "diagonal"])
    ap.add_argument("--truncation", nargs="+", type=float, default=None,
                    help="arm: 0 0.05; humanoid: 0")
    ap.add_argument("--lr", type=float, default=0.002)
    ap.add_argument("--curriculum", default="v1", choices=["v1", "v2"],
                    help="v1: the paper; v2: the reference's Dec 2020 schedules")
    ap.add_argument("--goals", type=int, default=32, help="arm: number of goals")
    ap.add_argument("--batches", type=int, default=16,
                    help="humanoid: sampling batches of 64 per condition")
    ap.add_argument("--quick", action="store_true",
                    help="arm: L = 1, 2, 1500 steps; humanoid: 4 x 64, 2000 steps")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default=None, help="results file stem")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.rig == "arm":
        run_arm(args)
    else:
        run_humanoid(args)


if __name__ == "__main__":
    main()
