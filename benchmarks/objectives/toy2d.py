"""The thesis' 2-D density table (EM / GD / SM / SSM on halfmoons, spirals, board), ours next to
the published validation log-likelihoods, with the thesis' chosen (lr, T) per cell.

usage: .venv/bin/python benchmarks/objectives/toy2d.py [--quick] [--seeds 0 1 2]

--quick runs halfmoons K = 8 only (the spec's acceptance cell). Writes
benchmarks/results/toy2d.json and toy2d.md. The NLL curves are in the JSON; each curve's
time (seconds) says what the objectives cost relative to each other.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from deepmix.experiments.thesis_toys import PUBLISHED, run_cell
from deepmix.utils.io import write_json_atomic, write_text_atomic

HERE = Path(__file__).resolve().parent
OBJECTIVES = ("em", "gd", "sm", "ssm")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", default=str(HERE.parent / "results" / "toy2d"))
    args = ap.parse_args()
    cells = [("halfmoons", 8)] if args.quick else list(PUBLISHED)
    rows = []
    lines = ["| data K | " + " | ".join(f"{o.upper()} ours (published)" for o in OBJECTIVES)
             + " | seconds EM / GD / SM / SSM |", "|---" * (len(OBJECTIVES) + 2) + "|"]
    for data, K in cells:
        cells_txt, secs = [], []
        for obj in OBJECTIVES:
            runs = [run_cell(data, K, obj, seed=s) for s in args.seeds]
            lls = [r["valid_ll"] for r in runs]
            mean = statistics.mean(lls)
            std = statistics.pstdev(lls) if len(lls) > 1 else 0.0
            sec = statistics.mean(r["seconds"] for r in runs)
            rows.extend(runs)
            pub = PUBLISHED[(data, K)][obj][0]
            cells_txt.append(f"{mean:.2f}" + (f" ± {std:.2f}" if len(lls) > 1 else "") + f" ({pub:.2f})")
            secs.append(f"{sec:.1f}")
            print(f"{data:9s} K={K:3d} {obj:3s}: valid LL {mean:7.3f} (published {pub:.2f}), "
                  f"{sec:.2f} s", flush=True)
        lines.append(f"| {data} {K} | " + " | ".join(cells_txt) + " | " + " / ".join(secs) + " |")
    out = Path(args.out)
    write_json_atomic(out.with_suffix(".json"), {"seeds": args.seeds, "rows": rows})
    write_text_atomic(out.with_suffix(".md"), "Validation mean log-likelihood (nats), thesis "
                      "settings per cell.\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
